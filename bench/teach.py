"""Section 8: teach a classifier in the browser: end-to-end time to teach N generated
512x512 images (3 texture classes, real EfficientNet-Lite0 backbone from the PyPI wheel),
and the feature-extraction rate (decode + transform + forward, as the Teach tab runs it)
against a raw batched forward of pre-made tensors (the model's ceiling)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import WORK, Row, SectionResult, check, loadavg

CLASSES = ("stripes", "checks", "dots")


def _texture(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = rng.uniform(60, 120)
    if kind == "stripes":
        arr = base + 80 * (np.sin(2 * np.pi * yy / rng.uniform(size / 12, size / 6) + rng.uniform(0, 6)) > 0)
    elif kind == "checks":
        cell = int(rng.integers(size // 12, size // 6))
        arr = base + 80 * (((yy // cell) + (xx // cell)) % 2)
    else:
        arr = np.full((size, size), base, np.float32)
        for _ in range(int(rng.integers(6, 12))):
            r = rng.uniform(size / 24, size / 10)
            cx, cy = rng.uniform(r, size - r, 2)
            arr[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = base + 90
    return np.clip(arr + rng.normal(0, 6, arr.shape), 0, 255).astype(np.uint8)


def make_set(root: Path, n: int, size: int, seed: int = 0) -> Path:
    from PIL import Image

    marker = root / f".done-{n}-{size}"
    if marker.is_file():
        return root
    rng = np.random.default_rng(seed)
    for i in range(n):
        kind = CLASSES[i % 3]
        (root / kind).mkdir(parents=True, exist_ok=True)
        Image.fromarray(_texture(kind, rng, size), "L").save(root / kind / f"{kind}_{i:05d}.png")
    marker.touch()
    return root


def run(quick: bool = False) -> SectionResult:
    res = SectionResult(9, "Teach a classifier: time to teach, feature-extraction rate vs raw forward")
    started = time.perf_counter()
    n, size = (90, 256) if quick else (int(os.environ.get("BENCH_TEACH_N", "1000")), 512)
    data_dir = WORK / "teach-data"
    os.environ["MEDLAB_DATA_DIR"] = str(data_dir)  # the set must sit under an allowed root
    folder = make_set(data_dir / "sets" / f"textures-{n}-{size}", n, size)
    res.load["start"] = loadavg()

    import torch

    from medlab.core.config import resolve_device
    from medlab.vision.teach import features, service

    device = resolve_device()
    t0, c0 = time.perf_counter(), time.process_time()
    result = service.teach(str(folder), cam_examples=8)
    total, total_cpu = time.perf_counter() - t0, time.process_time() - c0
    s = result.summary

    # the raw ceiling: the same frozen backbone on pre-made tensors, same batch size
    model, cfg = features.build_backbone(features.get_backbone(features.DEFAULT_BACKBONE), 3)
    model = model.to(device).eval()
    batch = torch.randn(32, 3, 224, 224, device=device)
    n_raw = min(n, 256) if device == "cpu" else n
    with torch.inference_mode():
        features.pre_logits(model, batch)  # warm-up
        t1, c1 = time.perf_counter(), time.process_time()
        done = 0
        while done < n_raw:
            features.pre_logits(model, batch).float().cpu()
            done += batch.shape[0]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        raw_rate = done / (time.perf_counter() - t1)
        raw_cpu_rate = done / (time.process_time() - c1)
    rate = s["images_per_second"]
    ratio = rate / raw_rate if raw_rate else None
    # on a shared machine wall time depends on the neighbours; CPU time (all threads) does not
    cpu_ratio = (s["n_images"] / s["feature_cpu_seconds"]) / raw_cpu_rate if s["feature_cpu_seconds"] else None
    res.load["end"] = loadavg()
    res.details = {"summary": {k: s[k] for k in ("n_images", "n_train", "n_test", "held_out_accuracy",
                                                 "per_class_recall", "feature_seconds", "images_per_second")},
                   "raw_forward_img_per_s": round(raw_rate, 2), "raw_forward_img_per_cpu_s": round(raw_cpu_rate, 2),
                   "cpu_ratio": round(cpu_ratio, 3) if cpu_ratio else None, "teach_cpu_seconds": round(total_cpu, 1),
                   "device": device, "threads": torch.get_num_threads(),
                   "images": n, "size": size}
    res.rows.append(Row(f"Time to teach {n} images of {size}x{size} ({device})", round(total, 1), "s",
                        "< 180 s" if n >= 1000 else "", check(total, "<=", 180.0) if n >= 1000 else None,
                        f"held-out accuracy {s['held_out_accuracy']:.3f} on {s['n_test']} images (chance 0.33); "
                        f"features {s['feature_seconds']:.1f} s; CPU time {total_cpu:.0f} s (load {loadavg()})"))
    res.rows.append(Row("Feature extraction rate / raw batched forward", round(ratio, 3) if ratio else None, "x",
                        ">= 0.9x", check(ratio, ">=", 0.9),
                        f"{rate:.1f} img/s (decode + transform + forward) vs {raw_rate:.1f} img/s raw; by CPU time "
                        f"{cpu_ratio:.2f}x" if cpu_ratio else ""))
    res.seconds = time.perf_counter() - started
    return res


def main() -> dict[str, Any]:  # python -m bench.teach: one run, printed
    import json

    out = run(quick=bool(os.environ.get("BENCH_QUICK"))).to_dict()
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
