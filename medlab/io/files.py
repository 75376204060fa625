"""Files on the server: content hashes, and which server folders a visitor may name.

Both are shared by the stores (a document or tile is identified by its bytes) and by the
tabs that read folders (pathology index, teach a classifier)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from medlab.core.config import load_settings


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Content hash of a file, streamed: the id the stores give a document or image (so
    re-adding the same bytes adds nothing) and how duplicates are found."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def allowed_roots(*extra: Path) -> list[Path]:
    """Server folders the UI may read: the data dir, any listed in MEDLAB_INDEX_ROOTS
    (os.pathsep-separated), and `extra` (e.g. bundled examples). A public Space must not let
    visitors read (and then browse) arbitrary server paths."""
    roots = [load_settings().data_dir, *extra]
    roots += [Path(p).expanduser() for p in os.environ.get("MEDLAB_INDEX_ROOTS", "").split(os.pathsep) if p.strip()]
    return [r.resolve() for r in roots]


def within_allowed_roots(folder: str | os.PathLike[str], *extra: Path) -> Path | None:
    """The resolved folder when it lies under an allowed root, else None."""
    path = Path(folder).expanduser().resolve()
    return path if any(path == r or r in path.parents for r in allowed_roots(*extra)) else None
