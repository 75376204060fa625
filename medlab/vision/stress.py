"""The Failure lab: run a tab's model over a sweep of perturbation strengths and report where
its decision flips and where the input gate starts to refuse.

One sweep = the decoded upload perturbed at `steps` strengths (medlab.vision.perturb; step 0
is the unperturbed image), preprocessed exactly as the tab does (classify.preprocess per
image), and ONE batched forward for all steps under the model lease. The gate checks every
step too, with its object recogniser batched once, in a thread beside the forward."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from medlab.core.errors import InputError
from medlab.core.progress import Progress
from medlab.core.registry import get_spec
from medlab.vision import classify, gate, perturb
from medlab.vision.perturb import Family


@dataclass
class StressResult:
    tab: str  # "skin", "lung_ct" or "pathology"
    family: Family
    strengths: list[float]
    classes: list[str]  # the plotted classes, in order
    probabilities: list[dict[str, float]]  # per step: class -> probability
    decisions: list[str]  # per step: what the tab would answer
    gates: list[gate.GateResult] | None  # per step; None when the tab has no input gate
    images: list[Any]  # the perturbed images (PIL RGB), step 0 = unperturbed
    threshold: float | None = None  # skin: the malignant threshold
    band: tuple[float, float] | None = None  # skin: the uncertain band
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def flip_index(self) -> int | None:
        """First step whose decision differs from the unperturbed image's (None: never flips)."""
        return next((i for i, d in enumerate(self.decisions) if d != self.decisions[0]), None)

    @property
    def gate_index(self) -> int | None:
        """First step the input gate flags as off-domain (None: never, or no gate)."""
        if not self.gates:
            return None
        return next((i for i, g in enumerate(self.gates) if g.flagged), None)

    def strength_at(self, index: int | None) -> float | None:
        return None if index is None else self.strengths[index]

    def summary(self) -> dict[str, Any]:
        """JSON-friendly result (the /*_stress summary output)."""
        return {
            "tab": self.tab,
            "family": self.family.to_dict(),
            "strengths": self.strengths,
            "classes": self.classes,
            "probabilities": [{k: round(v, 6) for k, v in p.items()} for p in self.probabilities],
            "decisions": self.decisions,
            "flip_index": self.flip_index,
            "flip_strength": self.strength_at(self.flip_index),
            "gate_verdicts": [g.verdict for g in self.gates] if self.gates is not None else None,
            "gate_refuses_from_index": self.gate_index,
            "gate_refuses_from_strength": self.strength_at(self.gate_index),
            "threshold": self.threshold,
            "uncertain_band": list(self.band) if self.band else None,
            "input": self.info,
        }


def _batch(loaded: Any, images: Sequence[Any]) -> Any:
    """The tab's own preprocessing of each image, stacked into one (n, C, H, W) tensor."""
    import torch

    return torch.cat([classify.preprocess(loaded, image) for image in images], dim=0)


def _rows(logits: Any) -> list[Any]:
    return [classify.probabilities(logits[i:i + 1]) for i in range(logits.shape[0])]


def _info(decoded: Any, images: Sequence[Any]) -> dict[str, Any]:
    info = {k: v for k, v in decoded.info.items() if k in ("format", "width", "height", "modality", "window", "note")}
    info["kind"] = decoded.kind
    info["swept_size"] = list(images[0].size)  # smaller than the upload when it exceeded perturb.SWEEP_MAX_SIDE
    return info


# -- skin -------------------------------------------------------------------------------------
def stress_skin(path: str | os.PathLike[str] | None, family: str = perturb.DEFAULT_FAMILY, steps: int = 8,
                progress: Progress | None = None, gate_enabled: bool = True) -> StressResult:
    from medlab.core.loaders import use_model
    from medlab.io.imaging import load_any
    from medlab.vision import skin

    if not path:
        raise InputError("No image was given. Upload a photo of a skin lesion, then run the stress test.")
    fam = perturb.get_family(family)
    decoded = load_any(path)
    strengths, images = perturb.sweep(decoded.image, fam, steps)
    spec = get_spec(skin.KEY)
    pending = gate.beside_many(gate.check_skin, images) if gate_enabled else None
    with use_model(skin.KEY, progress) as loaded:
        labels = classify.model_labels(loaded.model)
        classify.map_labels(labels, spec)
        logits = classify.forward(loaded, _batch(loaded, images))
    gates = pending.result() if pending is not None else None
    threshold, source = skin.decision_threshold(spec)
    band = float(spec.params.get("uncertain_band", 0.1))
    probabilities, decisions = [], []
    for probs in _rows(logits):
        p = skin.malignant_probability(probs, labels, spec)
        decision = skin.decide(p, threshold, band)
        probabilities.append({"malignant": p, "benign": 1.0 - p})
        decisions.append(decision.label)
    info = _info(decoded, images) | {"threshold_source": source}
    return StressResult("skin", fam, strengths, ["malignant", "benign"], probabilities, decisions, gates, images,
                        threshold, decision.band, info)


