"""LoRA fine-tuning of a vision-language captioner to describe radiographs (document 003's recipe).

Recipe (document 003, unsloth): base unsloth/Llama-3.2-11B-Vision-Instruct in 4-bit; LoRA
r=16, alpha=16, dropout 0 on vision AND language layers, attention AND MLP modules;
gradient checkpointing "unsloth"; SFT with batch 2, gradient accumulation 4, warmup 5 steps,
max_steps 30, lr 2e-4, adamw_8bit, weight decay 0.01, linear schedule, seed 3407, max
sequence length 2048. Data: unsloth/Radiology_mini (ROCO sample: image + caption). Each
example is a chat: user = [image, "You are an expert radiographer. Describe accurately what
you see in this image."], assistant = the caption. As written it needs ~48 GB of GPU memory.

The same recipe runs on any transformers AutoModelForImageTextToText checkpoint with a chat
template, e.g. the CPU default `--base HuggingFaceTB/SmolVLM-500M-Instruct --backend transformers`
(Idefics3: SigLIP attention is q/k/v/out_proj + fc1/fc2, the Llama text model q/k/v/o_proj +
gate/up/down_proj) or `google/medgemma-4b-it` (Gemma 3). The adapter it writes is the one the
app's base-vs-fine-tuned comparison toggles: set MEDLAB_MODEL_CAPTIONER to the same base.

Backends (--backend):
  unsloth       FastVisionModel + trl's SFTTrainer (GPU only; `pip install -r requirements-gpu.txt`
                plus `pip install trl`, both imported only here). This is document 003's code path.
  transformers  the same recipe with transformers + peft in a plain PyTorch loop: 4-bit via
                bitsandbytes and adamw_8bit on a GPU when installed, float32 + AdamW on CPU
                (slow: only for tiny models and smoke runs). Each example is its own forward
                pass; losses are accumulated over batch x grad-accum examples per step.
  auto          unsloth when it imports on a CUDA machine, else transformers.
Output: the LoRA adapter (adapter_config.json + adapter_model.safetensors) that
MEDLAB_MODEL_CAPTIONER_ADAPTER can point at, an adapter card (README.md) and
training_log.json; --save-merged also writes merged 16-bit weights to <out>/merged."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from training.common import seed_everything, setup_logging, utc_now, write_json

log = logging.getLogger("training.finetune_captioner")

INSTRUCTION = "You are an expert radiographer. Describe accurately what you see in this image."
# peft module names of the vision towers (Mllama: self_attn q/k/v/o_proj; SigLIP in Idefics3 /
# SmolVLM and Gemma 3: q/k/v/out_proj; mlp fc1/fc2) and the language models (self_attn /
# cross_attn q/k/v/o_proj, mlp gate/up/down_proj): vision + language, attention + MLP, as
# unsloth's finetune_*_layers/modules flags select.
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "gate_proj", "up_proj", "down_proj", "fc1",
                  "fc2")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.finetune_captioner", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="unsloth/Llama-3.2-11B-Vision-Instruct",
                   help="base image-text-to-text checkpoint with a chat template (dir or Hub id)")
    p.add_argument("--data", type=Path, help="JSONL with an image path (relative to the file) and a caption per line")
    p.add_argument("--hub-dataset", help="e.g. unsloth/Radiology_mini (needs `pip install datasets`)")
    p.add_argument("--hub-split", default="train")
    p.add_argument("--image-column", default="image")
    p.add_argument("--caption-column", default="caption")
    p.add_argument("--instruction", default=INSTRUCTION)
    p.add_argument("--out", type=Path, required=True, help="adapter output directory")
    p.add_argument("--backend", choices=("auto", "unsloth", "transformers"), default="auto")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=int, default=16)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--grad-accum", type=int, default=4)
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--max-steps", type=int, default=30)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-seq-length", type=int, default=2048)
    p.add_argument("--no-4bit", action="store_true", help="GPU: load the base in bf16 instead of 4-bit")
    p.add_argument("--save-every", type=int, default=10, help="checkpoint every N optimizer steps (--resume)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--save-merged", action="store_true", help="also write merged 16-bit weights to <out>/merged")
    p.add_argument("--limit", type=int, default=0, help="use only the first N examples")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=3407, help="document 003: 3407")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if (args.data is None) == (args.hub_dataset is None):
        p.error("give exactly one of --data or --hub-dataset")
    return args


# -- data ------------------------------------------------------------------------------------
def load_examples(args: argparse.Namespace) -> list[tuple[Any, str]]:
    """(PIL RGB image, caption) pairs."""
    from PIL import Image

    examples: list[tuple[Any, str]] = []
    if args.data is not None:
        for line in args.data.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            path = Path(row[args.image_column])
            path = path if path.is_absolute() else args.data.parent / path
            with Image.open(path) as img:
                examples.append((img.convert("RGB"), str(row[args.caption_column]).strip()))
            if args.limit and len(examples) >= args.limit:
                break
    else:
        try:
            import datasets
        except ImportError as exc:
            raise SystemExit("--hub-dataset needs `pip install datasets` (or give --data)") from exc
        ds = datasets.load_dataset(args.hub_dataset, split=args.hub_split)
        for row in ds.select(range(min(args.limit, len(ds)))) if args.limit else ds:
            examples.append((row[args.image_column].convert("RGB"), str(row[args.caption_column]).strip()))
    if not examples:
        raise SystemExit("no training examples")
    log.info("%d examples", len(examples))
    return examples


def conversation(image: Any, instruction: str, caption: str | None) -> list[dict[str, Any]]:
    """Document 003's chat layout (user: image + instruction; assistant: caption)."""
    msgs: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "image", "image": image},
                                                               {"type": "text", "text": instruction}]}]
    if caption is not None:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": caption}]})
    return msgs


