"""Where the default pathology index gets its tiles: one interface, four sources.

A TileSource yields Tile(id, data, name, label, caption) where id = sha256 of the image bytes
(the same id the image index gives any image). Sources: a Hub dataset of parquet shards
(`image` {bytes} + `label` columns, the shape `datasets` writes), a local parquet file of the
same shape, a local folder and a local zip. `open_source(setting)` picks one from the value of
MEDLAB_PATHOLOGY_SOURCE through the SOURCES table ("off" -> None).

Errors a user can fix (missing, gated, offline, not an image set) are TileSourceError with
the reason and the fix, translated from huggingface_hub's exception classes."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Protocol

from medlab.core.errors import MedlabError
from medlab.core.specs import KATHER_CLASSES

log = logging.getLogger(__name__)

# NCT-CRC-HE folder / label codes -> the app's label text (KATHER_CLASSES is in code order).
KATHER_CODES = dict(zip(("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"), KATHER_CLASSES))
DEFAULT_HUB_PATTERN = "*.parquet"
OFF_VALUES = frozenset({"off", "none", "0", "false", "no"})
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:.+)?$")
FIX = ("set MEDLAB_PATHOLOGY_SOURCE to a Hub dataset id of parquet shards with an `image` column, "
       "a local folder / .zip / .parquet of H&E tiles, or `off`")


class TileSourceError(MedlabError):
    """The configured tile source cannot be used; `reason` and `fix` are shown to the user."""

    def __init__(self, reason: str, fix: str = FIX) -> None:
        self.reason = reason
        self.fix = fix
        super().__init__(f"{reason} Fix: {fix}.")


@dataclass(frozen=True)
class Tile:
    id: str  # sha256 of `data`
    data: bytes
    name: str
    label: str = ""
    caption: str = ""


class TileSource(Protocol):
    description: str

    def count(self) -> int | None: ...  # tiles it will yield, when known before iterating
    def tiles(self) -> Iterator[Tile]: ...


def label_text(raw: Any, names: list[str] | None = None) -> str:
    """A class index (with the dataset's class names) or a code like "TUM" -> readable text."""
    if raw is None:
        return ""
    if isinstance(raw, int) and names and 0 <= raw < len(names):
        raw = names[raw]
    text = str(raw).strip()
    return KATHER_CODES.get(text.upper(), text)


def make_tile(data: bytes, name: str, label: str = "") -> Tile:
    caption = f"H&E tile: {label}" if label else ""
    return Tile(hashlib.sha256(data).hexdigest(), data, name, label, caption)


# -- local folder and zip --------------------------------------------------------------------------
class FolderSource:
    """Images under a folder; label from a CSV beside them (file,label,caption) or the folder name."""

    def __init__(self, root: Path) -> None:
        from medlab.retrieval.image_index import read_captions, scan_folder

        self.root = root.resolve()
        self.description = f"folder {self.root}"
        self.paths, _ = scan_folder(self.root)
        if not self.paths:
            raise TileSourceError(f"{self.root} holds no images (PNG, JPEG, TIFF, WebP, BMP or GIF).")
        self.captions = read_captions(self.root)

    def count(self) -> int | None:
        return len(self.paths)

    def tiles(self) -> Iterator[Tile]:
        for p in self.paths:
            rel = p.relative_to(self.root).as_posix()
            info = self.captions.get(rel) or self.captions.get(p.name) or {}
            label = info.get("label") or (label_text(p.parent.name) if p.parent != self.root else "")
            tile = make_tile(p.read_bytes(), rel, label_text(label) if label else "")
            if info.get("caption"):
                tile = Tile(tile.id, tile.data, tile.name, tile.label, info["caption"])
            yield tile


class ZipSource:
    """Images inside a zip (read in memory, never extracted); checked by medlab.io.archives."""

    def __init__(self, path: Path) -> None:
        from medlab.io.archives import safe_members
        from medlab.retrieval.image_index import IMAGE_SUFFIXES

        if not zipfile.is_zipfile(path):
            raise TileSourceError(f"{path} is not a zip archive.")
        self.path = path
        self.description = f"zip {path}"
        with zipfile.ZipFile(path) as zf:
            self.members = [i.filename for i in safe_members(zf, path.name)
                            if not i.is_dir() and Path(i.filename).suffix.lower() in IMAGE_SUFFIXES
                            and not any(part.startswith(".") or part == "__MACOSX" for part in Path(i.filename).parts)]
        if not self.members:
            raise TileSourceError(f"{path} holds no images (PNG, JPEG, TIFF, WebP, BMP or GIF).")

    def count(self) -> int | None:
        return len(self.members)

    def tiles(self) -> Iterator[Tile]:
        with zipfile.ZipFile(self.path) as zf:
            for name in self.members:
                parent = Path(name).parent.name
                yield make_tile(zf.read(name), name, label_text(parent) if parent else "")


# -- parquet (the shape `datasets` writes: image struct {bytes, path}, label ClassLabel) ----------
class ParquetFileSource:
    def __init__(self, path: Path, name: str | None = None) -> None:
        import pyarrow.parquet as pq

        self.path = path
        self.description = f"parquet {name or path}"
        try:
            self.file = pq.ParquetFile(path)
        except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
            raise TileSourceError(f"{name or path} is not a readable parquet file ({type(exc).__name__}).") from exc
        schema = self.file.schema_arrow
        self.image_col = next((c for c in ("image", "img", "png", "jpg") if c in schema.names), None)
        if self.image_col is None:
            raise TileSourceError(f"{name or path} is not an image set: no `image` column "
                                  f"(columns: {', '.join(schema.names[:8])}).")
        self.label_col = next((c for c in ("label", "labels", "class") if c in schema.names), None)
        self.names = _class_names(schema.metadata, self.label_col)

    def count(self) -> int | None:
        return int(self.file.metadata.num_rows)

    def tiles(self) -> Iterator[Tile]:
        cols = [self.image_col] + ([self.label_col] if self.label_col else [])
        row = 0
        for batch in self.file.iter_batches(batch_size=64, columns=cols):
            images = batch.column(self.image_col).to_pylist()
            labels = batch.column(self.label_col).to_pylist() if self.label_col else [None] * len(images)
            for image, label in zip(images, labels):
                data = image.get("bytes") if isinstance(image, dict) else image
                name = (image.get("path") if isinstance(image, dict) else None) or f"{self.path.name}#{row}"
                row += 1
                if isinstance(data, (bytes, bytearray)) and data:
                    yield make_tile(bytes(data), name, label_text(label, self.names))
                else:
                    yield Tile("", b"", name)  # counted as a failed tile by the builder


def _class_names(metadata: dict[bytes, bytes] | None, label_col: str | None) -> list[str] | None:
    """ClassLabel names from the `huggingface` schema metadata `datasets` writes."""
    try:
        info = json.loads((metadata or {})[b"huggingface"])
        return list(info["info"]["features"][label_col]["names"])
    except (KeyError, TypeError, ValueError):
        return None


class HubParquetSource:
    """Parquet shards of a Hub dataset, downloaded one at a time into the HF cache (resumable).
    Setting: "owner/name" or "owner/name:<glob of files>"."""

    def __init__(self, spec: str) -> None:
        repo, _, pattern = spec.partition(":")
        self.repo = repo
        self.pattern = pattern or DEFAULT_HUB_PATTERN
        self.description = f"Hub dataset {repo}"
        with _hub_errors(repo):
            from huggingface_hub import HfApi

            files = HfApi().list_repo_files(repo, repo_type="dataset")
        self.files = sorted(f for f in files if f.endswith(".parquet") and fnmatch(f, self.pattern))
        if not self.files:
            raise TileSourceError(f"The Hub dataset {repo} has no parquet files matching {self.pattern!r}, "
                                  "so it is not an image set this app can read.")
        self._known: int | None = None

    def count(self) -> int | None:
        return self._known  # known shard by shard; the builder caps with MEDLAB_PATHOLOGY_MAX_TILES

    def tiles(self) -> Iterator[Tile]:
        from huggingface_hub import hf_hub_download

        seen = 0
        for name in self.files:
            with _hub_errors(self.repo):
                local = hf_hub_download(self.repo, name, repo_type="dataset")
            shard = ParquetFileSource(Path(local), f"{self.repo}/{name}")
            seen += shard.count() or 0
            self._known = seen
            yield from shard.tiles()


class _hub_errors:
    """Translate huggingface_hub exception classes into TileSourceError."""

    def __init__(self, repo: str) -> None:
        self.repo = repo

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None:
            return False
        from huggingface_hub import errors as e

        repo = self.repo
        table: list[tuple[type[BaseException], str, str]] = [
            (e.GatedRepoError, f"The Hub dataset {repo} is gated: accept its terms on the Hub.",
             "log in with `hf auth login` (or set HF_TOKEN) after accepting the terms, or " + FIX),
            (e.RepositoryNotFoundError, f"The Hub dataset {repo} does not exist (or is private).", FIX),
            (e.RevisionNotFoundError, f"The Hub dataset {repo} has no such revision.", FIX),
            (e.OfflineModeIsEnabled, f"The Hub is switched off (HF_HUB_OFFLINE=1), so {repo} cannot be fetched.",
             "run `python -m medlab prepare` on a machine with internet access, or " + FIX),
            (e.LocalEntryNotFoundError, f"{repo} is not in the local Hugging Face cache and the Hub cannot be reached.",
             "run `python -m medlab prepare` on a machine with internet access, or " + FIX),
            (e.HfHubHTTPError, f"The Hub refused the request for {repo}.", FIX),
            (OSError, f"The Hub cannot be reached to fetch {repo}.",
             "check the network (or HF_ENDPOINT), or " + FIX),
        ]
        for cls, reason, fix in table:
            if isinstance(exc, cls):
                raise TileSourceError(f"{reason} ({type(exc).__name__})", fix) from exc
        try:  # httpx transport errors are not OSErrors
            import httpx

            if isinstance(exc, httpx.TransportError):
                raise TileSourceError(f"The Hub cannot be reached to fetch {repo}. ({type(exc).__name__})",
                                      "check the network (or HF_ENDPOINT), or " + FIX) from exc
        except ImportError:
            pass
        return False


# -- the setting -> a source -----------------------------------------------------------------------
def _missing(value: str) -> TileSource:
    raise TileSourceError(f"MEDLAB_PATHOLOGY_SOURCE={value!r}: no such file or folder on this machine.")


def _unknown(value: str) -> TileSource:
    raise TileSourceError(f"MEDLAB_PATHOLOGY_SOURCE={value!r} is neither a Hub dataset id (owner/name), "
                          "a folder, a .zip nor a .parquet file.")


def _looks_local(v: str) -> bool:
    if v.startswith(("/", ".", "~")) or "\\" in v:
        return True
    return ":" not in v and Path(v).suffix.lower() in (".zip", ".parquet")  # "owner/name:glob" is the Hub


# First match wins: (test, make).
SOURCES: tuple[tuple[Callable[[str], bool], Callable[[str], TileSource]], ...] = (
    (lambda v: Path(v).expanduser().is_dir(), lambda v: FolderSource(Path(v).expanduser())),
    (lambda v: Path(v).expanduser().is_file() and Path(v).suffix.lower() == ".zip",
     lambda v: ZipSource(Path(v).expanduser())),
    (lambda v: Path(v).expanduser().is_file() and Path(v).suffix.lower() == ".parquet",
     lambda v: ParquetFileSource(Path(v).expanduser())),
    (_looks_local, _missing),
    (lambda v: bool(_REPO_ID.match(v)), HubParquetSource),
    (lambda v: True, _unknown),
)


def is_off(value: str) -> bool:
    return value.strip().lower() in OFF_VALUES


def open_source(value: str) -> TileSource | None:
    """The source for a MEDLAB_PATHOLOGY_SOURCE value; None for "off"."""
    value = value.strip()
    if is_off(value):
        return None
    for test, make in SOURCES:
        if test(value):
            return make(value)
    raise AssertionError("unreachable: the last SOURCES row matches everything")
