"""Tiny generation checkpoints built offline: captioners with their processors and chat
templates (Mllama, Idefics3 = SmolVLM's architecture, Gemma 3 = MedGemma's), PEFT LoRA adapters
for them, and a T5 impression model with its tokenizer.

Everything is built from configs with random weights and saved with save_pretrained in the
standard Hugging Face formats, so the app's real loaders read them exactly like Hub
checkpoints. Tokenizers are word-level `tokenizers` objects built in code (no download).

Two deliberate tweaks make the tests meaningful:
- the LoRA B matrices are random instead of zero, so the adapter really changes the logits;
- the end-of-sequence rows of the output layers are zeroed, so a random model does not stop
  after one token and streaming produces several updates."""

from __future__ import annotations

from pathlib import Path

# The regex of the public radiology adapter (MMoshtaghi/Llama-3.2-11B-Vision-LoRAAdpt-Radiology):
# language-model attention projections only. Using it here checks it matches transformers'
# current Mllama module names.
ADAPTER_TARGET_REGEX = (
    r"(?:.*?(?:language|text).*?(?:self_attn|attention|attn).*?"
    r"(?:q_proj|k_proj|v_proj|o_proj|fc1|fc2|gate_proj|up_proj|down_proj).*?)"
    r"|(?:\bmodel\.layers\.[\d]{1,}\.(?:self_attn|attention|attn)\."
    r"(?:(?:q_proj|k_proj|v_proj|o_proj|fc1|fc2|gate_proj|up_proj|down_proj)))"
)

WORDS = (
    "the a an of and or is are was were in on at with without no not there to from by as "
    "left right bilateral upper lower middle lobe lung lungs chest heart cardiac mediastinum "
    "radiograph image view frontal lateral panoramic pa ap film x-ray ct scan mri "
    "shows demonstrates seen noted visible normal abnormal mild moderate severe small large "
    "opacity opacities effusion pleural pneumothorax consolidation atelectasis edema "
    "fracture bone bones rib ribs spine cyst cysts aneurysmal mass nodule lesion tooth teeth "
    "mandible jaw size contour silhouette stable unchanged acute chronic process disease "
    "cardiopulmonary focal airspace clear within limits interval change prior comparison "
    "impression findings evidence suggestive consistent possible likely tube line catheter "
    "degenerative changes thoracic enlarged cardiomegaly vascular congestion . , : ;"
).split()

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|image|>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def _word_tokenizer(specials: list[str], unk: str, **kwargs):  # type: ignore[no-untyped-def]
    """A word-level fast tokenizer over WORDS plus `specials` (ids 0.. in that order)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(specials)}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return backend, PreTrainedTokenizerFast, kwargs


def tiny_mllama(path: Path, seed: int = 0) -> Path:
    """A 2-layer Mllama (vision 32 px tiles, one cross-attention layer) + MllamaProcessor."""
    import torch
    from transformers import (
        MllamaConfig,
        MllamaForConditionalGeneration,
        MllamaImageProcessor,
        MllamaProcessor,
        MllamaTextConfig,
        MllamaVisionConfig,
    )

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>", "<|finetune_right_pad_id|>", "<|python_tag|>", "<unk>"]
    backend, fast_cls, _ = _word_tokenizer(specials, "<unk>")
    tokenizer = fast_cls(
        tokenizer_object=backend, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>", unk_token="<unk>", model_max_length=2048,
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|python_tag|>",
                                       "<|end_of_text|>"]}
    )
    text_vocab = len(tokenizer)
    # As in the real model, <|image|> is the id right after the text vocabulary.
    tokenizer.add_tokens(["<|image|>"], special_tokens=True)
    image_id = tokenizer.convert_tokens_to_ids("<|image|>")
    assert image_id == text_vocab
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|eot_id|>", "<|end_of_text|>")]

    torch.manual_seed(seed)
    vision = MllamaVisionConfig(
        hidden_size=16, num_hidden_layers=2, num_global_layers=1, attention_heads=2, intermediate_size=32,
        vision_output_dim=32, image_size=32, patch_size=8, max_num_tiles=2,
        intermediate_layers_indices=[0], supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],
    )
    text = MllamaTextConfig(
        vocab_size=text_vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=64, cross_attention_layers=[1],
        max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = MllamaConfig(vision_config=vision, text_config=text, image_token_index=image_id)
    model = MllamaForConditionalGeneration(config).eval()
    _silence_eos(model, eos_ids, tokenizer.pad_token_id, tokenizer.bos_token_id)
    model.save_pretrained(path)

    image_processor = MllamaImageProcessor(size={"height": 32, "width": 32}, max_image_tiles=2)
    processor = MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(path)
    return path


# SmolVLM-Instruct's chat template (User:/Assistant: turns ending in <end_of_utterance>).
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
# Gemma 3's turn layout (<start_of_turn>user ... <end_of_turn>, <start_of_image> for an image).
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _silence_eos(model, eos_ids: list[int], pad_id: int, bos_id: int | None,  # type: ignore[no-untyped-def]
                 quiet_ids: list[int] = ()) -> None:
    """Zero the output rows of end-of-sequence (and `quiet_ids`: special tokens a decoded text
    would drop) so that a random model writes several words before it stops."""
    import torch

    with torch.no_grad():
        model.lm_head.weight[list(eos_ids) + list(quiet_ids)] = 0.0  # see module docstring
    model.generation_config.eos_token_id = eos_ids
    model.generation_config.pad_token_id = pad_id
    if bos_id is not None:
        model.generation_config.bos_token_id = bos_id


def tiny_idefics3(path: Path, seed: int = 0) -> Path:
    """A 2-layer Idefics3 (SmolVLM's architecture: SigLIP-style encoder, pixel-shuffle
    connector, Llama text model) + Idefics3Processor with SmolVLM's chat template. Images are
    resized to 64 px and split into 32 px tiles (4 tiles + the global image, 4 tokens each)."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    tile_tokens = ["<fake_token_around_image>", "<image>", "<global-img>"] + [
        f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    specials = ["<|endoftext|>", "<|im_start|>", "<unk>", "<end_of_utterance>", *tile_tokens]
    backend, fast_cls, _ = _word_tokenizer(specials, "<unk>")
    backend.add_tokens(["User", "Assistant"])
    tokenizer = fast_cls(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<end_of_utterance>",
                         pad_token="<|endoftext|>", unk_token="<unk>", model_max_length=2048)
    tokenizer.add_special_tokens({"additional_special_tokens": specials[3:]})
    eos = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    torch.manual_seed(seed)
    config = Idefics3Config(
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        text_config={"model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
                     "max_position_embeddings": 4096, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": eos,
                     "pad_token_id": tokenizer.pad_token_id},
        scale_factor=2, image_token_id=tokenizer.convert_tokens_to_ids("<image>"), pad_token_id=tokenizer.pad_token_id,
    )
    model = Idefics3ForConditionalGeneration(config).eval()
    _silence_eos(model, [eos], tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.all_special_ids)
    model.save_pretrained(path)
    image_processor = Idefics3ImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    # image_seq_len = (image_size / patch_size)^2 / scale_factor^2 = 16 / 4
    Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4,
                      chat_template=SMOLVLM_TEMPLATE).save_pretrained(path)
    return path


