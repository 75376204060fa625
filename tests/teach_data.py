"""A generated, learnable image set for the teaching tests: three texture classes that an
ImageNet backbone separates easily (chance is 1/3), written as class folders or a zip."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("stripes", "checks", "dots")


def texture(kind: str, rng: np.random.Generator, size: int = 96) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = rng.uniform(60, 120)
    if kind == "stripes":
        period = rng.uniform(8, 16)
        angle = rng.uniform(-0.3, 0.3)
        arr = base + 80 * (np.sin(2 * np.pi * (yy * np.cos(angle) + xx * np.sin(angle)) / period + rng.uniform(0, 6)) > 0)
    elif kind == "checks":
        cell = int(rng.integers(8, 16))
        arr = base + 80 * (((yy // cell) + (xx // cell)) % 2)
    else:
        img = Image.new("L", (size, size), int(base))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(6, 12))):
            r = rng.uniform(4, 9)
            cx, cy = rng.uniform(r, size - r, 2)
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=int(base + 90))
        arr = np.asarray(img, np.float32)
    arr = arr + rng.normal(0, 6, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")


def write_folders(root: Path, per_class: int = 24, seed: int = 0, size: int = 96) -> Path:
    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = texture(kind, rng, size)
            if i % 3 == 1:
                image = image.convert("RGB")  # mixed modes
            if i % 4 == 2:
                image = image.resize((size + 32, size))  # mixed sizes
            image.save(root / kind / f"{kind}_{i:03d}.png")
    return root


def zip_folder(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(folder).as_posix())
    return archive
