"""The stress plot: predicted class probabilities against perturbation strength, with a
marker where the decision first flips, shading where the input gate refuses and, on the skin
tab, the decision threshold with its uncertain band. Matplotlib (Agg), rendered to PIL."""

from __future__ import annotations

import io
from typing import Any

TAB_TITLES = {"skin": "skin-lesion", "lung_ct": "lung-CT", "pathology": "PLIP zero-shot"}
MAX_LINES = 9  # zero-shot may have up to 50 labels: plot the ones that ever rank high


def _plotted(result: Any) -> list[str]:
    classes = list(result.classes)
    if len(classes) <= MAX_LINES:
        return classes
    best = {c: max(p[c] for p in result.probabilities) for c in classes}
    return sorted(classes, key=lambda c: -best[c])[:MAX_LINES]


def render(result: Any, width_px: int = 800, height_px: int = 480) -> Any:
    """A PIL RGB image of the plot for a medlab.vision.stress.StressResult."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from PIL import Image

    fig = Figure(figsize=(width_px / 100, height_px / 100), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    xs = list(result.strengths)
    step = abs(xs[1] - xs[0]) if len(xs) > 1 else 1.0
    if result.gates:
        for i, g in enumerate(result.gates):
            if g.flagged:
                ax.axvspan(xs[i] - step / 2, xs[i] + step / 2, color="#d62728", alpha=0.12, lw=0,
                           label="input gate refuses" if i == result.gate_index else None)
    if result.threshold is not None:
        if result.band:
            ax.axhspan(result.band[0], result.band[1], color="#7f7f7f", alpha=0.12, lw=0, label="uncertain band")
        ax.axhline(result.threshold, color="#444444", ls="--", lw=1.2, label=f"threshold {result.threshold:.3g}")
    defer_at = result.info.get("scenario_threshold") if result.tab == "lung_ct" else None
    if defer_at:
        ax.axhline(defer_at, color="#444444", ls=":", lw=1.2, label=f"defers when the top class is below {defer_at:.2g}")
    for name in _plotted(result):
        ax.plot(xs, [p[name] for p in result.probabilities], marker="o", lw=2 if name == result.classes[0] else 1.5,
                label=name)
    flip = result.flip_index
    if flip is not None:
        ax.axvline(xs[flip], color="#9467bd", lw=2, label=f"decision flips: {result.decisions[0]} → {result.decisions[flip]}")
    ax.set_xlim(min(xs) - step / 2, max(xs) + step / 2)
    if xs[0] > xs[-1]:  # e.g. JPEG quality 100 -> 5, brightness 1 -> 0.1: the unperturbed image stays on the left
        ax.invert_xaxis()
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(result.family.axis_label())
    ax.set_ylabel("predicted probability")
    ax.set_title(f"{result.family.title}: {TAB_TITLES.get(result.tab, result.tab)} model", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    buf.seek(0)
    with Image.open(buf) as img:
        return img.convert("RGB")
