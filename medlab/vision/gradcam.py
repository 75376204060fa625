"""Grad-CAM for any image classifier the app loads, with pytorch-grad-cam.

- The target layer comes from one table, TARGET_RULES, keyed by architecture family: the
  last convolutional stage for CNN families (transformers ResNet / ConvNext / EfficientNet /
  RegNet..., timm models through TimmWrapper) and the last block's first norm for token
  models (ViT / DeiT / DINOv2 / Swin), whose (B, tokens, C) activations are reshaped to a
  (B, C, h, w) grid. A spec may name the layer itself: params["target_layer"] = "module.path".
- Cost: every parameter has requires_grad=False and a forward hook re-roots the target
  layer's output as a fresh leaf that requires grad, so the backward pass only runs through
  the head above the target layer (the benchmark target is <= 1.6x a plain forward).
- Hooks live only for one call: the CAM object is used as a context manager and our own
  hook is removed in a finally block. One lock per model keeps concurrent requests from
  seeing each other's activations."""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from medlab.core.errors import ModelUnavailableError

log = logging.getLogger(__name__)

_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()  # per model
_LOCKS_GUARD = threading.Lock()


@dataclass
class TargetLayer:
    module: Any
    name: str
    family: str  # "cnn" or "tokens"
    reshape_transform: Callable[[Any], Any] | None = None


@dataclass
class CamResult:
    cam: np.ndarray  # (h, w) float32 in [0, 1], model-input resolution
    logits: Any  # (1, C) CPU tensor from the same forward pass
    class_index: int
    layer: str


# -- finding the target layer --------------------------------------------------------------
def _named(model: Any, path: str) -> Any:
    module = model
    for part in path.split("."):
        if not part:
            continue
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


def _path_of(model: Any, module: Any) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    return "?"


def tokens_to_grid(tensor: Any, aspect: float = 1.0, grid: tuple[int, int] | None = None) -> Any:
    """(B, N, C) tokens -> (B, C, h, w). Leading prefix tokens (CLS, distillation, registers)
    are dropped. With `grid` (from the model's patch size) the prefix is N - h*w; without it,
    the split whose h x w best matches the input's aspect ratio wins (then the smallest
    prefix). (B, h, w, C) channels-last maps (timm Swin) are permuted."""
    if tensor.dim() == 4:
        return tensor.permute(0, 3, 1, 2) if tensor.shape[-1] > tensor.shape[1] else tensor
    if tensor.dim() != 3:
        raise ValueError(f"cannot reshape activations of shape {tuple(tensor.shape)} into a grid")
    b, n, c = tensor.shape
    if grid is not None and 0 <= n - grid[0] * grid[1] <= 16:
        h, w = grid
        return tensor[:, n - h * w:, :].reshape(b, h, w, c).permute(0, 3, 1, 2)
    best: tuple[float, int, int, int] | None = None
    for prefix in range(0, min(n, 17)):
        count = n - prefix
        for h in range(1, count + 1):
            if count % h:
                continue
            w = count // h
            error = abs(math.log((h / w) / aspect))
            if error < 0.35 and (best is None or (error, prefix) < (best[0], best[1])):
                best = (error, prefix, h, w)
    if best is None:
        raise ValueError(f"cannot find a token grid in {n} tokens")
    _, prefix, h, w = best
    return tensor[:, prefix:, :].reshape(b, h, w, c).permute(0, 3, 1, 2)


def patch_grid(model: Any, height: int, width: int) -> tuple[int, int] | None:
    """(h, w) patch grid of a plain ViT-like model for an input of height x width, if known."""
    patch = getattr(getattr(model, "config", None), "patch_size", None)
    timm_model = getattr(model, "timm_model", None)
    if timm_model is not None and hasattr(timm_model, "patch_embed"):
        patch = getattr(timm_model.patch_embed, "patch_size", None)
    if isinstance(patch, (tuple, list)):
        ph, pw = int(patch[0]), int(patch[1])
    elif isinstance(patch, int):
        ph = pw = patch
    else:
        return None
    return height // ph, width // pw


# -- the target-layer rules, one table keyed by architecture family ------------------------
# Token-model families (ViT-like) by class name; MobileViT is a CNN despite its name.
TOKEN_MODEL_TAGS = ("vit", "deit", "dinov2", "swin", "beit", "dino")
NOT_TOKEN_MODEL_TAGS = ("mobilevit",)


def _looks_like_token_model(model: Any) -> bool:
    name = type(model).__name__.lower()
    return any(tag in name for tag in TOKEN_MODEL_TAGS) and not any(tag in name for tag in NOT_TOKEN_MODEL_TAGS)


def _base(model: Any) -> Any:
    return getattr(model, getattr(model, "base_model_prefix", ""), None) or model


def _timm(model: Any) -> Any:
    return getattr(model, "timm_model", None)  # transformers TimmWrapper around a timm model


