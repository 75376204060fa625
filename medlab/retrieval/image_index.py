"""The pathology image index: one chromadb collection per model, thumbnails, caption CSVs,
and the server folders the UI may index.

- One collection per model (name = model key + a fingerprint of its weights), so PLIP and
  CLIP embeddings never mix. Document id = sha256 of the image bytes: re-adding the same image
  adds nothing, a re-run after a crash resumes where it stopped, and re-indexing a folder
  removes the images that left it.
- Thumbnails live under <MEDLAB_DATA_DIR>/pathology/thumbs (content-addressed, shared by both
  models). A thumbnail is written (atomically) before its vector, so a stored row always has
  its thumbnail; a crash between the two leaves a thumbnail that the resumed run adopts."""

from __future__ import annotations

import csv
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlab.core.config import load_settings
from medlab.core.errors import (
    InputError,
    MedlabError,
    ModelUnavailableError,
    UnsupportedFileError,
)
from medlab.core.progress import Progress
from medlab.io.files import allowed_roots, file_sha256, within_allowed_roots
from medlab.retrieval.encoders import check_key, encode_images

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif"}
METADATA_SUFFIXES = {".csv"}
THUMB_SIDE = 192
BATCH_SIZE = 16
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "assets" / "pathology"

EMPTY_INDEX_HELP = (
    "The image index for {model} is empty. The default H&E tile set indexes itself in the "
    "background when MEDLAB_PATHOLOGY_SOURCE is set and reachable (or run `python -m medlab "
    "prepare`); otherwise add images with the 'Build the index' panel (a folder path on the "
    "server or an uploaded .zip of PNG/JPEG tiles, optionally with a CSV of file,label,caption "
    "beside them), or run `python -m training.build_pathology_index` to build the index from "
    "NCT-CRC-HE (CC-BY-4.0)."
)


@dataclass
class IndexReport:
    model: str
    collection: str
    added: int = 0
    unchanged: int = 0
    updated: int = 0  # metadata refreshed (caption/label/file), no re-encoding
    removed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    total: int = 0

    def summary(self) -> str:
        text = (
            f"{self.model}: {self.added} added, {self.unchanged} already indexed, {self.updated} "
            f"metadata updated, {self.removed} removed; {self.total} images in the index."
        )
        if self.skipped:
            shown = "; ".join(f"{n}: {r}" for n, r in self.skipped[:10])
            more = f" (+{len(self.skipped) - 10} more)" if len(self.skipped) > 10 else ""
            text += f" Skipped {len(self.skipped)}: {shown}{more}"
        return text


# -- collections ---------------------------------------------------------------------------------
def image_collection(key: str) -> Any:
    from medlab.retrieval.vectorstore import (
        collection_name,
        get_collection,
        model_fingerprint,
    )

    check_key(key)
    return get_collection(collection_name("pathology", key, model_fingerprint(key)),
                          metadata={"medlab:model": key})


def index_info(key: str) -> dict[str, Any]:
    """Collection name and size for `key` (no model load)."""
    try:
        col = image_collection(key)
    except ModelUnavailableError as exc:
        return {"model": key, "collection": None, "count": 0, "error": exc.reason}
    return {"model": key, "collection": col.name, "count": col.count(), "error": None}


# Collections (by chroma's per-collection UUID, unique across stores) seen non-empty in this
# process. chroma's count() and even get(limit=1) scan the whole collection, so the emptiness
# check before a search (which avoids loading a model for nothing) is paid once, not per query.
# Removals reset it.
_NONEMPTY: set[Any] = set()
_NONEMPTY_LOCK = threading.Lock()


def nonempty_collection(key: str, empty_error: type[Exception]) -> Any:
    """The collection of `key`, or `empty_error(help)` when it holds no image."""
    from medlab.core.registry import get_spec

    col = image_collection(key)
    with _NONEMPTY_LOCK:
        if col.id in _NONEMPTY:
            return col
    from medlab.retrieval.vectorstore import store_errors

    with store_errors("reading the image index"):
        empty = not col.get(limit=1, include=[])["ids"]
    if empty:
        raise empty_error(EMPTY_INDEX_HELP.format(model=get_spec(key).title))
    with _NONEMPTY_LOCK:
        _NONEMPTY.add(col.id)
    return col


def _forget_nonempty(col: Any) -> None:
    with _NONEMPTY_LOCK:
        _NONEMPTY.discard(col.id)


# -- thumbnails ----------------------------------------------------------------------------------
def thumbs_dir() -> Path:
    return load_settings().data_dir / "pathology" / "thumbs"


