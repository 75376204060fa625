"""Skin-lesion classification: malignant probability, decision at a tuned threshold with an
"uncertain" band, and the input gate.

Any AutoModelForImageClassification works: a binary benign/malignant model, or a multi-class
dermatology model (e.g. HAM10000's 7 classes) whose labels the spec maps to benign/malignant;
the malignant probability is then the sum of the probabilities of the malignant classes."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from medlab.core.errors import InputError
from medlab.core.progress import Progress
from medlab.core.registry import get_spec
from medlab.core.specs import ModelSpec
from medlab.vision import classify, gate

log = logging.getLogger(__name__)

KEY = "skin"

@dataclass
class Decision:
    label: str  # "malignant", "benign" or "uncertain"
    lean: str  # which side of the threshold the probability is on
    threshold: float
    band: tuple[float, float]

    def text(self, probability: float) -> str:
        lo, hi = self.band
        if self.label == "uncertain":
            return (f"**Uncertain** — the malignant probability {probability:.1%} is within the band "
                    f"{lo:.1%}–{hi:.1%} around the threshold {self.threshold:.1%} (leaning {self.lean}). "
                    "Too close to call: this is exactly the case to show a clinician.")
        word = "above" if self.label == "malignant" else "below"
        return (f"**{self.label.capitalize()}** — the malignant probability {probability:.1%} is {word} "
                f"the threshold {self.threshold:.1%} and outside the uncertain band ({lo:.1%}–{hi:.1%}).")


@dataclass
class SkinResult:
    malignant_probability: float
    decision: Decision
    threshold_source: str
    class_probabilities: dict[str, float]  # the checkpoint's own classes
    gate: gate.GateResult
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly result (the /skin_classify summary output)."""
        return {
            "malignant_probability": round(self.malignant_probability, 6),
            "decision": self.decision.label,
            "leaning": self.decision.lean,
            "threshold": self.decision.threshold,
            "threshold_source": self.threshold_source,
            "uncertain_band": [round(v, 6) for v in self.decision.band],
            "class_probabilities": {k: round(v, 6) for k, v in self.class_probabilities.items()},
            "gate": self.gate.to_dict(),
            "input": self.info,
        }


# -- threshold and decision --------------------------------------------------------------------
def decision_threshold(spec: ModelSpec | None = None) -> tuple[float, str]:
    """The tuned threshold: the evaluation report next to the weights wins over the spec."""
    from medlab.core.cards import evaluation_report

    spec = spec or get_spec(KEY)
    report = evaluation_report(spec.key) or {}
    try:
        value = float(report["binary_threshold"]["threshold"])
        if 0.0 < value < 1.0:
            return value, "evaluation report next to the weights (evaluation.json)"
    except (KeyError, TypeError, ValueError):
        pass
    return float(spec.params["threshold"]), "registry spec (document 000's ROC-tuned 0.3677)"


def decide(probability: float, threshold: float, band: float) -> Decision:
    """Malignant at/above threshold+band, benign below threshold-band, else uncertain."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError("probability must be in [0, 1]")
    lo, hi = max(0.0, threshold - band), min(1.0, threshold + band)
    lean = "malignant" if probability >= threshold else "benign"
    if lo <= probability <= hi and band > 0:
        return Decision("uncertain", lean, threshold, (lo, hi))
    return Decision(lean, lean, threshold, (lo, hi))


def malignant_probability(probs: Any, labels: list[str], spec: ModelSpec) -> float:
    """Sum of the probabilities of classes the spec maps to the positive label."""
    positive = spec.params.get("positive_label", "malignant")
    mapped = classify.map_labels(labels, spec)
    if positive not in mapped and len(probs) > 1:
        raise classify.LabelMappingError(
            spec.key, f"none of the checkpoint's labels {labels} maps to {positive!r}.",
            f"map at least one label to {positive!r} in the '{spec.key}' spec's label_map.")
    order = list(spec.labels) or sorted(set(mapped))
    return float(classify.aggregate(list(probs), labels, mapped, order)[positive])


EXPLANATION = (
    "**What the threshold means.** The model outputs a probability that the lesion is malignant. "
    "We call it *malignant* from **{t:.1%}**, not 50%: missing a melanoma (a false negative) costs "
    "far more than an extra check of a harmless mole (a false positive), so the threshold is set low "
    "on purpose. Document 000 picked 0.3677 on its ROC curve (minimising |FNR − max(FPR, 0.1)|), "
    "where it caught 89% of malignant lesions and flagged 7% of benign ones. Probabilities within "
    "±{b:.0%} of the threshold are reported as **uncertain**. Threshold source: {src}."
)


def explanation(threshold: float, band: float, source: str) -> str:
    return EXPLANATION.format(t=threshold, b=band, src=source)


# -- the pipeline ------------------------------------------------------------------------------
def classify_skin(path: str | os.PathLike[str], progress: Progress | None = None,
                  gate_enabled: bool = True) -> SkinResult:
    """Decode -> gate -> preprocess -> forward -> postprocess for one uploaded image."""
    from medlab.core.loaders import use_model
    from medlab.io.imaging import load_any

    if not path:
        raise InputError("No image was given. Upload a photo of a skin lesion.")
    decoded = load_any(path)
    spec = get_spec(KEY)
    pending = gate.beside(gate.check_skin, decoded.image) if gate_enabled else None
    with use_model(KEY, progress) as loaded:  # a lease: not evicted during the forward
        labels = classify.model_labels(loaded.model)
        classify.map_labels(labels, spec)  # fail before computing anything if the spec does not fit
        pixel_values = classify.preprocess(loaded, decoded.image)
        logits = classify.forward(loaded, pixel_values)
    probs = classify.probabilities(logits)
    verdict = pending.result() if pending is not None else gate.switched_off()
    p_malignant = malignant_probability(probs, labels, spec)
    threshold, source = decision_threshold(spec)
    decision = decide(p_malignant, threshold, float(spec.params.get("uncertain_band", 0.1)))
    per_class = dict(zip(labels, (float(p) for p in probs), strict=False)) if len(probs) > 1 else {
        labels[0]: float(probs[0])}
    info = {k: v for k, v in decoded.info.items() if k in ("format", "width", "height", "note", "modality")}
    return SkinResult(p_malignant, decision, source, per_class, verdict, info)
