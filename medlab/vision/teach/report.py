"""What a teaching run shows: the evaluation figure (confusion matrix, ROC, calibration) drawn
from medlab.vision.evaluation's report, the summary a student reads, and the Grad-CAM grid
of held-out images (correct and wrong)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def figure(report: dict[str, Any], path: Path) -> Path:
    """One PNG: confusion matrix (counts), one-vs-rest ROC per class, reliability diagram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = report["labels"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    cm = np.asarray(report["confusion_matrix"])
    ax = axes[0]
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels, yticklabels=labels,
           xlabel="predicted", ylabel="true", title=f"Confusion matrix (held out, n={report['n']})")
    ax.tick_params(axis="x", rotation=30)
    ax = axes[1]
    for name in labels:
        curve = report.get("curves", {}).get("roc", {}).get(name)
        if curve:
            ax.plot(curve["fpr"], curve["tpr"], label=f"{name} (AUC {curve['auc']:.2f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, one class vs the rest")
    ax.legend(fontsize=8, loc="lower right")
    ax = axes[2]
    bins = [b for b in report["calibration"]["bins"] if b["count"]]
    ax.bar([b["confidence"] for b in bins], [b["accuracy"] for b in bins], width=0.08, alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="confidence (top probability)", ylabel="accuracy",
           title=f"Calibration (ECE {report['calibration']['ece']:.3f})")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def markdown(summary: dict[str, Any], report: dict[str, Any], notes: list[str]) -> str:
    recall = " · ".join(f"{k} **{v:.2f}**" for k, v in summary["per_class_recall"].items())
    lines = [
        f"### Held-out accuracy **{summary['held_out_accuracy']:.3f}** "
        f"(chance {1 / len(summary['classes']):.2f}; balanced accuracy {report['balanced_accuracy']:.3f})",
        f"{summary['n_train']} images to learn from, {summary['n_test']} held out; per-class recall: {recall}.",
        "",
        "| scenario (document 001) | threshold | deferred | accuracy on the rest |",
        "|---|---|---|---|",
    ]
    for row in report["defer"]:
        acc = "—" if row["accuracy_on_rest"] is None else f"{row['accuracy_on_rest']:.3f}"
        lines.append(f"| {row['scenario']} | {row['threshold']:g} | {row['n_deferred']} "
                     f"({row['deferred_fraction']:.0%}) | {acc} |")
    lines.append("")
    lines += [f"- {n}" for n in notes]
    lines.append(f"\nModel id: `{summary['model_id']}` (not validated; educational only).")
    return "\n".join(lines)


def cam_grid(model: Any, processor: Any, images: list[tuple[Any, int, int, float]], classes: list[str],
             limit: int = 8) -> list[tuple[Any, str]]:
    """Grad-CAM overlays of held-out images: (PIL image, true class, predicted class, p).
    Wrong ones first (they teach the most), then correct ones, up to `limit`."""
    from medlab.vision import classify
    from medlab.vision.gradcam import grad_cam, overlay, place_in_input

    wrong = [t for t in images if t[1] != t[2]]
    right = [t for t in images if t[1] == t[2]]
    take_wrong = wrong[:max(limit // 2, limit - len(right))]
    chosen = take_wrong + right[:limit - len(take_wrong)]
    out = []
    for image, true, pred, p in chosen[:limit]:
        pixels = processor(images=image, return_tensors="pt")["pixel_values"]
        cam = grad_cam(model, pixels, pred)
        w, h = image.size
        box = classify.visible_box(processor, w, h)
        shown = overlay(image, place_in_input(cam.cam, box, w, h), 0.4, box)
        mark = "✓" if true == pred else "✗"
        out.append((shown, f"{mark} true {classes[true]}, predicted {classes[pred]} ({p:.0%})"))
    return out
