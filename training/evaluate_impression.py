"""Score a findings -> impression model with ROUGE, as document 002 does.

Generates an impression for every row of a JSONL/CSV (findings + reference impression) with
document 002's prompt and decoding (beam search, 10 beams, max length 80), scores each with
rouge-score (rouge1 / rouge2 / rougeL / rougeLsum, stemmed) and writes:
  evaluation.json   mean table + per-type distribution (mean, std, min, quartiles, max)
  predictions.jsonl one line per report with its scores
  plots/*.png       histograms of the per-report scores (and model vs --baseline)
  model_card.md     the table beside document 002's numbers, for the app's model card
Give --baseline (e.g. the un-tuned google/flan-t5-xl) to get document 002's
pretrained-vs-fine-tuned comparison in one report."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from training.common import default_report_dir, md_table, pick_device, pyplot, seed_everything, setup_logging, utc_now, write_json
from training.finetune_impression import read_pairs

log = logging.getLogger("training.evaluate_impression")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.evaluate_impression", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="Seq2Seq dir or Hub id (default: the app's configured impression model)")
    p.add_argument("--baseline", help="a second model scored on the same rows (document 002: the un-tuned base)")
    p.add_argument("--data", type=Path, required=True, help="JSONL/CSV with findings + reference impression")
    p.add_argument("--findings-column", default="findings")
    p.add_argument("--impression-column", default="impression")
    p.add_argument("--limit", type=int, default=0, help="score only the first N rows (0 = all)")
    p.add_argument("--num-beams", type=int, default=10, help="document 002: 10")
    p.add_argument("--max-length", type=int, default=80, help="max generated tokens (document 002: 80)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", type=Path, help="report folder (default: the model dir, else MEDLAB_DATA_DIR/reports/impression)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def load(model: str | None, device: str) -> Any:
    """Through the app's own loader (safetensors only, no remote code)."""
    from medlab.core.config import model_env_var
    from medlab.core.loaders import load_seq2seq
    from medlab.core.registry import get_spec, resolve_source

    environ = None if model is None else {model_env_var("impression"): model}
    source = resolve_source("impression", environ)
    return load_seq2seq(get_spec("impression"), source, device, lambda f, m: None)