def tiny_gemma3(path: Path, seed: int = 0) -> Path:
    """A 2-layer Gemma 3 (MedGemma's architecture: SigLIP encoder, pooled to 4 image tokens)
    + Gemma3Processor with Gemma 3's chat template."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                "<end_of_image>", "<image_soft_token>"]
    backend, fast_cls, _ = _word_tokenizer(specials, "<unk>")
    backend.add_tokens(["user", "model"])
    tokenizer = fast_cls(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=2048,
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                              "image_token": "<image_soft_token>"},
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials[4:6]})
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    eos = [ids["<eos>"], ids["<end_of_turn>"]]
    torch.manual_seed(seed)
    config = Gemma3Config(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "query_pre_attn_scalar": 16,
                     "sliding_window": 64, "max_position_embeddings": 4096, "pad_token_id": ids["<pad>"],
                     "bos_token_id": ids["<bos>"], "eos_token_id": eos},
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8,
                       "vision_use_head": False},
        mm_tokens_per_image=4, boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )
    model = Gemma3ForConditionalGeneration(config).eval()
    _silence_eos(model, eos, ids["<pad>"], ids["<bos>"], tokenizer.all_special_ids)
    model.save_pretrained(path)
    image_processor = Gemma3ImageProcessor(size={"height": 32, "width": 32})
    Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=4,
                    chat_template=GEMMA3_TEMPLATE).save_pretrained(path)
    return path


# LoRA targets of the tiny adapters per architecture: attention projections of the text model.
TEXT_ATTENTION_REGEX = r".*(?:text_model|language_model).*\.(?:q_proj|k_proj|v_proj|o_proj)"


def tiny_lora_adapter(base_dir: Path, path: Path, seed: int = 1, target_modules: str = ADAPTER_TARGET_REGEX) -> Path:
    """A PEFT LoRA adapter for a tiny captioner (by default the public adapter's target regex,
    which is written for Mllama)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(base_dir)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=target_modules,
                        task_type="CAUSAL_LM", base_model_name_or_path=str(base_dir))
    peft_model = get_peft_model(base, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # B starts at zero (a no-op adapter): perturb it
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    peft_model.save_pretrained(path)
    return path


def tiny_t5(path: Path, seed: int = 0, model_max_length: int = 48) -> Path:
    """A 2-layer T5 with a word-level tokenizer whose model_max_length is small on purpose
    (48 tokens), so the truncation notice can be tested with a short text."""
    import torch
    from tokenizers import processors
    from transformers import T5Config, T5ForConditionalGeneration

    specials = ["<pad>", "</s>", "<unk>"]
    backend, fast_cls, _ = _word_tokenizer(specials, "<unk>")
    for word in ("generate", "radiology", "report", "impressions", "based", "following", "findings."):
        backend.add_tokens([word])
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = fast_cls(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                         model_max_length=model_max_length)

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
        num_heads=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )
    model = T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.lm_head.weight[1] = 0.0  # never greedily pick </s>: see module docstring
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build(root: Path) -> dict[str, str]:
    base = tiny_mllama(root / "captioner-mllama")
    adapter = tiny_lora_adapter(base, root / "captioner-lora")
    t5 = tiny_t5(root / "impression-t5")
    return {
        "MEDLAB_MODEL_CAPTIONER": str(base),
        "MEDLAB_MODEL_CAPTIONER_ADAPTER": str(adapter),
        "MEDLAB_MODEL_IMPRESSION": str(t5),
    }