def encode_example(processor: Any, image: Any, instruction: str, caption: str, max_len: int) -> dict[str, Any]:
    """Model inputs whose labels cover only the assistant's answer (the prompt is masked).

    The processor's own apply_chat_template tokenises [image, text] for any architecture
    (Mllama, Idefics3, Gemma 3, ...), as the app does when it captions."""
    def tokenize(messages: list[dict[str, Any]], prompt_only: bool) -> dict[str, Any]:
        return dict(processor.apply_chat_template(messages, add_generation_prompt=prompt_only, tokenize=True,
                                                  return_dict=True, return_tensors="pt"))

    enc = tokenize(conversation(image, instruction, caption), False)
    n_prompt = tokenize(conversation(image, instruction, None), True)["input_ids"].shape[1]
    for key in ("input_ids", "attention_mask", "cross_attention_mask", "token_type_ids"):
        if key in enc and enc[key].shape[1] > max_len:
            enc[key] = enc[key][:, :max_len]
    labels = enc["input_ids"].clone()
    labels[:, :n_prompt] = -100
    pad = getattr(processor.tokenizer, "pad_token_id", None)
    if pad is not None:
        labels[labels == pad] = -100
    enc["labels"] = labels
    return dict(enc)


# -- backends --------------------------------------------------------------------------------
def choose_backend(requested: str, device: str) -> str:
    if requested != "auto":
        return requested
    if device.startswith("cuda") and importlib.util.find_spec("unsloth") and importlib.util.find_spec("trl"):
        try:
            import unsloth  # noqa: F401 - raises without a usable GPU
        except Exception as exc:  # noqa: BLE001
            log.warning("unsloth does not import here (%s): using transformers + peft", exc)
            return "transformers"
        return "unsloth"
    return "transformers"