# -- lung CT ----------------------------------------------------------------------------------
def stress_lung(path: str | os.PathLike[str] | None, family: str = perturb.DEFAULT_FAMILY, steps: int = 8,
                window: str = "lung", scenario: str | None = None, progress: Progress | None = None,
                gate_enabled: bool = True) -> StressResult:
    from medlab.core.loaders import use_model
    from medlab.io.imaging import load_any
    from medlab.vision import lung_ct

    if not path:
        raise InputError("No file was given. Upload a CT slice (PNG/JPEG or DICOM), then run the stress test.")
    fam = perturb.get_family(family)
    spec = get_spec(lung_ct.KEY)
    if scenario is not None and scenario not in lung_ct.scenarios(spec):
        raise InputError(f"Unknown scenario {scenario!r}; choose one of {', '.join(lung_ct.scenarios(spec))}.")
    decoded = load_any(path, window=window)
    strengths, images = perturb.sweep(decoded.image, fam, steps)
    # Every step is gated as the tab gates this upload (a DICOM by its header, which a
    # perturbation does not change: the gate never refuses a perturbed DICOM).
    pending = gate.beside_many(gate.check_lung_ct, images, decoded.kind, decoded.info) if gate_enabled else None
    with use_model(lung_ct.KEY, progress) as loaded:
        labels = classify.model_labels(loaded.model)
        taught = loaded.source is not None and loaded.source.is_local and \
            os.path.isfile(os.path.join(loaded.source.location, "taught.json"))
        mapped, order = lung_ct._app_classes(labels, spec, taught)
        logits = classify.forward(loaded, _batch(loaded, images))
    gates = pending.result() if pending is not None else None
    probabilities, decisions = [], []
    for probs in _rows(logits):
        app = classify.aggregate(list(probs), labels, mapped, order)
        verdict = lung_ct.defer(app, scenario, spec)
        probabilities.append(app)
        decisions.append("defer" if verdict.deferred else verdict.top_label)
    info = _info(decoded, images) | {"scenario": verdict.scenario, "scenario_threshold": verdict.threshold}
    return StressResult("lung_ct", fam, strengths, list(order), probabilities, decisions, gates, images, info=info)


# -- any batched predictor (pathology zero-shot) ------------------------------------------------
BatchPredictor = Callable[[Sequence[Any]], list[dict[str, float]]]


def stress_predictor(path: Any, predict: BatchPredictor, family: str = perturb.DEFAULT_FAMILY, steps: int = 8,
                     tab: str = "pathology", info: dict[str, Any] | None = None) -> StressResult:
    """A sweep through a batched predictor of another task layer (images -> one {class: p}
    per image, in one call), composed by the caller so that vision imports no other task:
    the pathology tab passes medlab.retrieval.zero_shot.batch_predictor (prompts encoded once,
    the copies in one batch). The decision per step is the top class; there is no input gate."""
    from PIL import Image

    from medlab.io.imaging import load_image

    if path is None or (not isinstance(path, Image.Image) and not path):
        raise InputError("Upload an image, then run the stress test.")
    fam = perturb.get_family(family)
    image = path.convert("RGB") if isinstance(path, Image.Image) else load_image(path).image
    strengths, images = perturb.sweep(image, fam, steps)
    probabilities = predict(images)
    if len(probabilities) != len(images):
        raise ValueError(f"the predictor returned {len(probabilities)} results for {len(images)} images")
    classes = list(probabilities[0])
    decisions = [max(p, key=p.get) for p in probabilities]
    meta = {**(info or {}), "width": image.size[0], "height": image.size[1], "swept_size": list(images[0].size)}
    return StressResult(tab, fam, strengths, classes, probabilities, decisions, None, images, info=meta)
