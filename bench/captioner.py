"""Section 8: the CPU captioner at real size: time to first token and tokens/s of an
Idefics3 checkpoint shaped like SmolVLM-500M-Instruct (the default captioner on a machine
without a GPU), random weights (no download), through the app's own loader, preprocessing
and streaming generation.

Two image layouts are compared: one 512-px tile (what the app asks of SmolVLM on a CPU,
registry params "processor_kwargs") and the processor's default (resize to 2048 px, 4x4 tiles
+ the global view). Correctness beside speed: the streamed text equals the decoded output of
a plain, non-streamed greedy `generate` on the same inputs."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, WORK, Row, SectionResult, check, loadavg

# SmolVLM-500M-Instruct's shapes (its config.json): SmolLM2-360M text model, SigLIP
# base-patch16-512 vision encoder, pixel-shuffle factor 4 -> 64 tokens per 512-px tile.
REAL = {
    "text": {"hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32, "num_attention_heads": 15,
             "num_key_value_heads": 5, "vocab_size": 49280, "rope_theta": 100000.0, "max_position_embeddings": 8192},
    "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
               "image_size": 512, "patch_size": 16},
    "scale_factor": 4, "image_seq_len": 64, "longest_edge": 2048, "tile": 512,
}
TINY = {
    "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 1, "vocab_size": 512, "max_position_embeddings": 4096},
    "vision": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
               "image_size": 32, "patch_size": 8},
    "scale_factor": 2, "image_seq_len": 4, "longest_edge": 128, "tile": 32,
}
TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_smolvlm_shaped(path: Path, shape: dict[str, Any], seed: int = 0) -> Path:
    """Idefics3 + Idefics3Processor with SmolVLM's layout and random weights. The word-level
    tokenizer fills the real vocabulary size, and the output rows of special tokens are zeroed
    so that every generated token is a word (one streamed piece each)."""
    if (path / "config.json").is_file():
        return path
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        PreTrainedTokenizerFast,
    )

    specials = ["<|endoftext|>", "<|im_start|>", "<unk>", "<end_of_utterance>", "<fake_token_around_image>",
                "<image>", "<global-img>"] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    vocab = {tok: i for i, tok in enumerate(specials + ["User", "Assistant", ":"])}
    for i in range(shape["text"]["vocab_size"] - len(vocab)):
        vocab[f"w{i}"] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>",
                                        eos_token="<end_of_utterance>", pad_token="<|endoftext|>", unk_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": specials[3:]})
    eos = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    torch.manual_seed(seed)
    config = Idefics3Config(
        vision_config=shape["vision"],
        text_config={"model_type": "llama", **shape["text"], "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": eos, "pad_token_id": tokenizer.pad_token_id, "rms_norm_eps": 1e-5},
        scale_factor=shape["scale_factor"], image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Idefics3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.lm_head.weight[tokenizer.all_special_ids] = 0.0
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(torch.bfloat16).save_pretrained(path)  # stored in bfloat16, as the Hub checkpoint is
    image_processor = Idefics3ImageProcessor(size={"longest_edge": shape["longest_edge"]},
                                             max_image_size={"longest_edge": shape["tile"]})
    Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=shape["image_seq_len"],
                      chat_template=TEMPLATE).save_pretrained(path)
    return path


def _one_run(loaded: Any, image: Any, splitting: bool, new_tokens: int) -> dict[str, Any]:
    """Time to the first streamed piece and decode speed after it, through the app's path."""
    from medlab.generation.caption_settings import DEFAULT_INSTRUCTION, CaptionSettings
    from medlab.generation.captioner import prepare_inputs
    from medlab.generation.streaming import stream_generate

    loaded.extras["processor_kwargs"] = {} if splitting else {"do_image_splitting": False}
    started = time.perf_counter()
    inputs = prepare_inputs(loaded, image, DEFAULT_INSTRUCTION)
    kwargs = {**CaptionSettings(new_tokens, 0.0).validated().generate_kwargs(), "min_new_tokens": new_tokens}
    first = None
    pieces = 0
    text = ""
    for text in stream_generate(  # noqa: B007 - the last piece is the whole text
        loaded.model, loaded.processor.tokenizer, inputs, kwargs, lock=loaded.extras["lock"]):
        pieces += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    image_tokens = int((inputs["input_ids"] == loaded.model.config.image_token_id).sum())
    return {"ttft_s": first - started, "tokens_per_s": (new_tokens - 1) / (end - first) if end > first else None,
            "total_s": end - started, "pieces": pieces, "image_tokens": image_tokens,
            "prompt_tokens": int(inputs["input_ids"].shape[1]), "text": text, "inputs": inputs}


