"""Helpers shared by the training scripts: logging, seeding, labelled image folders, output
locations and the markdown/plot writers. Heavy libraries are imported inside functions."""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlab.vision.classify import normalise_label  # noqa: F401 - one label normalisation for app and training

log = logging.getLogger("training")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".dcm", ".dicom")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def seed_everything(seed: int) -> None:
    """Python, numpy and torch RNGs (and cuDNN determinism where it is cheap)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


@dataclass(frozen=True)
class ImageFolder:
    """A labelled folder: root/<class name>/<image files>, classes in sorted order."""

    root: Path
    paths: tuple[Path, ...]
    targets: tuple[int, ...]
    classes: tuple[str, ...]

    def ids(self) -> list[str]:
        return [str(p.relative_to(self.root)) for p in self.paths]

    def subset(self, indices: Sequence[int]) -> ImageFolder:
        return ImageFolder(
            self.root,
            tuple(self.paths[i] for i in indices),
            tuple(self.targets[i] for i in indices),
            self.classes,
        )


def scan_image_folder(root: str | os.PathLike[str]) -> ImageFolder:
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise SystemExit(f"{root} is not a folder (expected <root>/<class>/<images>)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths: list[Path] = []
    targets: list[int] = []
    for i, name in enumerate(classes):
        for p in sorted((root / name).rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(p)
                targets.append(i)
    if len(classes) < 2 or not paths:
        raise SystemExit(f"{root} needs at least two class subfolders with images (found {classes})")
    return ImageFolder(root, tuple(paths), tuple(targets), tuple(classes))


def load_rgb(path: Path) -> Any:
    """An image or DICOM file as a PIL RGB image, through the app's own decoder (same
    windowing and safety limits as the tabs)."""
    from medlab.io.imaging import load_any

    return load_any(path).image


def default_report_dir(key: str | None, model: str) -> Path:
    """Next to local weights; else MEDLAB_DATA_DIR/reports/<key> (where medlab/core/cards.py looks)."""
    if Path(model).expanduser().is_dir():
        return Path(model).expanduser().resolve()
    from medlab.core.config import load_settings

    return load_settings().data_dir / "reports" / (key or "unnamed")


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default), encoding="utf-8")
    tmp.replace(path)  # atomic: a crash never leaves half a report


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (imported on demand)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def utc_now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