def generate_all(loaded: Any, findings: list[str], args: argparse.Namespace, desc: str) -> list[str]:
    import torch
    from tqdm.auto import tqdm

    from medlab.generation.impression import build_prompt, token_limit

    tok, model = loaded.tokenizer, loaded.model
    limit = token_limit(tok, model)
    out: list[str] = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(findings), args.batch_size), desc=desc, unit="batch"):
            prompts = [build_prompt(f) for f in findings[start : start + args.batch_size]]
            enc = tok(prompts, max_length=limit, truncation=True, padding=True, return_tensors="pt").to(loaded.device)
            ids = model.generate(**enc, num_beams=args.num_beams, max_new_tokens=args.max_length, do_sample=False)
            out += [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
    return out


def score(predictions: list[str], references: list[str]) -> tuple[list[dict[str, float]], dict[str, Any]]:
    from medlab.generation.metrics import rouge, summarize

    rows = [rouge(p, r) for p, r in zip(predictions, references, strict=True)]
    return rows, summarize(rows)


def write_plots(out: Path, rows: list[dict[str, float]], baseline_rows: list[dict[str, float]] | None) -> list[str]:
    from medlab.generation.metrics import ROUGE_TYPES

    plt = pyplot()
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for old in plots.glob("*.png"):
        old.unlink()
    fig, axes = plt.subplots(1, len(ROUGE_TYPES), figsize=(12, 3), sharey=True)
    for ax, name in zip(axes, ROUGE_TYPES, strict=True):
        if baseline_rows:
            ax.hist([r[name] for r in baseline_rows], bins=20, range=(0, 1), alpha=0.5, label="baseline", color="grey")
        ax.hist([r[name] for r in rows], bins=20, range=(0, 1), alpha=0.7, label="model", color="C0")
        ax.set(title=name, xlabel="score per report")
    axes[0].set_ylabel("reports")
    axes[-1].legend(fontsize=7)
    fig.suptitle("Per-report ROUGE distribution")
    fig.tight_layout()
    fig.savefig(plots / "01_rouge_distribution.png", dpi=110)
    plt.close(fig)
    written = ["01_rouge_distribution.png"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    data = [[r[n] for r in rows] for n in ROUGE_TYPES]
    ax.boxplot(data, tick_labels=list(ROUGE_TYPES))
    ax.set(ylim=(0, 1), title="ROUGE quartiles (model)")
    fig.tight_layout()
    fig.savefig(plots / "02_rouge_boxplot.png", dpi=110)
    plt.close(fig)
    return written + ["02_rouge_boxplot.png"]


def card_section(report: dict[str, Any]) -> str:
    from medlab.generation.impression import DOC_002_ROUGE
    from medlab.generation.metrics import ROUGE_TYPES

    rows = [[f"**this model** ({report['n']} reports of `{Path(report['data']).name}`)",
             *(report["rouge"][n]["mean"] for n in ROUGE_TYPES)]]
    if report.get("baseline"):
        rows.append([f"baseline `{report['baseline']['model']}`", *(report["baseline"]["rouge"][n]["mean"] for n in ROUGE_TYPES)])
    rows += [[f"document 002: {name}", *vals] for name, vals in DOC_002_ROUGE.items()]
    dist = [[n, *(report["rouge"][n][k] for k in ("mean", "std", "q1", "median", "q3"))] for n in ROUGE_TYPES]
    return "\n".join([
        "### Evaluation report",
        "",
        f"Scored on {report['created'][:10]} with `python -m training.evaluate_impression` "
        f"(document 002's prompt, {report['settings']['num_beams']} beams, max length {report['settings']['max_length']}).",
        "",
        md_table(["model / data", *ROUGE_TYPES], rows),
        "",
        "Per-report distribution of this model:",
        "",
        md_table(["metric", "mean", "std", "Q1", "median", "Q3"], dist),
        "",
        "_ROUGE counts overlapping words; a fluent but clinically wrong impression can still score well._",
    ]) + "\n"


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    seed_everything(args.seed)
    device = pick_device(args.device)
    pairs = read_pairs(args.data, args.findings_column, args.impression_column)
    if args.limit:
        pairs = pairs[: args.limit]
    findings, refs = [f for f, _ in pairs], [r for _, r in pairs]
    loaded = load(args.model, device)
    preds = generate_all(loaded, findings, args, "generating")
    rows, table = score(preds, refs)
    location = args.model or loaded.source.location
    report: dict[str, Any] = {
        "task": "impression", "created": utc_now(), "model": location, "data": str(args.data), "n": len(pairs),
        "settings": {"num_beams": args.num_beams, "max_length": args.max_length, "prompt": "document 002"},
        "rouge": table, "rouge_mean": {k: v["mean"] for k, v in table.items()},
    }
    baseline_rows = None
    if args.baseline:
        del loaded
        base = load(args.baseline, device)
        base_preds = generate_all(base, findings, args, "generating (baseline)")
        baseline_rows, base_table = score(base_preds, refs)
        report["baseline"] = {"model": args.baseline, "rouge": base_table,
                              "rouge_mean": {k: v["mean"] for k, v in base_table.items()}}
    out = args.out or default_report_dir("impression", location)
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = write_plots(out, rows, baseline_rows)
    write_json(out / "evaluation.json", report)
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as fh:
        for i, (f, r, p, s) in enumerate(zip(findings, refs, preds, rows, strict=True)):
            extra = {"baseline_prediction": base_preds[i], "baseline_rouge": baseline_rows[i]} if baseline_rows else {}
            fh.write(json.dumps({"findings": f, "reference": r, "prediction": p, "rouge": s, **extra}) + "\n")
    (out / "model_card.md").write_text(card_section(report), encoding="utf-8")
    log.info("ROUGE means %s -> %s", {k: round(v, 4) for k, v in report["rouge_mean"].items()}, out)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    evaluate(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
