"""Section 3: Grad-CAM overlay cost vs a plain forward of the same model (EfficientNet-B1
shape, 240 px), through medlab.vision.gradcam's API, loaded with the app's own loader.

Variants (interleaved): plain forward under inference_mode; medlab.vision.gradcam.grad_cam (forward
+ head-only backward); grad_cam + place_in_input + overlay on the 512x512 CT slice (what the
lung tab shows); and, for reference, a naive pytorch-grad-cam call on a copy of the model
whose parameters still require grad (full backward through the backbone)."""

from __future__ import annotations

import copy
import os
import time
from typing import Any

from bench.common import ROOT, WORK, Row, SectionResult, check, interleaved, loadavg, summary


def run(quick: bool = False) -> SectionResult:
    from bench.models import build_all

    res = SectionResult(3, "Grad-CAM overlay cost vs a plain forward (EfficientNet-B1)")
    started = time.perf_counter()
    scale = "tiny" if quick else "real"
    os.environ.update(build_all(WORK / "models", scale, names=("lung-effnet-b1",)))

    import torch
    from pytorch_grad_cam import GradCAM

    from medlab.core.loaders import get_model
    from medlab.io.imaging import load_any
    from medlab.vision import classify, gradcam

    loaded = get_model("lung_ct")
    model = loaded.model
    image = load_any(str(ROOT / "assets" / "lung" / "ct_small_lung_window.png")).image
    pv = classify.preprocess(loaded, image)
    width, height = image.size
    box = classify.visible_box(loaded.image_processor, width, height)
    layer = gradcam.find_target_layer(model)

    naive_model = copy.deepcopy(model).requires_grad_(True)
    naive_layer = gradcam.find_target_layer(naive_model)
    naive_wrapped = classify.logits_module(naive_model)

    def forward() -> Any:
        with torch.inference_mode():
            return model(pixel_values=pv).logits

    def cam_only() -> Any:
        return gradcam.grad_cam(model, pv)

    def cam_overlay() -> Any:
        cam = gradcam.grad_cam(model, pv)
        heat = gradcam.place_in_input(cam.cam, box, width, height)
        return gradcam.overlay(image, heat, 0.4, box)

    def naive() -> Any:
        with GradCAM(model=naive_wrapped, target_layers=[naive_layer.module]) as cam:
            return cam(input_tensor=pv, targets=None)

    repeats = 3 if quick else 20
    runs = interleaved({"forward": forward, "gradcam": cam_only, "gradcam_overlay": cam_overlay,
                        "naive_full_backward": naive}, repeats, warmup=2)
    stats = {k: summary(v) for k, v in runs.items()}
    fwd = stats["forward"]["median_ms"]
    res.details = {"stats": stats, "target_layer": layer.name, "input": [width, height],
                   "pixel_values": list(pv.shape), "repeats": repeats,
                   "params_requiring_grad_after_cam": sum(p.requires_grad for p in model.parameters())}
    res.load["end"] = loadavg()
    res.tables.append({"title": f"EfficientNet-B1 @ {pv.shape[-1]} px, {repeats} interleaved runs (ms)",
                       "columns": ["variant", "median", "p95", "ratio to forward (median)", "ratio (p95)"],
                       "rows": [[k, s["median_ms"], s["p95_ms"], round(s["median_ms"] / fwd, 2),
                                 round(s["p95_ms"] / stats["forward"]["p95_ms"], 2)] for k, s in stats.items()]})
    ratio = stats["gradcam_overlay"]["median_ms"] / fwd
    res.rows.append(Row("Grad-CAM + overlay / plain forward (median)", round(ratio, 2), "x", "<= 1.6x",
                        check(ratio, "<=", 1.6),
                        f"grad_cam alone {stats['gradcam']['median_ms'] / fwd:.2f}x; naive full backward "
                        f"{stats['naive_full_backward']['median_ms'] / fwd:.2f}x; target layer {layer.name}"))
    res.seconds = time.perf_counter() - started
    return res