def _last_conv(root: Any) -> Any:
    import torch

    convs = [m for m in root.modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        raise ModelUnavailableError(
            "model", f"no convolution or transformer block found in {type(root).__name__}.",
            "set params['target_layer'] in the spec to the module Grad-CAM should explain.",
        )
    return convs[-1]  # registration order = execution order


def _last_block_norm(model: Any) -> Any:
    """The first norm of the last transformer block (layout differs across versions:
    encoder.layer, layers...)."""
    blocks = [m for name, m in _base(model).named_modules()
              if name and any(hasattr(m, n) for n in ("layernorm_before", "norm1"))]
    if not blocks:
        raise ModelUnavailableError("model", f"no transformer block found in {type(model).__name__}.",
                                    "set params['target_layer'] in the spec.")
    return getattr(blocks[-1], "layernorm_before", None) or blocks[-1].norm1


def _timm_conv_head(model: Any) -> Any:
    timm_model = _timm(model)
    return next(getattr(timm_model, n) for n in ("bn2", "final_conv", "conv_head") if hasattr(timm_model, n))


def _timm_feature_info(model: Any) -> Any:
    info = _timm(model).feature_info
    last = info[-1]["module"] if isinstance(info, list) else info.module_name()[-1]
    return _named(_timm(model), last)


@dataclass(frozen=True)
class TargetRule:
    """One architecture family: when it applies, which layer to explain, and whether its
    activations are tokens (reshaped to a grid) or a CNN feature map."""

    family: str
    kind: str  # "cnn" or "tokens"
    applies: Callable[[Any], bool]
    layer: Callable[[Any], Any]


# First match wins; the order is the precedence.
TARGET_RULES: tuple[TargetRule, ...] = (
    TargetRule("timm ViT / DeiT / EVA", "tokens",
               lambda m: _timm(m) is not None and hasattr(_timm(m), "blocks") and hasattr(_timm(m), "patch_embed")
               and hasattr(_timm(m).blocks[-1], "norm1"),
               lambda m: _timm(m).blocks[-1].norm1),
    TargetRule("timm Swin (channels-last)", "tokens",
               lambda m: _timm(m) is not None and hasattr(_timm(m), "layers")
               and "swin" in type(_timm(m)).__name__.lower(),
               lambda m: _timm(m).layers[-1]),
    TargetRule("timm EfficientNet / MobileNet conv head", "cnn",
               lambda m: _timm(m) is not None and any(hasattr(_timm(m), n) for n in ("bn2", "final_conv", "conv_head")),
               _timm_conv_head),
    TargetRule("timm CNN with feature_info", "cnn",
               lambda m: _timm(m) is not None and bool(getattr(_timm(m), "feature_info", None)),
               _timm_feature_info),
    TargetRule("other timm model", "cnn", lambda m: _timm(m) is not None, lambda m: _last_conv(_timm(m))),
    TargetRule("transformers Swin", "tokens",
               lambda m: _looks_like_token_model(m) and "swin" in type(m).__name__.lower()
               and hasattr(_base(m), "layernorm"),
               lambda m: _base(m).layernorm),  # final norm of the last stage, right before pooling
    TargetRule("transformers ViT / DeiT / DINOv2 / BEiT", "tokens", _looks_like_token_model, _last_block_norm),
    TargetRule("transformers EfficientNet", "cnn",
               lambda m: hasattr(getattr(_base(m), "encoder", None), "top_activation"),
               lambda m: _base(m).encoder.top_activation),
    TargetRule("transformers ResNet / ConvNext / RegNet", "cnn",
               lambda m: hasattr(getattr(_base(m), "encoder", None), "stages"),
               lambda m: _base(m).encoder.stages[-1]),
    TargetRule("any other CNN", "cnn", lambda m: True, _last_conv),
)


def target_rule(model: Any) -> TargetRule:
    return next(rule for rule in TARGET_RULES if rule.applies(model))


def find_target_layer(model: Any, override: str | None = None) -> TargetLayer:
    """The layer to explain for a transformers / TimmWrapper classifier (TARGET_RULES, or
    the spec's params["target_layer"] when given)."""
    if override:
        try:
            module = _named(model, override)
        except (AttributeError, IndexError, ValueError) as exc:
            raise ModelUnavailableError(
                getattr(model, "name_or_path", "model"),
                f"target_layer {override!r} does not exist in {type(model).__name__} ({exc}).",
                "fix params['target_layer'] in the spec (a dotted module path, e.g. "
                "'resnet.encoder.stages.3').",
            ) from None
        family = "tokens" if _looks_like_token_model(model) else "cnn"
        return TargetLayer(module, override, family, _token_reshape if family == "tokens" else None)

    rule = target_rule(model)
    module = rule.layer(model)
    return TargetLayer(module, _path_of(model, module), rule.kind, _token_reshape if rule.kind == "tokens" else None)


def _token_reshape(tensor: Any, aspect: float = 1.0, grid: tuple[int, int] | None = None) -> Any:
    return tokens_to_grid(tensor, aspect, grid)


# -- the CAM --------------------------------------------------------------------------------
def _lock_for(model: Any) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(model, threading.Lock())


def _reroot(module: Any, args: Any, output: Any) -> Any:  # noqa: ARG001 - forward-hook signature
    """Make the target layer's output a new leaf that requires grad: autograd then records
    only the layers above it, so backward never walks the (frozen) backbone."""
    if isinstance(output, tuple):
        return (output[0].detach().requires_grad_(True), *output[1:])
    return output.detach().requires_grad_(True)


def grad_cam(
    model: Any,
    pixel_values: Any,
    class_index: int | None = None,
    target_layer: str | None = None,
) -> CamResult:
    """One forward + a head-only backward: logits and the Grad-CAM map of `class_index`
    (default: the predicted class), normalised to [0, 1] at model-input resolution."""
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from medlab.vision.classify import logits_module

    layer = find_target_layer(model, target_layer)
    wrapped = logits_module(model)
    height, width = int(pixel_values.shape[-2]), int(pixel_values.shape[-1])
    aspect = height / width
    # Swin's final norm sits after patch merging: its grid is not the patch grid
    grid = None if "swin" in type(model).__name__.lower() else patch_grid(model, height, width)
    reshape = None
    if layer.reshape_transform is not None:
        def reshape(t: Any) -> Any:  # noqa: E306 - closure over the input's geometry
            return layer.reshape_transform(t, aspect, grid)

    with _lock_for(model):
        for p in model.parameters():  # inference model: nothing below the head needs grads
            if p.requires_grad:
                p.requires_grad_(False)
        handle = layer.module.register_forward_hook(_reroot)  # registered first: runs first
        try:
            with torch.enable_grad(), GradCAM(model=wrapped, target_layers=[layer.module],
                                              reshape_transform=reshape) as cam:
                targets = None if class_index is None else [ClassifierOutputTarget(int(class_index))]
                grayscale = cam(input_tensor=pixel_values, targets=targets)
                logits = cam.outputs.detach().float().cpu()
        finally:
            handle.remove()
    chosen = int(logits.argmax(-1).item()) if class_index is None else int(class_index)
    heat = np.nan_to_num(np.asarray(grayscale[0], dtype=np.float32))
    top = float(heat.max())
    heat = heat / top if top > 0 else heat  # pytorch-grad-cam already min-max scales; keep [0,1]
    return CamResult(np.clip(heat, 0.0, 1.0), logits, chosen, layer.name)


def place_in_input(cam: np.ndarray, box: tuple[float, float, float, float], width: int, height: int) -> np.ndarray:
    """Map a model-input CAM back onto the original image: resized into the region the model
    saw (`box`, see classify.visible_box); zero outside it."""
    import cv2

    left, top, right, bottom = (int(round(v)) for v in box)
    right, bottom = min(max(right, left + 1), width), min(max(bottom, top + 1), height)
    full = np.zeros((height, width), dtype=np.float32)
    full[top:bottom, left:right] = cv2.resize(cam, (right - left, bottom - top), interpolation=cv2.INTER_LINEAR)
    return np.clip(full, 0.0, 1.0)


def overlay(image: Any, heat: np.ndarray, opacity: float = 0.4,
            box: tuple[float, float, float, float] | None = None) -> Any:
    """Jet-coloured heat map blended over `image` (PIL, same size as `heat`) with `opacity`
    (document 001 uses 0.4). Outside `box` (what the model never saw) the image is left as is."""
    import cv2
    from PIL import Image

    if not 0.0 <= opacity <= 1.0:
        raise ValueError("opacity must be between 0 and 1")
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    if heat.shape != base.shape[:2]:
        raise ValueError(f"heat map {heat.shape} does not match the image {base.shape[:2]}")
    colour = cv2.applyColorMap(np.uint8(255 * heat), cv2.COLORMAP_JET)[..., ::-1].astype(np.float32)
    blended = (1.0 - opacity) * base + opacity * colour
    if box is not None:
        left, top, right, bottom = (int(round(v)) for v in box)
        mask = np.zeros(heat.shape, dtype=bool)
        mask[top:bottom, left:right] = True
        blended[~mask] = base[~mask]
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8), "RGB")


# The overlay's colormap (OpenCV/matplotlib "jet", low to high) as hex, for the UI legend without
# importing OpenCV; tests check it against jet_colours().
COLOURMAP_NAME = "jet"
COLOURMAP_HEX = ("#00007f", "#0000ff", "#007fff", "#00ffff", "#7fff7f", "#ffff00", "#ff7f00", "#ff0000", "#7f0000")


def jet_colours(n: int = 9) -> list[str]:
    """Hex colours of the jet colormap from low to high (for a legend)."""
    import cv2

    ramp = cv2.applyColorMap(np.linspace(0, 255, n).astype(np.uint8).reshape(-1, 1), cv2.COLORMAP_JET)
    return ["#{:02x}{:02x}{:02x}".format(*(int(c) for c in px[0][::-1])) for px in ramp]
