"""PLIP pathology search and zero-shot classification, with general CLIP beside it.

- Encoders: `plip` (transformers CLIPModel + CLIPProcessor) and `clip_baseline` (open_clip).
  Embeddings are L2-normalised, so cosine similarity is a dot product; text is truncated to
  the models' 77 tokens.
- Image index: one chromadb collection per model (name = model key + a fingerprint of its
  weights), so PLIP and CLIP embeddings never mix. Document id = sha256 of the image bytes:
  re-adding the same image adds nothing, a re-run after a crash resumes where it stopped, and
  re-indexing a folder removes the images that left it. Thumbnails are kept under
  <MEDLAB_DATA_DIR>/pathology/thumbs (content-addressed, shared by both models).
- Zero-shot: labels x prompt template -> text embeddings; probabilities are the softmax of
  the model's own logit_scale times the cosine similarities (exactly CLIP's training head)."""

from __future__ import annotations

import csv
import logging
import os
import re
import stat
import tempfile
import threading
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlab.core.config import load_settings
from medlab.core.errors import InputError, MedlabError, ModelUnavailableError, UnsupportedFileError
from medlab.core.registry import KATHER_CLASSES, get_spec
from medlab.retrieval.vectorstore import file_sha256

log = logging.getLogger(__name__)

from medlab.core.progress import Progress  # noqa: E402

MODELS = ("plip", "clip_baseline")
DEFAULT_LABELS: tuple[str, ...] = KATHER_CLASSES
DEFAULT_TEMPLATE = "An H&E image of {label}."
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif"}
METADATA_SUFFIXES = {".csv"}
THUMB_SIDE = 192
BATCH_SIZE = 16
MAX_TEXT_TOKENS = 77
MAX_LABELS = 50
# Zip limits: a zip bomb is refused before anything is extracted.
ZIP_MAX_MEMBERS = 20_000
ZIP_MAX_TOTAL_BYTES = 2 * 1024**3
ZIP_MAX_RATIO = 200  # uncompressed / compressed, per member and overall

EMPTY_INDEX_HELP = (
    "The image index for {model} is empty. Add images with the 'Build the index' panel "
    "(a folder path on the server or an uploaded .zip of PNG/JPEG tiles, optionally with a CSV "
    "of file,label,caption beside them), or run `python -m training.build_pathology_index` "
    "to build the default index from NCT-CRC-HE (CC-BY-4.0)."
)


class UnsafeArchiveError(UnsupportedFileError):
    """A zip that could write outside its folder, holds links, or is a decompression bomb."""


class EmptyIndexError(InputError):
    """Search asked of an index with no images."""


@dataclass
class Hit:
    id: str
    score: float
    file: str
    caption: str
    label: str
    thumb: str
    source: str

    @property
    def title(self) -> str:
        text = self.caption or self.label or self.file
        return f"{self.score:.3f} · {text}"


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


# -- encoders ---------------------------------------------------------------------------------
def _check_key(key: str) -> str:
    if key not in MODELS:
        raise InputError(f"Unknown pathology model {key!r}; choose one of {', '.join(MODELS)}.")
    return key


def _is_open_clip(key: str) -> bool:
    return get_spec(key).loader.endswith(":load_open_clip")


def _loaded(key: str, progress: Progress | None = None) -> Any:
    from medlab.core.loaders import get_model

    return get_model(_check_key(key), progress)


def _normalise(x: Any) -> Any:
    import torch

    return torch.nn.functional.normalize(x.float(), dim=-1)


def encode_images(key: str, images: Sequence[Any], progress: Progress | None = None) -> Any:
    """PIL RGB images -> (n, d) float32 numpy, L2-normalised."""
    import torch

    lm = _loaded(key, progress)
    # preprocess
    if _is_open_clip(key):
        pixels = torch.stack([lm.transform(img) for img in images]).to(lm.device)
    else:
        pixels = lm.image_processor(images=list(images), return_tensors="pt")["pixel_values"].to(lm.device)
    # forward
    with torch.inference_mode():
        feats = lm.model.encode_image(pixels) if _is_open_clip(key) else _hf_features(lm.model.get_image_features(pixel_values=pixels))
    # postprocess
    return _normalise(feats).cpu().numpy().astype("float32")