def thumb_path(sha: str) -> Path:
    return thumbs_dir() / sha[:2] / f"{sha}.jpg"


def thumb_bytes(img: Any) -> bytes:
    import io

    thumb = img.copy()
    thumb.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def save_thumb(img: Any, sha: str, data: bytes | None = None) -> Path:
    """Write the thumbnail of `img` (or the JPEG `data` made from it) under its content id,
    atomically (temp file + rename)."""
    path = thumb_path(sha)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    data = thumb_bytes(img) if data is None else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{sha[:8]}-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # atomic: never a half-written thumbnail
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def store_batch(col: Any, key: str, ids: Sequence[str], images: Sequence[Any],
                metas: Sequence[dict[str, Any]], progress: Progress | None = None) -> None:
    """Encode, then thumbnails, then one upsert of the vectors: a stored row always has its
    thumbnail, and a model that cannot load leaves no thumbnail behind. The batch is written
    only when the data dir keeps its reserve afterwards (medlab.io.diskspace), so a build that
    runs out of space stops before the store itself meets a full disk; if a write fails anyway,
    the thumbnails this batch added leave again."""
    from medlab.io.diskspace import ensure_space
    from medlab.retrieval.vectorstore import upsert

    vecs = encode_images(key, list(images), progress)
    new = [(sha, img) for sha, img in zip(ids, images) if not thumb_path(sha).is_file()]
    jpegs = [thumb_bytes(img) for _, img in new]
    ensure_space(load_settings().data_dir, sum(len(j) for j in jpegs) + int(getattr(vecs, "nbytes", 0)) * 4,
                 f"indexing {len(ids)} more images")
    written: list[Path] = []
    try:
        for (sha, img), data in zip(new, jpegs, strict=True):
            written.append(save_thumb(img, sha, data))
        upsert(col, list(ids), vecs, list(metas))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