def train_unsloth(args: argparse.Namespace, examples: list[tuple[Any, str]]) -> dict[str, Any]:
    """Document 003's code path: FastVisionModel + trl SFTTrainer (GPU)."""
    try:
        from unsloth import FastVisionModel, is_bf16_supported
        from unsloth.trainer import UnslothVisionDataCollator
    except Exception as exc:  # noqa: BLE001
        raise SystemExit(f"unsloth is not usable here ({exc}); use --backend transformers") from exc
    try:
        from trl import SFTConfig, SFTTrainer
    except ImportError as exc:
        raise SystemExit("the unsloth backend needs trl: pip install trl (or use --backend transformers)") from exc
    import dataclasses

    model, tokenizer = FastVisionModel.from_pretrained(args.base, load_in_4bit=not args.no_4bit,
                                                       use_gradient_checkpointing="unsloth")
    model = FastVisionModel.get_peft_model(
        model, finetune_vision_layers=True, finetune_language_layers=True, finetune_attention_modules=True,
        finetune_mlp_modules=True, r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout, bias="none",
        random_state=args.seed, use_rslora=False, loftq_config=None,
    )
    FastVisionModel.for_training(model)
    dataset = [{"messages": conversation(img, args.instruction, cap)} for img, cap in examples]
    fields = {f.name for f in dataclasses.fields(SFTConfig)}
    length_key = "max_seq_length" if "max_seq_length" in fields else "max_length"  # renamed in newer trl
    config = SFTConfig(
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
        warmup_steps=args.warmup_steps, max_steps=args.max_steps, learning_rate=args.lr,
        fp16=not is_bf16_supported(), bf16=is_bf16_supported(), logging_steps=1, optim="adamw_8bit",
        weight_decay=args.weight_decay, lr_scheduler_type="linear", seed=args.seed,
        output_dir=str(args.out / "checkpoint"), save_steps=args.save_every, report_to="none",
        remove_unused_columns=False, dataset_text_field="", dataset_kwargs={"skip_prepare_dataset": True},
        **{length_key: args.max_seq_length},
    )
    trainer = SFTTrainer(model=model, tokenizer=tokenizer, data_collator=UnslothVisionDataCollator(model, tokenizer),
                         train_dataset=dataset, args=config)
    has_ckpt = args.resume and any((args.out / "checkpoint").glob("checkpoint-*"))
    stats = trainer.train(resume_from_checkpoint=True if has_ckpt else None)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    if args.save_merged:
        model.save_pretrained_merged(str(args.out / "merged"), tokenizer, save_method="merged_16bit")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"backend": "unsloth", "losses": losses, "train_runtime_s": stats.metrics.get("train_runtime")}


def train_transformers(args: argparse.Namespace, examples: list[tuple[Any, str]], device: str) -> dict[str, Any]:
    """The same recipe with transformers + peft in a plain loop (CPU for tiny models, or GPU)."""
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from tqdm.auto import tqdm
    from transformers import AutoModelForImageTextToText, AutoProcessor, get_linear_schedule_with_warmup

    cuda = device.startswith("cuda")
    processor = AutoProcessor.from_pretrained(args.base)
    kwargs: dict[str, Any] = {"use_safetensors": True}
    quantized = False
    if cuda:
        kwargs.update(dtype=torch.bfloat16, device_map={"": device})
        if not args.no_4bit and importlib.util.find_spec("bitsandbytes"):
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                               bnb_4bit_compute_dtype=torch.bfloat16)
            quantized = True
    model = AutoModelForImageTextToText.from_pretrained(args.base, **kwargs)
    if not cuda:
        model = model.to(device)
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    elif cuda:
        model.gradient_checkpointing_enable()
    lora = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout, bias="none",
                      target_modules=list(TARGET_MODULES), task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.print_trainable_parameters()

    params = [p for p in model.parameters() if p.requires_grad]
    if cuda and importlib.util.find_spec("bitsandbytes"):
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(params, lr=args.lr, weight_decay=args.weight_decay)
        optim_name = "adamw_8bit"
    else:
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
        optim_name = "adamw_torch"
    scheduler = get_linear_schedule_with_warmup(optimizer, args.warmup_steps, args.max_steps)
    gen = torch.Generator().manual_seed(args.seed)
    step, losses = 0, []
    ckpt = args.out / "checkpoint"
    if args.resume and (ckpt / "state.pt").is_file():
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors"), device=device))
        saved = torch.load(ckpt / "state.pt", map_location=device, weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        gen.set_state(saved["generator"])
        step, losses = saved["step"], saved["losses"]
        log.info("resuming at step %d", step)

    per_step = args.batch_size * args.grad_accum
    order: list[int] = []
    model.train()
    bar = tqdm(total=args.max_steps, initial=step, desc="LoRA steps", unit="step")
    while step < args.max_steps:
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for _ in range(per_step):
            if not order:
                order = torch.randperm(len(examples), generator=gen).tolist()
            image, caption = examples[order.pop()]
            batch = encode_example(processor, image, args.instruction, caption, args.max_seq_length)
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
            if cuda and "pixel_values" in batch:
                batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
            loss = model(**batch).loss / per_step
            loss.backward()
            step_loss += loss.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        step += 1
        losses.append(step_loss)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        if args.save_every and step % args.save_every == 0 and step < args.max_steps:
            model.save_pretrained(ckpt)
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "generator": gen.get_state(), "step": step, "losses": losses}, ckpt / "state.pt")
    bar.close()
    model.save_pretrained(args.out)
    if args.save_merged:
        if quantized:
            log.warning("--save-merged skipped: merging into a 4-bit base loses precision; rerun with --no-4bit")
        else:
            merged = model.merge_and_unload()
            merged.save_pretrained(args.out / "merged")
            processor.save_pretrained(args.out / "merged")
    return {"backend": "transformers+peft", "losses": losses, "optimizer": optim_name, "quantized_4bit": quantized}


