"""Evaluate an image classifier on a labelled folder (documents 000 and 001) and write the
report the app's model card shows.

Writes next to the weights (or --out): evaluation.json, plots/*.png and model_card.md.
Metrics: accuracy, per-class precision/recall/F1, sensitivity/specificity/PPV/NPV, per-class
and micro ROC AUC, PR curves and average precision, confusion matrix raw and normalised,
quadratic-weighted kappa, severity-weighted error (a missed malignant case costs 2x),
document 000's threshold rule for the positive class (minimise |FNR - max(FPR, 0.1)|),
document 001's defer-to-expert table (0.3 / 0.5 / 0.7), calibration by confidence bins (ECE)
and the "confidently wrong" cases.

With --key skin|lung_ct the model's labels and the folder names are mapped through the
registry's label_map (e.g. HAM10000's 7 classes -> benign/malignant, probabilities summed),
and the positive class defaults to "malignant"."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from training.common import (
    ImageFolder,
    default_report_dir,
    fmt,
    load_rgb,
    md_table,
    normalise_label,
    pick_device,
    pyplot,
    scan_image_folder,
    seed_everything,
    setup_logging,
    utc_now,
    write_json,
)

log = logging.getLogger("training.evaluate_classifier")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.evaluate_classifier", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="classifier dir (AutoModelForImageClassification) or Hub id")
    p.add_argument("--data", type=Path, required=True, help="labelled folder: <data>/<class>/<images or DICOM>")
    p.add_argument("--split", choices=("all", "train", "val", "test"), default="all",
                   help="evaluate only this split of <model>/splits.json (written by train_classifier)")
    p.add_argument("--splits-file", type=Path, help="default <model>/splits.json")
    p.add_argument("--key", choices=("skin", "lung_ct"), help="map labels with this registry spec's label_map")
    p.add_argument("--positive", help="positive class for the threshold rule (default: malignant if present, "
                                      "else the second class of a binary task)")
    p.add_argument("--out", type=Path, help="report folder (default: the model dir, else MEDLAB_DATA_DIR/reports/<key>)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--bins", type=int, default=10, help="confidence bins for calibration")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


# -- data and prediction ---------------------------------------------------------------------------
def select_split(folder: ImageFolder, split: str, splits_file: Path | None) -> ImageFolder:
    if split == "all":
        return folder
    if splits_file is None or not splits_file.is_file():
        raise SystemExit(f"--split {split} needs a splits.json (train_classifier writes one); not found: {splits_file}")
    wanted = set(json.loads(splits_file.read_text(encoding="utf-8"))[split])
    ids = folder.ids()
    keep = [i for i, s in enumerate(ids) if s in wanted]
    if not keep:
        raise SystemExit(f"no image of split {split!r} found under {folder.root}")
    return folder.subset(keep)


def load_classifier(model: str, device: str) -> tuple[Any, Any]:
    """Same safety rules as the app: safetensors only, no remote code."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(model, trust_remote_code=False)
    net = AutoModelForImageClassification.from_pretrained(model, use_safetensors=True, trust_remote_code=False)
    return net.to(device).eval(), processor


def predict(net: Any, processor: Any, folder: ImageFolder, device: str, batch_size: int) -> np.ndarray:
    """Softmax probabilities over the model's own labels, one row per image."""
    import torch
    from tqdm.auto import tqdm

    rows = []
    paths = list(folder.paths)
    with torch.inference_mode():
        for start in tqdm(range(0, len(paths), batch_size), desc="predicting", unit="batch"):
            images = [load_rgb(p) for p in paths[start : start + batch_size]]
            inputs = processor(images=images, return_tensors="pt")
            logits = net(pixel_values=inputs["pixel_values"].to(device)).logits
            rows.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
    return np.concatenate(rows, axis=0)


def label_space(
    model_labels: list[str], folder_classes: tuple[str, ...], key: str | None,
) -> tuple[list[str], list[list[int]], dict[int, int]]:
    """The labels evaluated, which model columns sum into each, and folder class -> label index."""
    from medlab.core.registry import get_spec

    mapping: dict[str, str] = {}
    if key:
        mapping = {normalise_label(k): v for k, v in get_spec(key).label_map.items()}

    def to_app(name: str) -> str:
        n = normalise_label(name)
        return mapping.get(n, n)

    mapped = [to_app(n) for n in model_labels]
    labels = sorted(set(mapped), key=mapped.index)
    if not key and len(labels) == len(model_labels):
        # no registry mapping: keep the model's own label names in the report
        labels, mapped = list(model_labels), list(model_labels)
        to_app = lambda name: next((m for m in model_labels if normalise_label(m) == normalise_label(name)), name)  # noqa: E731
    groups = [[i for i, m in enumerate(mapped) if m == lab] for lab in labels]
    folder_map: dict[int, int] = {}
    for ci, cname in enumerate(folder_classes):
        target = to_app(cname)
        if target not in labels:
            raise SystemExit(
                f"folder class {cname!r} matches none of the model's labels {labels}"
                + ("" if key else " (use --key to map labels through the registry)")
            )
        folder_map[ci] = labels.index(target)
    return labels, groups, folder_map