# -- folders -------------------------------------------------------------------------------------
def read_captions(folder: Path) -> dict[str, dict[str, str]]:
    """file name -> {"label", "caption"} from CSV files beside the images.

    Accepted columns: file|filename|image|path, and label and/or caption|text|description."""
    out: dict[str, dict[str, str]] = {}
    for csv_path in sorted(folder.glob("*.csv")):
        try:
            with open(csv_path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                cols = {c.lower().strip(): c for c in (reader.fieldnames or [])}
                file_col = next((cols[c] for c in ("file", "filename", "image", "path") if c in cols), None)
                if file_col is None:
                    continue
                cap_col = next((cols[c] for c in ("caption", "text", "description") if c in cols), None)
                lab_col = cols.get("label")
                for row in reader:
                    name = (row.get(file_col) or "").strip().replace("\\", "/")
                    if not name:
                        continue
                    out[name] = {
                        "caption": (row.get(cap_col) or "").strip()[:300] if cap_col else "",
                        "label": (row.get(lab_col) or "").strip()[:100] if lab_col else "",
                    }
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            log.warning("ignoring caption file %s (%s)", csv_path, exc)
    return out


def scan_folder(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Candidate image files (by suffix) and the files skipped with a reason."""
    images: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if any(part.startswith(".") or part == "__MACOSX" for part in p.relative_to(folder).parts):
            continue
        if p.is_symlink():
            skipped.append((rel, "symbolic link (not followed)"))
            continue
        if not p.is_file():
            continue
        suffix = p.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            images.append(p)
        elif suffix not in METADATA_SUFFIXES:
            skipped.append((rel, "not an image file"))
    return images, skipped


def index_folder(
    folder: str | Path,
    key: str = "plip",
    source: str | None = None,
    progress: Progress | None = None,
    batch_size: int = BATCH_SIZE,
) -> IndexReport:
    """Index every image of `folder` (recursively) for model `key`. Incremental and resumable:
    images already stored (same bytes) are not encoded again; images that used to come from
    this folder (same `source`) and are gone now leave the index. A full disk stops the build
    with DiskFullError; what was stored stays, and the next run resumes."""
    from medlab.io.diskspace import disk_errors

    with disk_errors(load_settings().data_dir, f"indexing {Path(folder).name or folder}"):
        return _index_folder(folder, key, source, progress, batch_size)


def _index_folder(folder: str | Path, key: str, source: str | None, progress: Progress | None,
                  batch_size: int) -> IndexReport:
    from medlab.io.imaging import load_image
    from medlab.retrieval.vectorstore import existing_ids

    check_key(key)
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"{root} is not a folder on the server.")
    root = root.resolve()
    source = source or str(root)
    report_progress = progress or (lambda f, m: None)
    images, skipped = scan_folder(root)
    if not images:
        raise UnsupportedFileError(
            f"No images found in {Path(source).name or source} (PNG, JPEG, TIFF, WebP, BMP or GIF)"
            + (f"; skipped: {', '.join(n for n, _ in skipped[:5])}" if skipped else "") + ". Nothing was changed."
        )
    captions = read_captions(root)
    col = image_collection(key)
    report = IndexReport(key, col.name, skipped=list(skipped))

    # Hash every file: the id of an image is its content.
    entries: dict[str, tuple[Path, str]] = {}
    for i, p in enumerate(images):
        rel = p.relative_to(root).as_posix()
        if p.stat().st_size > load_settings().max_upload_bytes:
            report.skipped.append((rel, "larger than MEDLAB_MAX_UPLOAD_MB"))
            continue
        entries.setdefault(file_sha256(p), (p, rel))
        if i % 50 == 0:
            report_progress(0.05 * i / len(images), f"Hashing {i}/{len(images)}")
    present = existing_ids(col, list(entries))
    todo = [(sha, p, rel) for sha, (p, rel) in entries.items() if sha not in present]

    def meta(sha: str, rel: str) -> dict[str, Any]:
        info = captions.get(rel) or captions.get(Path(rel).name) or {}
        return {"file": rel, "source": source, "caption": info.get("caption", ""),
                "label": info.get("label", ""), "thumb": str(thumb_path(sha)), "sha256": sha}

    kept: set[str] = set(present)
    for start in range(0, len(todo), batch_size):
        ids, pils, metas = [], [], []
        for sha, p, rel in todo[start : start + batch_size]:
            try:
                img = load_image(p).image
            except MedlabError as exc:
                report.skipped.append((rel, str(exc)))
                continue
            ids.append(sha)
            pils.append(img)
            metas.append(meta(sha, rel))
        if ids:
            store_batch(col, key, ids, pils, metas, progress)
            kept.update(ids)
            report.added += len(ids)
        done = min(start + batch_size, len(todo))
        report_progress(0.05 + 0.9 * done / max(1, len(todo)), f"Encoded {done}/{len(todo)} new images with {key}")

    # Existing rows: refresh metadata (caption/label/file/source) without re-encoding.
    if present:
        got = col.get(ids=sorted(present), include=["metadatas"])
        upd_ids, upd_meta = [], []
        for sha, old in zip(got["ids"], got["metadatas"]):
            new = meta(sha, entries[sha][1])
            if {k: old.get(k) for k in new} != new:
                upd_ids.append(sha)
                upd_meta.append(new)
        if upd_ids:
            col.update(ids=upd_ids, metadatas=upd_meta)
        report.updated = len(upd_ids)
        report.unchanged = len(present) - len(upd_ids)

    # Images of this source that are gone from the folder leave the index.
    stale = [i for i in col.get(where={"source": source}, include=[])["ids"] if i not in kept]
    if stale:
        col.delete(ids=stale)
        _forget_nonempty(col)
        report.removed = len(stale)
    report.total = col.count()
    report_progress(1.0, "Index ready")
    log.info("pathology index: %s", report.summary())
    return report


def index_zip(
    zip_path: str | Path,
    key: str = "plip",
    name: str | None = None,
    progress: Progress | None = None,
) -> IndexReport:
    """Index the images of an uploaded zip. Unsafe archives are refused as a whole
    (medlab.io.archives); non-image members are skipped and listed in the report.
    Re-uploading a zip with the same name replaces what that zip added before."""
    from medlab.io.archives import extract_safely

    display = Path(name or Path(zip_path).name).name
    with tempfile.TemporaryDirectory(prefix="medlab-zip-") as tmp:
        extract_safely(zip_path, tmp, display)
        return index_folder(tmp, key=key, source=f"upload:{display}", progress=progress)


def index_examples(key: str = "plip", progress: Progress | None = None) -> IndexReport:
    """Index the bundled example tiles (assets/pathology) so search works offline."""
    return index_folder(EXAMPLES_DIR, key=key, source="examples", progress=progress)


# -- what the UI may index -------------------------------------------------------------------------
def check_index_root(folder: str | Path) -> Path:
    """A server folder the UI may index: under the data dir, the bundled examples or
    MEDLAB_INDEX_ROOTS (medlab.io.files.allowed_roots)."""
    path = within_allowed_roots(folder, EXAMPLES_DIR)
    if path is not None:
        return path
    raise InputError(
        f"{folder} is outside the folders the app may index ({', '.join(str(r) for r in allowed_roots(EXAMPLES_DIR))}). "
        "Upload a .zip instead, or add the folder to MEDLAB_INDEX_ROOTS on the server."
    )