def adapter_card(args: argparse.Namespace, result: dict[str, Any], n_examples: int) -> str:
    losses = result["losses"]
    data = args.hub_dataset or args.data.name
    return f"""---
base_model: {args.base}
library_name: peft
tags: [lora, radiology, medlab, educational]
---
# Radiology LoRA adapter (document 003's recipe)

Educational use only — not a medical device; the captions can be wrong or invented.

- **Base model:** `{args.base}`
- **Data:** `{data}` ({n_examples} image/caption pairs)
- **Instruction:** "{args.instruction}"
- **LoRA:** r={args.rank}, alpha={args.alpha}, dropout={args.dropout}, vision + language layers, attention + MLP
  modules (`{", ".join(TARGET_MODULES)}`)
- **Training:** backend {result['backend']}, batch {args.batch_size} x grad-accum {args.grad_accum},
  warmup {args.warmup_steps}, max_steps {args.max_steps}, lr {args.lr}, weight decay {args.weight_decay}, linear
  schedule, seed {args.seed}, max sequence length {args.max_seq_length}
- **Loss:** first step {losses[0]:.4f}, last step {losses[-1]:.4f} ({len(losses)} steps)
- **Written:** {utc_now()} by `python -m training.finetune_captioner`

Use it in the app: `MEDLAB_MODEL_CAPTIONER={args.base} MEDLAB_MODEL_CAPTIONER_ADAPTER=<this folder>`.
"""


def train(args: argparse.Namespace) -> dict[str, Any]:
    from training.common import pick_device

    seed_everything(args.seed)
    device = pick_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    examples = load_examples(args)
    backend = choose_backend(args.backend, device)
    log.info("backend: %s on %s", backend, device)
    result = train_unsloth(args, examples) if backend == "unsloth" else train_transformers(args, examples, device)
    summary = {"created": utc_now(), "base_model": args.base, "examples": len(examples), "device": device,
               "rank": args.rank, "alpha": args.alpha, "dropout": args.dropout, "target_modules": list(TARGET_MODULES),
               "batch_size": args.batch_size, "grad_accum": args.grad_accum, "warmup_steps": args.warmup_steps,
               "max_steps": args.max_steps, "lr": args.lr, "weight_decay": args.weight_decay, "seed": args.seed,
               "instruction": args.instruction, **result}
    write_json(args.out / "training_log.json", summary)
    (args.out / "README.md").write_text(adapter_card(args, result, len(examples)), encoding="utf-8")
    shutil.rmtree(args.out / "checkpoint", ignore_errors=True)
    log.info("adapter saved to %s (loss %.4f -> %.4f)", args.out, result["losses"][0], result["losses"][-1])
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