def _hf_features(out: Any) -> Any:
    # transformers 5 may return a ModelOutput (pooler_output = projected features) or a tensor
    if hasattr(out, "pooler_output") and not hasattr(out, "shape"):
        return out.pooler_output
    return out


def encode_texts(key: str, texts: Sequence[str], progress: Progress | None = None) -> Any:
    """Texts -> (n, d) float32 numpy, L2-normalised; truncated to 77 tokens."""
    import torch

    lm = _loaded(key, progress)
    if _is_open_clip(key):
        tokens = lm.tokenizer(list(texts)).to(lm.device)  # SimpleTokenizer truncates to 77
        with torch.inference_mode():
            feats = lm.model.encode_text(tokens)
    else:
        enc = lm.tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True,
                           max_length=MAX_TEXT_TOKENS)
        enc = {k: v.to(lm.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        with torch.inference_mode():
            feats = _hf_features(lm.model.get_text_features(**enc))
    return _normalise(feats).cpu().numpy().astype("float32")


def logit_scale(key: str) -> float:
    """exp(logit_scale): the temperature the model was trained with."""
    import torch

    lm = _loaded(key)
    with torch.inference_mode():
        return float(lm.model.logit_scale.exp().clamp(max=100).item())


# -- zero-shot ---------------------------------------------------------------------------------
def parse_labels(labels: str | Sequence[str] | None) -> list[str]:
    if labels is None or (isinstance(labels, str) and not labels.strip()):
        return list(DEFAULT_LABELS)
    if isinstance(labels, str) and len(labels) > MAX_LABELS * 122:
        raise InputError(f"The labels text is too long ({len(labels)} characters); give at most {MAX_LABELS} labels.")
    items = re.split(r"[,\n;]", labels) if isinstance(labels, str) else list(labels)
    out: list[str] = []
    seen: set[str] = set()
    for item in items:
        # Control characters cannot mean anything in a label; drop them rather than fail.
        item = re.sub(r"[\x00-\x1f\x7f]", "", str(item)).strip()
        if item and item.lower() not in seen:
            if len(item) > 120:
                raise InputError(f"Label {item[:30]!r}... is too long (over 120 characters).")
            seen.add(item.lower())
            out.append(item)
            if len(out) > MAX_LABELS:
                raise InputError(f"At most {MAX_LABELS} labels at a time.")
    if len(out) < 2:
        raise InputError("Give at least two different labels, separated by commas.")
    return out


def check_template(template: str | None) -> str:
    template = (template or "").strip() or DEFAULT_TEMPLATE
    if template.count("{label}") != 1:
        raise InputError('The prompt template must contain {label} exactly once, e.g. "An H&E image of {label}."')
    try:
        template.format(label="x")
    except (KeyError, IndexError, ValueError):
        raise InputError("The prompt template may only use the {label} placeholder (no other braces).") from None
    return template


def zero_shot_one(key: str, image: Any, labels: list[str], template: str,
                  progress: Progress | None = None) -> dict[str, float]:
    import numpy as np

    img = encode_images(key, [image], progress)[0]
    txt = encode_texts(key, [template.format(label=label) for label in labels])
    logits = logit_scale(key) * (txt @ img)
    logits = logits - logits.max()
    probs = np.exp(logits) / np.exp(logits).sum()
    return {label: float(p) for label, p in zip(labels, probs)}


def zero_shot(
    image: Any,
    labels: str | Sequence[str] | None = None,
    template: str | None = DEFAULT_TEMPLATE,
    keys: Sequence[str] = MODELS,
    progress: Progress | None = None,
) -> dict[str, dict[str, Any]]:
    """{key: {"probs": {label: p} | None, "error": str | None}} for each model.

    A model that cannot run (e.g. the CLIP baseline offline) reports why; the others answer."""
    pil = _as_image(image)
    label_list = parse_labels(labels)
    template = check_template(template)
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        try:
            out[key] = {"probs": zero_shot_one(key, pil, label_list, template, progress), "error": None}
        except ModelUnavailableError as exc:
            out[key] = {"probs": None, "error": exc.reason + (f" Fix: {exc.fix}" if exc.fix else "")}
    if all(v["probs"] is None for v in out.values()):
        first = next(iter(out.values()))
        raise ModelUnavailableError(keys[0], first["error"] or "no model could run.")
    return out


def _as_image(image: Any) -> Any:
    from PIL import Image

    from medlab.io.imaging import load_image

    if image is None:
        raise InputError("Upload an image (an H&E tile works best).")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return load_image(image).image


# -- index storage -------------------------------------------------------------------------------
def image_collection(key: str) -> Any:
    from medlab.retrieval.vectorstore import collection_name, get_collection, model_fingerprint

    _check_key(key)
    return get_collection(collection_name("pathology", key, model_fingerprint(key)),
                          metadata={"medlab:model": key})


def index_info(key: str) -> dict[str, Any]:
    """Collection name and size for `key` (no model load)."""
    try:
        col = image_collection(key)
    except ModelUnavailableError as exc:
        return {"model": key, "collection": None, "count": 0, "error": exc.reason}
    return {"model": key, "collection": col.name, "count": col.count(), "error": None}


def thumbs_dir() -> Path:
    return load_settings().data_dir / "pathology" / "thumbs"


def _thumb_path(sha: str) -> Path:
    return thumbs_dir() / sha[:2] / f"{sha}.jpg"


def _save_thumb(img: Any, sha: str) -> Path:
    path = _thumb_path(sha)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    thumb = img.copy()
    thumb.thumbnail((THUMB_SIDE, THUMB_SIDE))
    tmp = path.with_suffix(".part")
    thumb.save(tmp, format="JPEG", quality=90)
    tmp.replace(path)  # atomic: never a half-written thumbnail
    return path


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
    this folder (same `source`) and are gone now leave the index."""
    from medlab.io.imaging import load_image
    from medlab.retrieval.vectorstore import existing_ids, upsert

    _check_key(key)
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
                "label": info.get("label", ""), "thumb": str(_thumb_path(sha)), "sha256": sha}

    kept: set[str] = set(present)
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        ids, pils, metas = [], [], []
        for sha, p, rel in batch:
            try:
                img = load_image(p).image
            except MedlabError as exc:
                report.skipped.append((rel, str(exc)))
                continue
            _save_thumb(img, sha)  # thumbnail first: a stored row always has its thumbnail
            ids.append(sha)
            pils.append(img)
            metas.append(meta(sha, rel))
        if ids:
            vecs = encode_images(key, pils, progress)
            upsert(col, ids, vecs, metas)
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
        with _NONEMPTY_LOCK:
            _NONEMPTY.discard(col.id)
        report.removed = len(stale)
    report.total = col.count()
    report_progress(1.0, "Index ready")
    log.info("pathology index: %s", report.summary())
    return report


# -- zip uploads ---------------------------------------------------------------------------------
def _check_zip(zf: zipfile.ZipFile, name: str) -> list[zipfile.ZipInfo]:
    """Refuse the whole archive (before extracting anything) when it is unsafe."""
    infos = zf.infolist()
    if len(infos) > ZIP_MAX_MEMBERS:
        raise UnsafeArchiveError(f"{name} holds {len(infos)} files; the limit is {ZIP_MAX_MEMBERS}.")
    total = 0
    compressed = 0
    for info in infos:
        member = info.filename
        parts = member.replace("\\", "/").split("/")
        if member.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", member) or ".." in parts:
            raise UnsafeArchiveError(
                f"{name} contains an unsafe path ({member!r}) that would write outside its folder; "
                "the archive was refused and nothing was changed."
            )
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError(f"{name} contains a symbolic link ({member!r}); the archive was refused.")
        if info.flag_bits & 0x1:
            raise UnsafeArchiveError(f"{name} is encrypted; upload an unencrypted zip.")
        total += info.file_size
        compressed += info.compress_size
        if info.file_size > 1024 * 1024 and info.file_size > ZIP_MAX_RATIO * max(1, info.compress_size):
            raise UnsafeArchiveError(
                f"{name} looks like a zip bomb ({member!r} expands {info.file_size // max(1, info.compress_size)}x); refused."
            )
    if total > ZIP_MAX_TOTAL_BYTES:
        raise UnsafeArchiveError(
            f"{name} would expand to {total / 2**20:.0f} MB (limit {ZIP_MAX_TOTAL_BYTES / 2**20:.0f} MB); refused."
        )
    if total > 16 * 1024 * 1024 and total > ZIP_MAX_RATIO * max(1, compressed):
        raise UnsafeArchiveError(f"{name} looks like a zip bomb (expands {total // max(1, compressed)}x); refused.")
    return infos


def index_zip(
    zip_path: str | Path,
    key: str = "plip",
    name: str | None = None,
    progress: Progress | None = None,
) -> IndexReport:
    """Index the images of an uploaded zip. Unsafe archives are refused as a whole; non-image
    members are skipped and listed in the report. Re-uploading a zip with the same name
    replaces what that zip added before."""
    zp = Path(zip_path)
    display = Path(name or zp.name).name
    if not zp.is_file():
        raise InputError("No zip file was uploaded.")
    if not zipfile.is_zipfile(zp):
        raise UnsupportedFileError(f"{display} is not a zip archive.")
    with zipfile.ZipFile(zp) as zf:
        infos = _check_zip(zf, display)
        with tempfile.TemporaryDirectory(prefix="medlab-zip-") as tmp:
            root = Path(tmp)
            for info in infos:
                if info.is_dir():
                    continue
                target = (root / info.filename).resolve()
                if root.resolve() not in target.parents:  # belt and braces after _check_zip
                    raise UnsafeArchiveError(f"{display}: unsafe path {info.filename!r}; refused.")
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    remaining = info.file_size + 1
                    while chunk := src.read(1 << 20):  # stop a member that lies about its size
                        remaining -= len(chunk)
                        if remaining < 0:
                            raise UnsafeArchiveError(f"{display}: {info.filename!r} is larger than declared; refused.")
                        dst.write(chunk)
            return index_folder(root, key=key, source=f"upload:{display}", progress=progress)


# -- search -----------------------------------------------------------------------------------
def _hits(res: dict[str, Any]) -> list[Hit]:
    hits = []
    for id_, meta, dist in zip(res["ids"][0], res["metadatas"][0], res["distances"][0]):
        hits.append(Hit(id_, round(1.0 - float(dist), 4), meta.get("file", ""), meta.get("caption", ""),
                        meta.get("label", ""), meta.get("thumb", ""), meta.get("source", "")))
    return hits


# Collections (by chroma's per-collection UUID, unique across stores) seen non-empty in this process. chroma's count() and even get(limit=1) scan the
# whole collection (~14 ms at 100k vectors), so the emptiness check before a search (which
# avoids loading a model for nothing) is paid once, not per query. Removals reset it.
_NONEMPTY: set[Any] = set()
_NONEMPTY_LOCK = threading.Lock()


def _nonempty(key: str) -> Any:
    col = image_collection(key)
    with _NONEMPTY_LOCK:
        if col.id in _NONEMPTY:
            return col
    if not col.get(limit=1, include=[])["ids"]:
        raise EmptyIndexError(EMPTY_INDEX_HELP.format(model=get_spec(key).title))
    with _NONEMPTY_LOCK:
        _NONEMPTY.add(col.id)
    return col


def _k(k: Any) -> int:
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise InputError("k must be a whole number.") from None
    if not 1 <= k <= 100:
        raise InputError("k must be between 1 and 100.")
    return k


def search_text(query: str, k: int = 8, key: str = "plip", progress: Progress | None = None) -> list[Hit]:
    """Text -> the k most similar indexed images (cosine similarity)."""
    query = (query or "").strip()
    if not query:
        raise InputError('Type a description, e.g. "tumor epithelium with glands".')
    if len(query) > 500:
        raise InputError("The query is too long (over 500 characters).")
    col = _nonempty(key)
    k = _k(k)
    vec = encode_texts(key, [query], progress)[0]
    # chroma returns fewer than k rows for a small index, so no count() is needed here
    res = col.query(query_embeddings=[vec.tolist()], n_results=k, include=["metadatas", "distances"])
    return _hits(res)


def search_image(
    image: Any = None,
    k: int = 8,
    key: str = "plip",
    item_id: str | None = None,
    progress: Progress | None = None,
) -> list[Hit]:
    """Image -> the k most similar indexed images ("more like this").

    `item_id` (an indexed image's id) reuses its stored embedding; an uploaded file whose
    bytes are already indexed does too, so the query image itself comes back first."""
    import numpy as np

    col = _nonempty(key)
    k = _k(k)
    vec = None
    lookup = item_id
    if lookup is None and isinstance(image, (str, os.PathLike)) and Path(image).is_file():
        lookup = file_sha256(Path(image))
    if lookup:
        got = col.get(ids=[lookup], include=["embeddings"])
        if got["ids"]:
            vec = np.asarray(got["embeddings"][0], dtype="float32")
        elif item_id is not None:
            raise InputError("That image is no longer in the index; search again.")
    if vec is None:
        vec = encode_images(key, [_as_image(image)], progress)[0]
    res = col.query(query_embeddings=[vec.tolist()], n_results=k, include=["metadatas", "distances"])
    hits = _hits(res)
    if lookup and any(h.id == lookup for h in hits):  # exact self-match first even on ties
        hits.sort(key=lambda h: (h.id != lookup, -h.score))
    return hits


def load_thumbnail(hit: Hit) -> Any:
    """The hit's thumbnail as a PIL image (a grey tile if it went missing)."""
    from PIL import Image

    try:
        with Image.open(hit.thumb) as img:
            return img.convert("RGB")
    except (OSError, ValueError):
        return Image.new("RGB", (THUMB_SIDE, THUMB_SIDE), (200, 200, 200))


# -- what the UI may index -------------------------------------------------------------------------
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "assets" / "pathology"


def allowed_roots() -> list[Path]:
    """Server folders the UI may index: the data dir, the bundled examples, and any listed in
    MEDLAB_INDEX_ROOTS (os.pathsep-separated). A public Space must not let visitors index
    (and then browse thumbnails of) arbitrary server paths."""
    roots = [load_settings().data_dir, EXAMPLES_DIR]
    extra = os.environ.get("MEDLAB_INDEX_ROOTS", "")
    roots += [Path(p).expanduser() for p in extra.split(os.pathsep) if p.strip()]
    return [r.resolve() for r in roots]


def check_index_root(folder: str | Path) -> Path:
    path = Path(folder).expanduser().resolve()
    for root in allowed_roots():
        if path == root or root in path.parents:
            return path
    raise InputError(
        f"{folder} is outside the folders the app may index ({', '.join(str(r) for r in allowed_roots())}). "
        "Upload a .zip instead, or add the folder to MEDLAB_INDEX_ROOTS on the server."
    )


def index_examples(key: str = "plip", progress: Progress | None = None) -> IndexReport:
    """Index the bundled example tiles (assets/pathology) so search works offline."""
    return index_folder(EXAMPLES_DIR, key=key, source="examples", progress=progress)
