"""Checkpoints for the benchmarks: REAL-SIZE architectures with RANDOM weights, built from
configs and saved with save_pretrained in the standard Hugging Face formats, so the app's
own loaders read them exactly like Hub checkpoints and every latency is the real one.
Nothing downloads (tokenizers are built in code).

`scale="real"`: ViT-B/16 @224 (skin), EfficientNet-B1 @240 (lung CT), FLAN-T5-base shape
(impression), CLIP ViT-B/32 (PLIP). `scale="tiny"`: the same families at toy size, for the
`--quick` smoke run only. Built dirs are reused across runs (a stamp file holds the config
fingerprint), since building them is set-up, not something the benchmark measures."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

HAM_LABELS = (
    "benign_keratosis-like_lesions",
    "basal_cell_carcinoma",
    "actinic_keratoses",
    "vascular_lesions",
    "melanocytic_Nevi",
    "melanoma",
    "dermatofibroma",
)
LUNG_LABELS = ("Bengin cases", "Malignant cases", "Normal cases")
BUILD_VERSION = 3  # bump when a builder changes

# Words for the offline word-level tokenizers: radiology + pathology vocabulary, so prompts
# tokenise into roughly as many tokens as with the real sentencepiece / BPE vocabularies.
WORDS = tuple((
    "the a an of and or is are was were in on at with without no not there to from by as be "
    "left right bilateral upper lower middle lobe lung lungs chest heart cardiac mediastinum "
    "radiograph image view frontal lateral pa ap film x-ray ct scan mri "
    "shows demonstrates seen noted visible normal abnormal mild moderate severe small large "
    "opacity opacities effusion effusions pleural pneumothorax consolidation atelectasis edema "
    "fracture bone bones rib ribs spine mass nodule nodules lesion size contour silhouette stable "
    "unchanged acute chronic process disease cardiopulmonary focal airspace clear within limits "
    "interval change prior comparison impression findings evidence suggestive consistent possible "
    "likely tube line catheter degenerative changes thoracic enlarged cardiomegaly vascular "
    "congestion generate radiology report impressions based following findings: . , : ; "
    "h&e image of tissue tumor tumour cells stroma adipose background debris lymphocytes mucus "
    "smooth muscle colon mucosa cancer-associated colorectal adenocarcinoma epithelium gland glands "
    "nuclei nucleus mitotic mitoses necrosis inflammation fibrosis carcinoma benign malignant "
    "showing high grade low invasive infiltrating ductal lobular breast skin melanoma"
).split())


def _fingerprint(name: str, scale: str) -> str:
    return hashlib.sha256(f"{name}|{scale}|{BUILD_VERSION}".encode()).hexdigest()[:12]


def _cached(path: Path, name: str, scale: str, build: Callable[[Path], None]) -> Path:
    stamp = path / ".bench-stamp"
    fp = _fingerprint(name, scale)
    if stamp.is_file() and stamp.read_text().strip() == fp:
        return path
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    log.info("building %s (%s) in %s", name, scale, path)
    build(path)
    stamp.write_text(fp)
    return path


def _labels(labels: tuple[str, ...]) -> dict:
    return {"id2label": dict(enumerate(labels)), "label2id": {lab: i for i, lab in enumerate(labels)}}


def _word_tokenizer(specials: list[str], unk: str, extra: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(specials)}
    for word in WORDS + extra:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return backend


# -- builders --------------------------------------------------------------------------------
def build_vit(path: Path, scale: str) -> None:
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    if scale == "real":  # ViTConfig defaults = ViT-B/16 at 224 (google/vit-base-patch16-224)
        config = ViTConfig(**_labels(HAM_LABELS))
        size = 224
    else:
        config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64, **_labels(HAM_LABELS))
        size = 32
    ViTForImageClassification(config).eval().save_pretrained(path)
    ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(path)


def build_effnet(path: Path, scale: str) -> None:
    import torch
    from transformers import EfficientNetConfig, EfficientNetForImageClassification, EfficientNetImageProcessor

    torch.manual_seed(0)
    if scale == "real":  # EfficientNet-B1 (google/efficientnet-b1): width 1.0, depth 1.1, 240 px
        config = EfficientNetConfig(width_coefficient=1.0, depth_coefficient=1.1, image_size=240,
                                    hidden_dim=1280, dropout_rate=0.2, **_labels(LUNG_LABELS))
        size = 240
    else:
        config = EfficientNetConfig(width_coefficient=0.25, depth_coefficient=0.25, image_size=48,
                                    hidden_dim=320, dropout_rate=0.2, **_labels(LUNG_LABELS))
        size = 48
    EfficientNetForImageClassification(config).eval().save_pretrained(path)
    EfficientNetImageProcessor(size={"height": size, "width": size}).save_pretrained(path)


def build_t5(path: Path, scale: str) -> None:
    """FLAN-T5-base shape (T5 v1.1: gated-GELU, untied head, d_model 768, 12+12 layers, vocab
    32128). The </s> row of the head is zeroed so greedy decoding never stops early: every
    request generates exactly the requested number of tokens."""
    import torch
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    backend = _word_tokenizer(["<pad>", "</s>", "<unk>"], "<unk>")
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>", model_max_length=512)
    torch.manual_seed(0)
    if scale == "real":
        config = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12,
                          num_decoder_layers=12, num_heads=12, feed_forward_proj="gated-gelu",
                          tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    else:
        config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                          num_decoder_layers=2, num_heads=2, feed_forward_proj="gated-gelu",
                          tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.lm_head.weight[1] = 0.0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _clip_tokenizer(path: Path) -> None:
    """A CLIP BPE tokenizer (vocab.json + merges.txt) over whole words of WORDS: the real
    CLIP vocabulary also holds common words as single tokens, so sequence lengths match."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for c in chars:
        vocab.setdefault(c + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in sorted({w.lower() for w in WORDS if len(w) > 1 and w.isascii()}):
        # merge left to right: w o r d</w> -> wo r d</w> -> wor d</w> -> word</w>
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            a, b = pieces[0], pieces[1]
            merge = (a, b)
            if merge not in merges:
                merges.append(merge)
            vocab.setdefault(a + b, len(vocab))
            pieces = [a + b] + pieces[2:]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    tok.model_max_length = 77
    tok.save_pretrained(path)


def build_clip(path: Path, scale: str) -> None:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    tok_dir = path / "_tok"
    tok_dir.mkdir(parents=True, exist_ok=True)
    _clip_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    if scale == "real":  # CLIPConfig defaults = ViT-B/32 (openai/clip-vit-base-patch32, PLIP's shape)
        config = CLIPConfig()
        size = 224
    else:
        config = CLIPConfig(
            text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "max_position_embeddings": 77},
            vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
            projection_dim=16,
        )
        size = 32
    config.text_config.vocab_size = max(config.text_config.vocab_size, len(tokenizer))
    CLIPModel(config).eval().save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    import shutil

    shutil.rmtree(tok_dir, ignore_errors=True)


BUILDERS: dict[str, tuple[str, Callable[[Path, str], None]]] = {
    # name: (MEDLAB_MODEL_* variable, builder)
    "skin-vit-b16": ("MEDLAB_MODEL_SKIN", build_vit),
    "lung-effnet-b1": ("MEDLAB_MODEL_LUNG_CT", build_effnet),
    "impression-t5-base": ("MEDLAB_MODEL_IMPRESSION", build_t5),
    "plip-clip-b32": ("MEDLAB_MODEL_PLIP", build_clip),
}


def build_all(root: Path, scale: str = "real", names: tuple[str, ...] | None = None) -> dict[str, str]:
    """Build (or reuse) the checkpoints; returns {MEDLAB_MODEL_*: dir}."""
    env = {}
    for name, (var, builder) in BUILDERS.items():
        if names is not None and name not in names:
            continue
        path = _cached(root / f"{name}-{scale}", name, scale, lambda p, b=builder: b(p, scale))
        env[var] = str(path)
    return env


if __name__ == "__main__":
    import sys
    import time

    logging.basicConfig(level=logging.INFO)
    t = time.perf_counter()
    print(build_all(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "real"))
    print(f"{time.perf_counter() - t:.1f}s")
