"""Taught models on disk: a standard Hugging Face classifier folder per model under
<data dir>/taught/models/<id>/ (config.json with id2label and the timm preprocessing,
model.safetensors, evaluation.json, README.md card, taught.json), and one small JSON pointer
per tab (<data dir>/taught/current/<key>.json, read by medlab.core.registry).

Crash safety: a model is written into a hidden ".partial" folder, fsynced, then renamed; the
pointer is replaced atomically (temp file, fsync, os.replace). A kill -9 at any moment leaves
the previous pointer and the previous model folder as they were."""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from medlab.core.config import load_settings
from medlab.core.errors import InputError
from medlab.core.registry import get_spec, taught_pointer

log = logging.getLogger(__name__)

TABS = ("lung_ct", "skin")  # registry keys a taught model can serve
MARKER = "taught.json"
_ID = re.compile(r"^taught-[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")


def root() -> Path:
    return load_settings().data_dir / "taught"


def models_dir() -> Path:
    return root() / "models"


def new_model_id() -> str:
    return time.strftime("taught-%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(3)


def model_dir(model_id: str) -> Path:
    """The folder of a finished taught model; the id is checked (no path tricks)."""
    model_id = str(model_id or "").strip()
    if not _ID.match(model_id):
        raise InputError(f"{model_id!r} is not a taught-model id (they look like taught-20260101-120000-a1b2c3).")
    folder = models_dir() / model_id
    if not (folder / MARKER).is_file():
        raise InputError(f"No finished taught model {model_id!r} in this app's data dir.")
    return folder


def info(model_id: str) -> dict[str, Any]:
    return json.loads((model_dir(model_id) / MARKER).read_text(encoding="utf-8"))


def list_models() -> list[dict[str, Any]]:
    out = []
    for folder in sorted(models_dir().glob("taught-*"), reverse=True):
        try:
            out.append(json.loads((folder / MARKER).read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return out


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def staging_dir(model_id: str) -> Path:
    """Where a model is written before it exists (renamed by commit())."""
    folder = models_dir() / f".{model_id}.partial"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def commit(staging: Path, model_id: str) -> Path:
    final = models_dir() / model_id
    _fsync_tree(staging)
    os.replace(staging, final)
    _fsync_dir(final.parent)
    return final


def clean_partials() -> None:
    """Remove what an interrupted run left behind (never a finished model)."""
    for folder in models_dir().glob(".taught-*.partial"):
        shutil.rmtree(folder, ignore_errors=True)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def check_fits_tab(meta: dict[str, Any], tab: str) -> None:
    """A taught model may serve the skin tab only as benign / malignant."""
    if tab not in TABS:
        raise InputError(f"A taught model can be used in {', '.join(TABS)}, not {tab!r}.")
    if tab == "skin":
        from medlab.vision.classify import normalise_label

        table = {normalise_label(k): v for k, v in get_spec("skin").label_map.items()}
        mapped = {table.get(normalise_label(c)) for c in meta["classes"]}
        if len(meta["classes"]) != 2 or mapped != {"benign", "malignant"}:
            raise InputError(f"The skin tab needs a two-class benign / malignant model; this one has "
                             f"{', '.join(meta['classes'])}. Name the folders 'benign' and 'malignant'.")


def use(model_id: str, tab: str = "lung_ct") -> dict[str, Any]:
    """Make a taught model the tab's model: atomic pointer swap, then the cache drops the old
    model so the next request loads this one."""
    folder = model_dir(model_id)
    meta = info(model_id)
    check_fits_tab(meta, tab)
    write_json_atomic(taught_pointer(tab), {"model_id": model_id, "path": str(folder.resolve()), "tab": tab,
                                            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    from medlab.core.loaders import get_cache

    get_cache().evict(tab)
    log.info("taught model %s now serves the %s tab", model_id, tab)
    return {"model_id": model_id, "tab": tab, "classes": meta["classes"], "path": str(folder)}


def current(tab: str) -> str | None:
    """The id of the taught model the tab uses (None when none, or the env var overrides)."""
    try:
        data = json.loads(taught_pointer(tab).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("model_id") if Path(data.get("path", "")).is_dir() else None


def download(model_id: str) -> Path:
    """A .zip of the model folder (made once, kept next to the models)."""
    folder = model_dir(model_id)
    target = root() / "downloads" / f"{model_id}.zip"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        made = shutil.make_archive(str(target.with_suffix("")) + ".tmp", "zip", root_dir=folder.parent,
                                   base_dir=folder.name)
        os.replace(made, target)
    return target
