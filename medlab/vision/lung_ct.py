"""Lung-CT classification (benign / malignant / normal, IQ-OTH/NCCD style) with Grad-CAM,
document 001's defer-to-expert rule and the input gate.

One entry point takes one file that may be PNG/JPEG or DICOM (DICOM is windowed, lung window
by default). The forward pass and the Grad-CAM are one pass: the CAM's forward gives the
logits, and only the head above the target layer is differentiated."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medlab.core.errors import InputError
from medlab.core.progress import Progress
from medlab.core.registry import get_spec
from medlab.core.specs import ModelSpec
from medlab.vision import classify, gate

log = logging.getLogger(__name__)

KEY = "lung_ct"
PREDICTED = "predicted"
DEFAULT_OPACITY = 0.4  # document 001 blends the heat map at alpha 0.4


@dataclass
class DeferDecision:
    deferred: bool
    scenario: str
    threshold: float
    top_label: str
    top_probability: float

    @property
    def text(self) -> str:
        if self.deferred:
            return (f"⚠️ **Recommend further examination.** The most likely class, *{self.top_label}*, has "
                    f"only {self.top_probability:.1%}, below the {self.threshold:.0%} required in the "
                    f"*{self.scenario}* scenario, so no class is reported (defer to an expert).")
        return (f"**{self.top_label.capitalize()}** ({self.top_probability:.1%}) — above the "
                f"{self.threshold:.0%} required in the *{self.scenario}* scenario.")


def scenarios(spec: ModelSpec | None = None) -> dict[str, float]:
    """Document 001's defer scenarios (name -> top-probability threshold): the one table the
    tab, the evaluation report and the rule below all read."""
    spec = spec or get_spec(KEY)
    return {str(k): float(v) for k, v in dict(spec.params.get("defer_scenarios", {})).items()}


def default_scenario(spec: ModelSpec | None = None) -> str:
    spec = spec or get_spec(KEY)
    return str(spec.params.get("default_scenario", "routine"))


# -- what the tab offers (the UI reads its choices from here) ------------------------------
def windows() -> dict[str, tuple[float, float] | None]:
    """DICOM display windows (name -> (center, width) in HU, None = the file's own)."""
    from medlab.io.imaging import WINDOWS

    return dict(WINDOWS)


def _app_classes(labels: list[str], spec: ModelSpec, taught: bool) -> tuple[list[str], list[str]]:
    """(app class of each model label, app classes in order). A model taught in this app
    ("Teach a classifier") keeps its own class names unless they all map through the spec."""
    try:
        mapped = classify.map_labels(labels, spec)
    except classify.LabelMappingError:
        if not taught:
            raise
        return list(labels), list(labels)
    order = [c for c in spec.labels if c in mapped] if taught else list(spec.labels) or sorted(set(mapped))
    return mapped, order


def _taught_labels() -> list[str] | None:
    """The configured model's labels when it was taught in this app (read from its folder)."""
    import json
    from pathlib import Path

    from medlab.core.errors import MedlabError
    from medlab.core.registry import resolve_source

    try:
        source = resolve_source(KEY)
    except MedlabError:
        return None
    marker = Path(source.location) / "taught.json"
    if not source.is_local or not marker.is_file():
        return None
    try:
        return [str(c) for c in json.loads(marker.read_text(encoding="utf-8"))["classes"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def classes(spec: ModelSpec | None = None) -> list[str]:
    """The classes the tab reports (a taught model's own, else the spec's)."""
    spec = spec or get_spec(KEY)
    taught = _taught_labels()
    return _app_classes(taught, spec, True)[1] if taught else list(spec.labels)


def explain_choices(spec: ModelSpec | None = None) -> list[str]:
    return [PREDICTED, *classes(spec)]


def defer(probabilities: Mapping[str, float], scenario: str | None = None,
          spec: ModelSpec | None = None) -> DeferDecision:
    """Document 001's rule: if the top probability is below the scenario's threshold, the case
    is 'recommended for further examination' instead of getting a class."""
    spec = spec or get_spec(KEY)
    table = scenarios(spec)
    scenario = scenario or default_scenario(spec)
    if scenario not in table:
        raise InputError(f"Unknown scenario {scenario!r}; choose one of {', '.join(table)}.")
    top_label, top_p = max(probabilities.items(), key=lambda kv: kv[1])
    threshold = table[scenario]
    return DeferDecision(top_p < threshold, scenario, threshold, top_label, float(top_p))


@dataclass
class LungResult:
    probabilities: dict[str, float]  # app classes: benign / malignant / normal
    defer: DeferDecision
    overlay: Any  # PIL RGB, same size as the decoded input
    heatmap: np.ndarray  # (H, W) in [0, 1] on the input image, 0 outside what the model saw
    explained_class: str
    gate: gate.GateResult
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly result (the /lung_classify summary output)."""
        return {
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "prediction": None if self.defer.deferred else self.defer.top_label,
            "deferred": self.defer.deferred,
            "defer_text": self.defer.text,
            "scenario": self.defer.scenario,
            "scenario_threshold": self.defer.threshold,
            "explained_class": self.explained_class,
            "gate": self.gate.to_dict(),
            "input": self.info,
        }


def classify_lung(
    path: str | os.PathLike[str],
    window: str = "lung",
    scenario: str | None = None,
    explain: str = PREDICTED,
    opacity: float = DEFAULT_OPACITY,
    progress: Progress | None = None,
    gate_enabled: bool = True,
) -> LungResult:
    """Decode (image or DICOM) -> gate -> preprocess -> forward+Grad-CAM -> postprocess."""
    from medlab.core.loaders import use_model
    from medlab.io.imaging import load_any
    from medlab.vision.gradcam import grad_cam, overlay, place_in_input

    if not path:
        raise InputError("No file was given. Upload a CT slice (PNG/JPEG or DICOM).")
    if not 0.0 <= float(opacity) <= 1.0:
        raise InputError("Opacity must be between 0 and 1.")
    spec = get_spec(KEY)
    if scenario is not None and scenario not in scenarios(spec):
        raise InputError(f"Unknown scenario {scenario!r}; choose one of {', '.join(scenarios(spec))}.")
    decoded = load_any(path, window=window)
    # the gate runs beside the forward + Grad-CAM, not before it
    pending = gate.beside(gate.check_lung_ct, decoded.image, decoded.kind, decoded.info) if gate_enabled else None

    width, height = decoded.image.size
    with use_model(KEY, progress) as loaded:  # a lease: not evicted during the forward and Grad-CAM
        labels = classify.model_labels(loaded.model)
        taught = loaded.source is not None and loaded.source.is_local and \
            os.path.isfile(os.path.join(loaded.source.location, "taught.json"))
        mapped, order = _app_classes(labels, spec, taught)
        class_index = None
        explained = PREDICTED
        if explain and explain != PREDICTED:
            if explain not in order:
                raise InputError(f"Cannot explain {explain!r}; choose '{PREDICTED}' or one of {', '.join(order)}.")
            # explain the model class with the highest share of that app class (usually the only one)
            candidates = [i for i, m in enumerate(mapped) if m == explain]
            if not candidates:
                raise InputError(f"This checkpoint has no class mapped to {explain!r}.")
            class_index, explained = candidates[0], explain

        pixel_values = classify.preprocess(loaded, decoded.image)
        cam = grad_cam(loaded.model, pixel_values, class_index, spec.params.get("target_layer") or None)
        probs = classify.probabilities(cam.logits)
        app_probs = classify.aggregate(list(probs), labels, mapped, order)
        if explained == PREDICTED:
            explained = f"{mapped[cam.class_index]} (predicted)"

        box = classify.visible_box(loaded.image_processor, width, height)
    verdict = pending.result() if pending is not None else gate.switched_off()
    heat = place_in_input(cam.cam, box, width, height)
    image = overlay(decoded.image, heat, float(opacity), box)
    info = {k: v for k, v in decoded.info.items()
            if k in ("format", "width", "height", "modality", "window", "units", "note", "frames", "frame")}
    info["kind"] = decoded.kind
    info["cam_layer"] = cam.layer
    info["model_saw"] = [round(v, 1) for v in box]
    info["model_saw_whole_image"] = box == (0.0, 0.0, float(width), float(height))
    return LungResult(app_probs, defer(app_probs, scenario, spec), image, heat, explained, verdict, info)
