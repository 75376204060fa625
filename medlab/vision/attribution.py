"""A second explanation beside Grad-CAM: Captum occlusion sensitivity (and, optionally,
Integrated Gradients), and how much the maps agree.

- Occlusion (captum.attr.Occlusion): the model input is cut into a `grid` x `grid` set of
  windows (window = stride = side / grid, so the windows tile the input without overlap);
  each window in turn is replaced by a baseline (the input's per-channel mean colour) and
  the drop in the explained class's probability is that window's value. The covered copies
  go through the model in batches (`perturbations_per_eval`), under no_grad; the
  unperturbed probability is the one the Grad-CAM pass already computed, so occlusion costs
  exactly grid*grid images in ceil(grid*grid / batch) forwards. On 2 CPU cores a batch of
  n images costs about n / 1.25 single forwards (bench section 12), hence the default grid
  of 2 (4 covered copies, one batch): the only grid within the 6x-a-forward budget; 3x3 and
  4x4 are offered and their cost is stated.
- Integrated Gradients (captum.attr.IntegratedGradients): the gradient of the class
  probability along a straight path from the baseline to the input, times the difference
  (n_steps forwards AND backwards through the whole model): a pixel-level map, much dearer,
  so it is optional and off by default.
- Agreement: Spearman rank correlation of two maps at the same resolution, and the overlap
  of their top-10% regions, with a verdict (AGREE / PARTLY / DISAGREE thresholds below).

No gradio here; torch is imported inside the functions."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medlab.core.errors import InputError
from medlab.core.progress import Progress, no_progress

log = logging.getLogger(__name__)


# -- the methods, as data (the UI reads this table) -------------------------------------------
@dataclass(frozen=True)
class Method:
    key: str
    name: str
    measures: str  # one line: what the map means
    defaults: dict[str, Any] = field(default_factory=dict)
    cost: str = ""  # in plain forwards, from bench section 12
    optional: bool = False


METHODS: dict[str, Method] = {m.key: m for m in (
    Method("gradcam", "Grad-CAM",
           "how strongly the last feature maps, weighted by the class score's gradient, respond in each region "
           "(what the model's own features point at).",
           {"layer": "last conv stage / last block's norm"}, "0.7-1.2x a forward (bench section 12)"),
    Method("occlusion", "Occlusion sensitivity",
           "how much the class probability drops when a window of the image is covered by its mean colour "
           "(what the decision actually depends on, window by window).",
           {"grid": 2, "baseline": "per-channel mean colour", "batch": 8}, "grid x grid covered copies, batched"),
    Method("integrated_gradients", "Integrated Gradients",
           "the gradient of the class probability summed along a path from the mean-colour image to the input, "
           "per pixel (fine-grained, often noisy).",
           {"n_steps": 8, "internal_batch_size": 4}, "about n_steps forwards + backwards through the whole model",
           optional=True),
)}
GRIDS = (2, 3, 4)  # windows per side offered; the default is METHODS["occlusion"].defaults["grid"]
DEFAULT_GRID = int(METHODS["occlusion"].defaults["grid"])
MAX_BATCH = int(METHODS["occlusion"].defaults["batch"])

# Verdict thresholds (Spearman rho and top-10% overlap of two maps).
AGREE_RHO, AGREE_OVERLAP = 0.5, 0.5
DISAGREE_RHO, DISAGREE_OVERLAP = 0.2, 0.5
TOP_FRACTION = 0.10
COMPARE_SIDE = 64  # maps are compared after an area resize to at most this many pixels per side


# -- the probability the maps explain -----------------------------------------------------------
def class_probability(logits: Any) -> Any:
    """(B, C) logits -> (B, C) probabilities: softmax, or the sigmoid of a single logit (as
    medlab.vision.classify.probabilities does for one image)."""
    import torch

    logits = logits.float()
    return torch.sigmoid(logits) if logits.shape[-1] == 1 else torch.softmax(logits, dim=-1)


class CountingForward:
    """The model as Captum's forward function: pixel_values (B, 3, H, W) -> probabilities,
    under no_grad (or with gradients, for IG). Records the batch size of every model call, and
    answers the unperturbed input with the probabilities already known (from the Grad-CAM
    pass) instead of running the model again."""

    def __init__(self, model: Any, known_input: Any = None, known_output: Any = None,
                 on_batch: Callable[[int], None] | None = None, grad: bool = False) -> None:
        self.model, self.known_input, self.known_output = model, known_input, known_output
        self.on_batch, self.grad = on_batch, grad
        self.batches: list[int] = []

    def __call__(self, pixel_values: Any) -> Any:
        import torch

        from medlab.vision.classify import logits_of

        if self.known_output is not None and pixel_values is self.known_input:
            return self.known_output
        self.batches.append(int(pixel_values.shape[0]))
        if self.on_batch is not None:
            self.on_batch(len(self.batches))
        context = torch.enable_grad() if self.grad else torch.no_grad()
        with context:
            return class_probability(logits_of(self.model(pixel_values=pixel_values)))


# -- occlusion ------------------------------------------------------------------------------
@dataclass
class OcclusionResult:
    heat: np.ndarray  # (H, W) float32: probability drop when the window holding the pixel is covered
    grid: int
    window: tuple[int, int]
    batches: list[int]  # images per model call

    @property
    def images(self) -> int:
        return sum(self.batches)


def occlusion_plan(height: int, width: int, grid: int, max_batch: int = MAX_BATCH) -> tuple[tuple[int, int], int, int]:
    """(window (h, w), number of covered copies, copies per batch) for a `grid` x `grid` tiling."""
    if int(grid) not in GRIDS:
        raise InputError(f"Occlusion grid must be one of {', '.join(map(str, GRIDS))} windows per side, not {grid!r}.")
    window = (math.ceil(height / grid), math.ceil(width / grid))
    rows = math.ceil((height - window[0]) / window[0]) + 1
    cols = math.ceil((width - window[1]) / window[1]) + 1
    positions = rows * cols
    n_batches = math.ceil(positions / max(1, int(max_batch)))
    return window, positions, math.ceil(positions / n_batches)  # even batches: 9 -> 5 + 4, not 8 + 1


def mean_baseline(pixel_values: Any) -> Any:
    """The input's per-channel mean, expanded to the input's shape (Captum's baseline)."""
    return pixel_values.mean(dim=(-2, -1), keepdim=True).expand_as(pixel_values).contiguous()


def occlusion(model: Any, pixel_values: Any, class_index: int, grid: int = DEFAULT_GRID,
              known_probabilities: Any = None, max_batch: int = MAX_BATCH,
              progress: Progress | None = None) -> OcclusionResult:
    """Occlusion sensitivity of `class_index` for one image (1, 3, H, W): value of a pixel =
    p(x) - p(x with the pixel's window replaced by the mean colour)."""
    from captum.attr import Occlusion

    progress = progress or no_progress
    height, width = int(pixel_values.shape[-2]), int(pixel_values.shape[-1])
    window, positions, per_eval = occlusion_plan(height, width, grid, max_batch)
    n_batches = math.ceil(positions / per_eval) + (known_probabilities is None)  # + Captum's own unperturbed pass
    forward = CountingForward(
        model, pixel_values, known_probabilities,
        on_batch=lambda i: progress(i / (n_batches + 1),
                                    f"Occlusion: batch {i} of {n_batches} ({positions} covered copies)"))
    attr = Occlusion(forward).attribute(
        pixel_values, sliding_window_shapes=(int(pixel_values.shape[1]), *window), strides=(1, *window),
        baselines=mean_baseline(pixel_values), target=int(class_index), perturbations_per_eval=per_eval)
    heat = attr[0].detach().float().mean(dim=0).cpu().numpy().astype(np.float32)  # equal over channels
    return OcclusionResult(heat, int(grid), window, forward.batches)


# -- Integrated Gradients ------------------------------------------------------------------------
@dataclass
class IGResult:
    heat: np.ndarray  # (H, W) float32 >= 0: |attribution| summed over channels, lightly smoothed
    n_steps: int
    batches: list[int]
    delta: float  # Captum's convergence delta: sum(attributions) - (p(x) - p(baseline))


def integrated_gradients(model: Any, pixel_values: Any, class_index: int, n_steps: int | None = None,
                         internal_batch_size: int | None = None) -> IGResult:
    """Integrated Gradients of the class probability from the mean-colour baseline."""
    import cv2
    import torch
    from captum.attr import IntegratedGradients

    defaults = METHODS["integrated_gradients"].defaults
    n_steps = int(n_steps or defaults["n_steps"])
    internal_batch_size = int(internal_batch_size or defaults["internal_batch_size"])
    for p in model.parameters():  # gradients w.r.t. the input only
        if p.requires_grad:
            p.requires_grad_(False)
    forward = CountingForward(model, grad=True)
    with torch.enable_grad():
        attr, delta = IntegratedGradients(forward).attribute(
            pixel_values.clone().requires_grad_(True), baselines=mean_baseline(pixel_values), target=int(class_index),
            n_steps=n_steps, internal_batch_size=internal_batch_size, return_convergence_delta=True)
    heat = attr[0].detach().float().abs().sum(dim=0).cpu().numpy().astype(np.float32)
    sigma = max(1.0, heat.shape[0] / 112)
    heat = cv2.GaussianBlur(heat, (0, 0), sigma)
    return IGResult(heat, n_steps, forward.batches, float(delta.detach().abs().max()))


# -- agreement ----------------------------------------------------------------------------------
def _compare_size(a: np.ndarray) -> np.ndarray:
    import cv2

    h, w = a.shape
    scale = min(1.0, COMPARE_SIDE / max(h, w))
    if scale >= 1.0:
        return a.astype(np.float64)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(a.astype(np.float32), size, interpolation=cv2.INTER_AREA).astype(np.float64)


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation of two maps of one shape (ties get average ranks); None when
    either map is constant (no ranking to compare)."""
    from scipy.stats import spearmanr

    if a.shape != b.shape:
        raise ValueError(f"maps of different shapes {a.shape} and {b.shape}")
    x, y = np.ravel(a), np.ravel(b)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def top_region(a: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """Pixels at or above the map's (1 - fraction) quantile (ties at the threshold included)."""
    return np.asarray(a >= np.quantile(a, 1.0 - fraction))


def top_overlap(a: np.ndarray, b: np.ndarray, fraction: float = TOP_FRACTION) -> float | None:
    """Overlap coefficient |A ∩ B| / min(|A|, |B|) of the two maps' top regions: 1 when one
    lies inside the other (a coarse occlusion cell may hold all of Grad-CAM's top 10%), 0 when
    disjoint. None when either map is constant."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    ta, tb = top_region(a, fraction), top_region(b, fraction)
    return float((ta & tb).sum() / min(ta.sum(), tb.sum()))


@dataclass(frozen=True)
class Agreement:
    first: str
    second: str
    rho: float | None
    overlap: float | None
    verdict: str  # "agree", "partly agree", "disagree", "cannot compare"

    def to_dict(self) -> dict[str, Any]:
        return {"maps": [self.first, self.second],
                "spearman": None if self.rho is None else round(self.rho, 4),
                "top10_overlap": None if self.overlap is None else round(self.overlap, 4),
                "verdict": self.verdict}


def verdict(rho: float | None, overlap: float | None) -> str:
    if rho is None or overlap is None:
        return "cannot compare"
    if rho >= AGREE_RHO and overlap >= AGREE_OVERLAP:
        return "agree"
    if rho < DISAGREE_RHO and overlap < DISAGREE_OVERLAP:
        return "disagree"
    return "partly agree"


def agreement(first: np.ndarray, second: np.ndarray, names: tuple[str, str] = ("gradcam", "occlusion")) -> Agreement:
    """How far two maps of one shape agree (compared at most COMPARE_SIDE px per side)."""
    if is_flat(first) or is_flat(second):
        return Agreement(names[0], names[1], None, None, "cannot compare")
    a, b = _compare_size(first), _compare_size(second)
    rho, overlap = spearman(a, b), top_overlap(a, b)
    return Agreement(names[0], names[1], rho, overlap, verdict(rho, overlap))


FLAT = 1e-6  # a map whose values span less than this (probability units) is flat: float noise


def is_flat(heat: np.ndarray) -> bool:
    return heat.size == 0 or float(np.ptp(np.nan_to_num(heat))) < FLAT


def for_display(heat: np.ndarray) -> np.ndarray:
    """A signed occlusion map -> [0, 1], min-max per image like Grad-CAM's: 1 = the window
    whose covering lowers the probability most, 0 = the one that lowers it least (or raises
    it most). All zero when the map is flat. The absolute drops are in the summary."""
    heat = np.nan_to_num(heat.astype(np.float32))
    if is_flat(heat):
        return np.zeros_like(heat)
    return (heat - heat.min()) / float(np.ptp(heat))


# -- the pipeline for a tab -----------------------------------------------------------------------
@dataclass
class ExplainResult:
    key: str
    explained_class: str
    probability: float
    gradcam_overlay: Any  # PIL RGB, the input's size
    occlusion_overlay: Any
    ig_overlay: Any | None
    gradcam: np.ndarray  # model-input resolution, [0, 1]
    occlusion: OcclusionResult
    ig: IGResult | None
    agreements: list[Agreement]
    info: dict[str, Any] = field(default_factory=dict)
    gate: Any = None  # medlab.vision.gate.GateResult

    def summary(self) -> dict[str, Any]:
        occ = self.occlusion
        out = {"explained_class": self.explained_class, "probability": round(self.probability, 6),
               "occlusion": {"grid": occ.grid, "window_px": list(occ.window), "covered_copies": occ.images,
                             "batches": occ.batches, "baseline": "per-channel mean colour",
                             "largest_drop": round(float(occ.heat.max()), 6),
                             "largest_rise": round(float(max(0.0, -occ.heat.min())), 6)},
               "agreement": [a.to_dict() for a in self.agreements], "input": self.info,
               "gate": None if self.gate is None else self.gate.to_dict()}
        if self.ig is not None:
            out["integrated_gradients"] = {"n_steps": self.ig.n_steps, "batches": self.ig.batches,
                                           "convergence_delta": round(self.ig.delta, 6)}
        return out


def explain(key: str, path: str | os.PathLike[str], grid: int = DEFAULT_GRID, with_ig: bool = False,
            opacity: float = 0.4, window: str = "lung", progress: Progress | None = None) -> ExplainResult:
    """Decode -> preprocess -> Grad-CAM (one pass: also the probabilities) -> occlusion
    (-> IG) -> overlays on the input and the agreement of the maps, for the tab's model `key`
    ("skin" or "lung_ct"), explaining the model's predicted class."""
    from medlab.core.loaders import use_model
    from medlab.io.imaging import load_any
    from medlab.vision import classify, gate
    from medlab.vision.gradcam import grad_cam, overlay, place_in_input

    progress = progress or no_progress
    if not path:
        raise InputError("No image was given. Upload an image first, then ask for the second explanation.")
    if not 0.0 <= float(opacity) <= 1.0:
        raise InputError("Opacity must be between 0 and 1.")
    occlusion_plan(8, 8, int(grid))  # refuse a bad grid before any work
    from medlab.core.registry import get_spec

    spec = get_spec(key)
    decoded = load_any(path, window=window) if key == "lung_ct" else load_any(path)
    if key != "lung_ct" and decoded.kind == "dicom":
        raise InputError("This tab takes a photo (PNG/JPEG), not a DICOM file.")
    # the input gate, beside the model as in classify: an off-domain input is explained, but flagged
    pending = (gate.beside(gate.check_lung_ct, decoded.image, decoded.kind, decoded.info) if key == "lung_ct"
               else gate.beside(gate.check_skin, decoded.image))
    width, height = decoded.image.size
    with use_model(key, progress) as loaded:
        labels = classify.model_labels(loaded.model)
        pixel_values = classify.preprocess(loaded, decoded.image)
        progress(0.05, "Grad-CAM…")
        cam = grad_cam(loaded.model, pixel_values, None, spec.params.get("target_layer") or None)
        probs = class_probability(cam.logits)
        index = cam.class_index
        occ = occlusion(loaded.model, pixel_values, index, int(grid), probs.to(pixel_values.device),
                        progress=lambda f, m: progress(0.1 + 0.6 * f, m))
        ig = None
        if with_ig:
            progress(0.75, "Integrated Gradients…")
            ig = integrated_gradients(loaded.model, pixel_values, index)
        box = classify.visible_box(loaded.image_processor, width, height)
    verdict_of_gate = pending.result()
    progress(0.95, "Comparing the maps…")
    occ_display = for_display(occ.heat)
    maps = {"gradcam": cam.cam, "occlusion": occ_display}
    agreements = [agreement(cam.cam, occ.heat)]  # the signed map: its ranking, not the display's
    if ig is not None:
        maps["integrated_gradients"] = for_display(ig.heat)
        agreements += [agreement(cam.cam, ig.heat, ("gradcam", "integrated_gradients")),
                       agreement(occ.heat, ig.heat, ("occlusion", "integrated_gradients"))]
    overlays = {name: overlay(decoded.image, place_in_input(m, box, width, height), float(opacity), box)
                for name, m in maps.items()}
    label = labels[index] if index < len(labels) else str(index)
    info = {k: v for k, v in decoded.info.items() if k in ("format", "width", "height", "window", "note")}
    info.update(kind=decoded.kind, cam_layer=cam.layer, model_input=[int(pixel_values.shape[-2]), int(pixel_values.shape[-1])],
                model_saw=[round(v, 1) for v in box])
    return ExplainResult(key, label, float(probs[0, index]), overlays["gradcam"], overlays["occlusion"],
                         overlays.get("integrated_gradients"), cam.cam, occ, ig, agreements, info, verdict_of_gate)