# -- outputs -------------------------------------------------------------------------------------
def write_plots(report: dict[str, Any], out: Path) -> list[str]:
    plt = pyplot()
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for old in plots.glob("*.png"):
        old.unlink()
    labels = report["labels"]
    curves = report["curves"]
    written: list[str] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(plots / name, dpi=110)
        plt.close(fig)
        written.append(name)

    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name in labels + ["micro"]:
        c = curves["roc"].get(name)
        if c:
            ax.plot(c["fpr"], c["tpr"], lw=2 if name == "micro" else 1.3, ls="--" if name == "micro" else "-",
                    label=f"{name} (AUC {c['auc']:.3f})")
    bt = report.get("binary_threshold")
    if bt:
        ax.scatter([bt["fpr"]], [bt["tpr"]], color="black", zorder=5,
                   label=f"tuned threshold {bt['threshold']:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curves (one-vs-rest)")
    ax.legend(fontsize=7, loc="lower right")
    save(fig, "01_roc_curves.png")

    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name in labels + ["micro"]:
        c = curves["pr"].get(name)
        if c:
            ax.plot(c["recall"], c["precision"], lw=2 if name == "micro" else 1.3,
                    ls="--" if name == "micro" else "-", label=f"{name} (AP {c['ap']:.3f})")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curves", ylim=(0, 1.05))
    ax.legend(fontsize=7, loc="lower left")
    save(fig, "02_precision_recall.png")

    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, key, title, f in ((axes[0], "confusion_matrix", "Confusion matrix", "d"),
                              (axes[1], "confusion_matrix_normalized", "Normalised by true class", ".2f")):
        m = np.asarray(report[key], dtype=float)
        ax.imshow(m, cmap="Blues", vmin=0)
        ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xlabel="predicted", ylabel="true", title=title)
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
        ax.set_yticklabels(labels, fontsize=7)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, format(m[i, j] if f != "d" else int(m[i, j]), f), ha="center", va="center",
                        color="white" if m[i, j] > m.max() / 2 else "black", fontsize=8)
    save(fig, "03_confusion_matrix.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    names = ["precision", "recall", "f1", "specificity", "npv"]
    width = 0.8 / len(names)
    x = np.arange(len(labels))
    for k, metric in enumerate(names):
        ax.bar(x + k * width, [report["per_class"][lab][metric] for lab in labels], width, label=metric)
    ax.set_xticks(x + width * (len(names) - 1) / 2)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set(ylim=(0, 1.05), title="Per-class metrics")
    ax.legend(fontsize=7, ncol=len(names), loc="lower center")
    save(fig, "04_per_class_metrics.png")

    fig, ax = plt.subplots(figsize=(5, 4.5))
    bins = [b for b in report["calibration"]["bins"] if b["count"]]
    ax.plot([0, 1], [0, 1], color="grey", ls=":", label="perfect calibration")
    ax.bar([(b["lower"] + b["upper"]) / 2 for b in bins], [b["accuracy"] for b in bins],
           width=1 / report["calibration"]["n_bins"] * 0.9, alpha=0.7, label="accuracy in bin")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", color="C3", label="mean confidence")
    ax.set(xlabel="top-class confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.05),
           title=f"Calibration (ECE {report['calibration']['ece']:.3f})")
    ax.legend(fontsize=7)
    save(fig, "05_calibration.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    rows = report["defer"]
    ax.bar([f"{r['scenario']}\n≥{r['threshold']}" for r in rows], [r["deferred_fraction"] for r in rows],
           color="C1", label="fraction deferred")
    ax2 = ax.twinx()
    ax2.plot(range(len(rows)), [r["accuracy_on_rest"] or 0 for r in rows], "o-", color="C0", label="accuracy on the rest")
    ax.set(ylabel="fraction deferred to an expert", title="Defer-to-expert scenarios",
           ylim=(0, max(0.1, max(r["deferred_fraction"] for r in rows) * 1.2)))
    ax2.set(ylabel="accuracy on kept cases", ylim=(0, 1.05))
    ax.tick_params(axis="x", labelsize=7)
    save(fig, "06_defer_scenarios.png")
    return written


def card_section(report: dict[str, Any]) -> str:
    """Markdown appended to the app's model card."""
    labels = report["labels"]
    lines = [
        "### Evaluation report",
        "",
        f"Evaluated on **{report['n']}** images from `{report['data']}` (split: {report['split']}) on "
        f"{report['created'][:10]} with `python -m training.evaluate_classifier`. Class counts: "
        + ", ".join(f"{k} {v}" for k, v in report["class_counts"].items()) + ".",
        "",
        md_table(
            ["accuracy", "balanced acc.", "macro F1", "micro AUC", "κ (quadratic)", "severity-weighted error"],
            [[report["accuracy"], report["balanced_accuracy"], report["macro_f1"], report["micro_auc"],
              report["kappa_quadratic"], report["severity_weighted_error"]]],
        ),
        "",
        md_table(
            ["class", "precision", "recall (sens.)", "specificity", "PPV", "NPV", "F1", "AUC", "AP", "n"],
            [[lab, *(report["per_class"][lab][k] for k in ("precision", "recall", "specificity", "ppv", "npv", "f1", "auc", "ap",
                                                           "support"))]
             for lab in labels],
        ),
    ]
    bt = report.get("binary_threshold")
    if bt:
        at = bt["metrics_at_threshold"]
        lines += [
            "",
            f"**Tuned threshold for {bt['positive_label']}: {bt['threshold']:.4f}** (TPR {bt['tpr']:.3f}, "
            f"FPR {bt['fpr']:.3f}; rule: {bt['rule']}). At this threshold: accuracy {at['accuracy']:.3f}, "
            f"precision {at['precision']:.3f}, recall {at['recall']:.3f}, F1 {at['f1']:.3f}. "
            "Document 000 found 0.3677 (TPR 0.897, FPR 0.068) for its DenseNet121.",
        ]
    lines += [
        "",
        "**Defer to an expert** when the top probability is below the scenario threshold (document 001):",
        "",
        md_table(["scenario", "threshold", "deferred", "accuracy on the rest"],
                 [[r["scenario"], r["threshold"], f"{r['n_deferred']} ({r['deferred_fraction']:.1%})", r["accuracy_on_rest"]]
                  for r in report["defer"]]),
        "",
        f"Calibration: expected calibration error {report['calibration']['ece']:.3f} over "
        f"{report['calibration']['n_bins']} confidence bins. Confidently wrong (≥ 0.8) cases: "
        f"{len(report['confidently_wrong'])}"
        + (" — e.g. " + "; ".join(f"`{c['id']}` {c['true']}→{c['predicted']} ({c['confidence']:.2f})"
                                   for c in report["confidently_wrong"][:3]) if report["confidently_wrong"] else "")
        + ".",
        "",
        "_Numbers on a small or easy test set overstate real performance; this is not a clinical validation._",
    ]
    return "\n".join(lines) + "\n"


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from medlab.vision.evaluation import evaluate_predictions, merge_columns

    seed_everything(args.seed)
    device = pick_device(args.device)
    folder = scan_image_folder(args.data)
    model_dir = Path(args.model).expanduser()
    splits_file = args.splits_file or (model_dir / "splits.json")
    folder = select_split(folder, args.split, splits_file)
    net, processor = load_classifier(args.model, device)
    model_labels = [net.config.id2label[i] for i in range(net.config.num_labels)]
    labels, groups, folder_map = label_space(model_labels, folder.classes, args.key)
    probs = merge_columns(predict(net, processor, folder, device, args.batch_size), groups)
    y_true = np.asarray([folder_map[t] for t in folder.targets])

    positive = args.positive
    if positive is None:
        if args.key:
            from medlab.core.registry import get_spec

            positive = get_spec(args.key).params.get("positive_label", "malignant")
        positive = positive if positive in labels else ("malignant" if "malignant" in labels else None)
    elif normalise_label(positive) in labels and positive not in labels:
        positive = normalise_label(positive)
    report = evaluate_predictions(y_true, probs, labels, positive_label=positive, ids=folder.ids(),
                                  n_bins=args.bins, include_curves=True)
    report.update(created=utc_now(), model=str(args.model), data=str(folder.root), split=args.split,
                  key=args.key, model_labels=model_labels)
    out = args.out or default_report_dir(args.key, args.model)
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = [] if args.no_plots else write_plots(report, out)
    curves = report.pop("curves")
    write_json(out / "evaluation.json", report)
    (out / "model_card.md").write_text(card_section(report), encoding="utf-8")
    np.savez_compressed(out / "predictions.npz", y_true=y_true, probs=probs, ids=np.asarray(folder.ids()))
    report["curves"] = curves
    log.info("accuracy %s, macro F1 %s, micro AUC %s, threshold %s -> %s", fmt(report["accuracy"]),
             fmt(report["macro_f1"]), fmt(report["micro_auc"]),
             fmt(report.get("binary_threshold", {}).get("threshold")), out)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    evaluate(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
