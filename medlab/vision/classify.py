"""Shared image-classifier engine for the skin and lung-CT tabs.

preprocess (the checkpoint's own image processor) -> forward (under inference_mode) ->
postprocess (softmax, or sigmoid for a one-logit binary model; model labels mapped to the
app's labels through the spec's label_map). Torch is imported inside the functions."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medlab.core.errors import ModelUnavailableError
from medlab.core.specs import ModelSpec

log = logging.getLogger(__name__)


class LabelMappingError(ModelUnavailableError):
    """A model label that the spec's label_map does not cover: the checkpoint and the spec
    disagree, so no app-level probability can be computed honestly."""


# -- labels --------------------------------------------------------------------------------
def normalise_label(label: str) -> str:
    """Compare labels in one form: lowercase, '_' and '-' as spaces, single spaces."""
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", str(label).lower())).strip()


def model_labels(model: Any) -> list[str]:
    """The checkpoint's labels ordered by class index (from config.id2label)."""
    id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
    n = int(getattr(model.config, "num_labels", len(id2label)) or len(id2label))
    return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(n)]


def map_labels(labels: Sequence[str], spec: ModelSpec) -> list[str]:
    """App label (e.g. 'malignant') for each model label; raises LabelMappingError naming the
    first label the spec does not map."""
    table = {normalise_label(k): v for k, v in spec.label_map.items()}
    mapped = []
    for label in labels:
        app = table.get(normalise_label(label))
        if app is None:
            raise LabelMappingError(
                spec.key,
                f"the checkpoint's label {label!r} (normalised {normalise_label(label)!r}) is not in "
                f"the label_map of the '{spec.key}' spec, which maps {sorted(table)} to "
                f"{sorted(set(table.values()))}.",
                f"add {normalise_label(label)!r} to the '{spec.key}' spec's label_map in "
                "medlab/core/specs.py, or point "
                f"MEDLAB_MODEL_{spec.key.upper()} at a checkpoint whose id2label uses known names.",
            )
        mapped.append(app)
    return mapped


def aggregate(
    probs: Sequence[float], labels: Sequence[str], mapped: Sequence[str], order: Sequence[str]
) -> dict[str, float]:
    """Sum model-class probabilities into app classes (in `order`).

    A one-output model (sigmoid) gives p to its own mapped label and 1-p to the other one,
    which requires exactly two app labels."""
    out = {name: 0.0 for name in order}
    if len(probs) == 1:
        if len(order) != 2:
            raise ValueError("a one-logit model needs exactly two app labels")
        own = mapped[0]
        other = next(name for name in order if name != own)
        out[own] = float(probs[0])
        out[other] = 1.0 - float(probs[0])
        return out
    for p, app in zip(probs, mapped, strict=True):
        out[app] = out.get(app, 0.0) + float(p)
    return out


# -- preprocess / forward / postprocess ------------------------------------------------------
def preprocess(loaded: Any, image: Any) -> Any:
    """PIL RGB image -> pixel_values tensor on the model's device, with the checkpoint's own
    processor (size, crop, normalisation all come from it)."""
    processor = loaded.image_processor
    if processor is None:
        raise ModelUnavailableError(loaded.key, "the checkpoint has no image processor config.",
                                    "add preprocessor_config.json next to the weights.")
    batch = processor(images=image.convert("RGB"), return_tensors="pt")
    return batch["pixel_values"].to(loaded.device)


def logits_of(output: Any) -> Any:
    """Transformers models return a ModelOutput; plain modules may return a tensor."""
    return output.logits if hasattr(output, "logits") else output


def forward(loaded: Any, pixel_values: Any) -> Any:
    """Plain inference: logits (1, C) as a CPU float tensor."""
    import torch

    with torch.inference_mode():
        return logits_of(loaded.model(pixel_values=pixel_values)).float().cpu()


def probabilities(logits: Any) -> np.ndarray:
    """Softmax over classes, or the sigmoid of a single logit."""
    import torch

    row = logits.detach().float().reshape(-1)
    probs = torch.sigmoid(row) if row.numel() == 1 else torch.softmax(row, dim=-1)
    return probs.cpu().numpy().astype(np.float64)


def logits_module(model: Any) -> Any:
    """Wrap a transformers classifier so calling it returns plain logits (what Grad-CAM's
    targets index into) instead of a ModelOutput."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return logits_of(self.inner(pixel_values=pixel_values))

    return LogitsOnly(model)


# -- geometry: which part of the input the model saw --------------------------------------
def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def visible_box(processor: Any, width: int, height: int) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the region of a width x height input that survives the
    processor's resize + centre crop, in input pixels. Processors that only resize (e.g. ViT)
    keep the whole image. Known shapes: transformers processors with do_center_crop/crop_size,
    ConvNext's crop_pct rule and timm's data_config; anything else is assumed not to crop."""
    full = (0.0, 0.0, float(width), float(height))
    short = min(width, height)

    def centred(crop_w: float, crop_h: float) -> tuple[float, float, float, float]:
        crop_w, crop_h = min(crop_w, width), min(crop_h, height)
        left, top = (width - crop_w) / 2.0, (height - crop_h) / 2.0
        return (left, top, left + crop_w, top + crop_h)

    data_config = _get(processor, "data_config")
    if data_config:  # timm: Resize(floor(size / crop_pct)) on the short side, CenterCrop(size)
        crop_pct = float(_get(data_config, "crop_pct") or 1.0)
        mode = _get(data_config, "crop_mode") or "center"
        ih, iw = list(_get(data_config, "input_size"))[-2:]
        if mode == "squash" or (mode == "center" and ih != iw):
            # resized (stretched) to size / crop_pct, then centre-cropped to size
            return centred(width * crop_pct, height * crop_pct)
        if mode != "center":
            return full  # "border" pads instead of cropping
        scale = (ih / crop_pct) / short
        return centred(iw / scale, ih / scale)

    size = _get(processor, "size")
    shortest = _get(size, "shortest_edge")
    crop_pct = _get(processor, "crop_pct")
    if type(processor).__name__.startswith("ConvNext") and shortest:
        if shortest >= 384:
            return full  # warped to a square, nothing cropped
        resized_short = int(shortest / float(crop_pct or 224 / 256))
        scale = resized_short / short
        return centred(shortest / scale, shortest / scale)

    if _get(processor, "do_center_crop") and _get(processor, "crop_size") is not None:
        crop = _get(processor, "crop_size")
        ch, cw = _get(crop, "height"), _get(crop, "width")
        if ch is None or cw is None:
            return full
        if shortest:  # aspect kept: short side -> shortest, then a centred crop
            scale = shortest / short
            return centred(cw / scale, ch / scale)
        rh, rw = _get(size, "height"), _get(size, "width")
        if rh and rw:  # warped to (rh, rw), then cropped
            return centred(width * cw / rw, height * ch / rh)
    return full
