"""Fine-tune FLAN-T5 to write a radiology report's Impression from its Findings (document 002).

Input: JSONL or CSV with a findings column and an impression column (e.g. the public
Indiana University / Open-I reports; MIMIC-CXR needs PhysioNet credentials). Each example is
document 002's prompt, verbatim:
    "Generate radiology report impressions based on the following findings. Findings: {findings}"
Document 002 fully fine-tuned FLAN-T5-XL for 3 epochs on 91,544 MIMIC-CXR reports.

A plain PyTorch loop (AdamW, linear warmup/decay, gradient accumulation, optional bf16 on a
GPU); the best epoch by validation loss is saved as a standard HF Seq2Seq dir (model +
tokenizer) that MEDLAB_MODEL_IMPRESSION can point at. Resumable per epoch (--resume)."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from training.common import pick_device, seed_everything, setup_logging, utc_now, write_json

log = logging.getLogger("training.finetune_impression")

CHECKPOINT = "checkpoint"


def read_pairs(path: Path, findings_col: str = "findings", impression_col: str = "impression") -> list[tuple[str, str]]:
    """(findings, impression) pairs from .jsonl/.json lines or .csv; rows missing either are skipped."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    pairs = []
    for row in rows:
        f, imp = (row.get(findings_col) or "").strip(), (row.get(impression_col) or "").strip()
        if f and imp:
            pairs.append((f, imp))
    if not pairs:
        raise SystemExit(f"{path}: no rows with both {findings_col!r} and {impression_col!r}")
    log.info("%s: %d pairs (%d rows skipped)", path, len(pairs), len(rows) - len(pairs))
    return pairs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.finetune_impression", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="google/flan-t5-base",
                   help="base checkpoint (document 002: google/flan-t5-xl; default flan-t5-base fits a 16 GB GPU)")
    p.add_argument("--train", type=Path, required=True, help="JSONL/CSV with findings + impression")
    p.add_argument("--val", type=Path, help="validation file (default: --val-fraction of --train)")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--findings-column", default="findings")
    p.add_argument("--impression-column", default="impression")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=3, help="document 002: 3")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-ratio", type=float, default=0.03)
    p.add_argument("--max-source-length", type=int, default=512)
    p.add_argument("--max-target-length", type=int, default=128)
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint after the last full epoch")
    p.add_argument("--keep-checkpoint", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def _batches(
    pairs: list[tuple[str, str]], tokenizer: Any, args: argparse.Namespace, shuffle: bool, generator: Any,
) -> list[dict[str, Any]]:
    import torch

    from medlab.generation.impression import build_prompt

    order = torch.randperm(len(pairs), generator=generator).tolist() if shuffle else list(range(len(pairs)))
    out = []
    for start in range(0, len(order), args.batch_size):
        chunk = [pairs[i] for i in order[start : start + args.batch_size]]
        enc = tokenizer([build_prompt(f) for f, _ in chunk], max_length=args.max_source_length, truncation=True,
                        padding=True, return_tensors="pt")
        lab = tokenizer(text_target=[imp for _, imp in chunk], max_length=args.max_target_length, truncation=True,
                        padding=True, return_tensors="pt")["input_ids"]
        lab[lab == tokenizer.pad_token_id] = -100  # padding does not count in the loss
        enc["labels"] = lab
        out.append(enc)
    return out


def _evaluate_loss(model: Any, batches: list[dict[str, Any]], device: str, autocast: Any) -> float:
    import torch

    model.eval()
    total, n = 0.0, 0
    with torch.inference_mode(), autocast():
        for b in batches:
            b = {k: v.to(device) for k, v in b.items()}
            total += model(**b).loss.item() * b["input_ids"].shape[0]
            n += b["input_ids"].shape[0]
    return total / max(n, 1)


def train(args: argparse.Namespace) -> dict[str, Any]:
    import contextlib

    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, get_linear_schedule_with_warmup

    seed_everything(args.seed)
    device = pick_device(args.device)
    pairs = read_pairs(args.train, args.findings_column, args.impression_column)
    if args.val:
        train_pairs, val_pairs = pairs, read_pairs(args.val, args.findings_column, args.impression_column)
    else:
        g = torch.Generator().manual_seed(args.seed)
        perm = torch.randperm(len(pairs), generator=g).tolist()
        n_val = max(1, int(len(pairs) * args.val_fraction))
        val_pairs, train_pairs = [pairs[i] for i in perm[:n_val]], [pairs[i] for i in perm[n_val:]]

    ckpt = args.out / CHECKPOINT
    resuming = args.resume and (ckpt / "trainer_state.pt").is_file()
    source = str(ckpt) if resuming else args.model
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSeq2SeqLM.from_pretrained(source, use_safetensors=True).to(device)

    gen = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = -(-len(train_pairs) // args.batch_size) // args.grad_accum or 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    total_steps = steps_per_epoch * args.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total_steps * args.warmup_ratio), total_steps)
    state: dict[str, Any] = {"epoch": 0, "best_val_loss": float("inf"), "history": []}
    if resuming:
        saved = torch.load(ckpt / "trainer_state.pt", map_location=device, weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        gen.set_state(saved["generator"])
        state = saved["state"]
        log.info("resuming after epoch %d", state["epoch"])

    use_bf16 = args.bf16 and device.startswith("cuda")

    def autocast() -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()

    val_batches = _batches(val_pairs, tokenizer, args, False, None)
    if state["epoch"] == 0 and not state["history"]:
        state["initial_val_loss"] = _evaluate_loss(model, val_batches, device, autocast)
        log.info("validation loss before fine-tuning: %.4f", state["initial_val_loss"])
    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        model.train()
        batches = _batches(train_pairs, tokenizer, args, True, gen)
        running, seen = 0.0, 0
        bar = tqdm(batches, desc=f"epoch {epoch}/{args.epochs}", unit="batch")
        optimizer.zero_grad(set_to_none=True)
        for i, b in enumerate(bar):
            b = {k: v.to(device) for k, v in b.items()}
            with autocast():
                loss = model(**b).loss
            (loss / args.grad_accum).backward()
            if (i + 1) % args.grad_accum == 0 or i + 1 == len(batches):
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            running += loss.item() * b["input_ids"].shape[0]
            seen += b["input_ids"].shape[0]
            bar.set_postfix(loss=f"{running / seen:.4f}")
        val_loss = _evaluate_loss(model, val_batches, device, autocast)
        state["history"].append({"epoch": epoch, "train_loss": running / max(seen, 1), "val_loss": val_loss,
                                 "lr": scheduler.get_last_lr()[0]})
        log.info("epoch %d: train loss %.4f, val loss %.4f", epoch, running / max(seen, 1), val_loss)
        if val_loss < state["best_val_loss"]:
            state["best_val_loss"], state["best_epoch"] = val_loss, epoch
            model.save_pretrained(args.out)
            tokenizer.save_pretrained(args.out)
        state["epoch"] = epoch
        model.save_pretrained(ckpt)
        tokenizer.save_pretrained(ckpt)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "generator": gen.get_state(), "state": state}, ckpt / "trainer_state.pt")

    summary = {"created": utc_now(), "base_model": args.model, "prompt": "document 002 (medlab.generation.impression.PROMPT)",
               "train_pairs": len(train_pairs), "val_pairs": len(val_pairs), "epochs": args.epochs, "lr": args.lr,
               "batch_size": args.batch_size, "grad_accum": args.grad_accum, "seed": args.seed, **state}
    write_json(args.out / "training_log.json", summary)
    if not args.keep_checkpoint:
        shutil.rmtree(ckpt, ignore_errors=True)
    log.info("saved %s (best epoch %s, val loss %.4f)", args.out, state.get("best_epoch"), state["best_val_loss"])
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    train(args)
    log.info("next: python -m training.evaluate_impression --model %s --data <test.jsonl>", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