def run(quick: bool = False) -> SectionResult:
    res = SectionResult(10, "CPU captioner (SmolVLM-500M-shaped Idefics3): time to first token, tokens/s")
    started = time.perf_counter()
    shape = TINY if quick else REAL
    path = build_smolvlm_shaped(WORK / "models" / ("captioner-smolvlm-" + ("tiny" if quick else "real")), shape)
    os.environ["MEDLAB_MODEL_CAPTIONER"] = str(path)
    os.environ["MEDLAB_MODEL_CAPTIONER_ADAPTER"] = "none"

    import torch

    from medlab.core.loaders import get_model
    from medlab.generation.captioner import load_radiograph

    t0 = time.perf_counter()
    loaded = get_model("captioner")
    load_s = time.perf_counter() - t0
    params = sum(p.numel() for p in loaded.model.parameters())
    image = load_radiograph(ROOT / "assets" / "radiograph" / "synthetic_chest_phantom.png")
    new_tokens = 8 if quick else 32
    _one_run(loaded, image, False, 2)  # warm-up (allocator, kernels)
    runs = {"one 512-px tile (app default on CPU)": _one_run(loaded, image, False, new_tokens),
            "4x4 tiles + global (processor default)": _one_run(loaded, image, True, new_tokens)}

    # correctness: streamed text == plain greedy generate on the same inputs
    single = runs["one 512-px tile (app default on CPU)"]
    with torch.inference_mode():
        out = loaded.model.generate(**single["inputs"], max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                    do_sample=False)
    plain = loaded.processor.decode(out[0, single["inputs"]["input_ids"].shape[1]:], skip_special_tokens=True)
    same = plain.strip() == single["text"].strip()

    res.details = {
        "parameters": params, "dtype": str(loaded.model.dtype), "load_s": round(load_s, 2),
        "threads": torch.get_num_threads(), "new_tokens": new_tokens, "scale": "tiny" if quick else "real",
        "streamed_equals_generate": same,
        "runs": {k: {m: (round(v, 3) if isinstance(v, float) else v) for m, v in r.items() if m not in ("text", "inputs")}
                 for k, r in runs.items()},
    }
    res.tables.append({
        "title": f"{params / 1e6:.0f}M parameters, {loaded.model.dtype}, {torch.get_num_threads()} torch threads, "
                 f"{new_tokens} new tokens (greedy), load {load_s:.1f} s",
        "columns": ["image layout", "image tokens", "prompt tokens", "time to first token (s)", "tokens/s after it",
                    "total (s)"],
        "rows": [[k, r["image_tokens"], r["prompt_tokens"], round(r["ttft_s"], 2),
                  round(r["tokens_per_s"], 2) if r["tokens_per_s"] else None, round(r["total_s"], 2)]
                 for k, r in runs.items()],
    })
    ttft = single["ttft_s"]
    res.rows.append(Row("CPU captioner: time to first token (one tile)", round(ttft, 2), "s", "<= 10 s",
                        check(ttft, "<=", 10.0),
                        f"{single['tokens_per_s']:.1f} tokens/s after it; 4x4 tiles: "
                        f"{runs['4x4 tiles + global (processor default)']['ttft_s']:.1f} s to first token"))
    res.rows.append(Row("CPU captioner: streamed text equals plain generate", 1.0 if same else 0.0, "", "= 1",
                        same, "greedy, same inputs"))
    res.notes.append("Random weights of the real shapes: speed is what the real checkpoint would show; the text "
                     "itself is meaningless.")
    res.load["end"] = loadavg()
    res.seconds = time.perf_counter() - started
    return res
