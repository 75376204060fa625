"""The teaching set: one folder per class (a .zip, a server folder under the allowed roots,
or a Hub dataset id), PNG/JPEG and DICOM slices, an optional CSV of groups (patient or lesion
id), content-hash duplicates, and a split that keeps every group on one side.

Everything wrong with the input is a TeachDataError (an InputError) whose message says what
and where; files that cannot be used (not an image, corrupt) are skipped and counted."""

from __future__ import annotations

import csv
import logging
import re
import tempfile
import warnings
import zipfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medlab.core.config import load_settings
from medlab.core.errors import InputError
from medlab.io.files import file_sha256

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
IGNORED_NAMES = ("__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini")
MIN_PER_CLASS = 2  # one image for training and one held out, at the very least
NO_GROUPS_NOTE = (
    "No groups were given, so the split is by image. Neighbouring slices of one patient look "
    "almost alike; when they sit on both sides of the split the test set is no longer unseen and "
    "held-out accuracy is inflated (this is how IQ-OTH/NCCD papers report ~99%). Upload a CSV "
    "mapping files to patient ids to get an honest number."
)


class TeachDataError(InputError):
    """The teaching set cannot be used as given (the message says why and what to do)."""


@dataclass
class Item:
    path: Path
    rel: str  # path inside the dataset, "<class>/<...>/<file>"
    label: int
    sha256: str
    group: str


@dataclass
class TeachSet:
    classes: list[str]
    items: list[Item]
    source: str
    grouped: bool
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> relative paths
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def skip(self, reason: str, rel: str) -> None:
        self.skipped.setdefault(reason, []).append(rel)

    def counts(self) -> dict[str, int]:
        out = {c: 0 for c in self.classes}
        for item in self.items:
            out[self.classes[item.label]] += 1
        return out


# -- archives ------------------------------------------------------------------------------------
def extract_zip(archive: Path, into: Path) -> Path:
    """Extract a zip into `into` under the same safety rules as the pathology zip (traversal,
    links, bombs and size lies refused before or while extracting: medlab.io.archives)."""
    from medlab.io.archives import extract_safely

    into.mkdir(parents=True, exist_ok=True)
    extract_safely(archive, into)
    return into.resolve()


def resolve_folder(folder: str | Path) -> Path:
    """A server folder, only under the roots the app may read (MEDLAB_INDEX_ROOTS + data dir)."""
    from medlab.io.files import allowed_roots, within_allowed_roots

    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise TeachDataError(f"{folder} is not a folder on the server.")
    if within_allowed_roots(path) is None:
        raise TeachDataError(f"{path} is outside the folders the app may read "
                             f"({', '.join(str(r) for r in allowed_roots())}); upload a .zip, or add the "
                             "folder to MEDLAB_INDEX_ROOTS on the server.")
    return path


def hub_dataset(repo_id: str, into: Path) -> Path:
    """A Hub dataset repo laid out as class folders (only on a connected machine)."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from medlab.io.archives import DEFAULT_LIMITS

    ZIP_MAX_TOTAL_BYTES = DEFAULT_LIMITS.max_total_bytes  # noqa: N806 - the zip limit, read once

    try:
        info = HfApi().dataset_info(repo_id, files_metadata=True)
        total = sum(int(f.size or 0) for f in info.siblings or [])
        if total > ZIP_MAX_TOTAL_BYTES:  # a visitor must not make the server fetch anything, any size
            raise TeachDataError(f"the Hub dataset {repo_id!r} holds {total / 2**30:.1f} GB; the limit is "
                                 f"{ZIP_MAX_TOTAL_BYTES / 2**30:.0f} GB (the same as an uploaded zip).")
        return Path(snapshot_download(repo_id, repo_type="dataset", local_dir=into / "hub"))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise TeachDataError(f"the Hub dataset {repo_id!r} could not be fetched ({type(exc).__name__}); "
                             "this needs a machine connected to the Hub. Upload a .zip instead.") from None


def materialise(source: str | Path, workdir: Path) -> tuple[Path, str]:
    """(local folder, display name) for a zip, a server folder or a Hub dataset id."""
    text = str(source).strip()
    if not text:
        raise TeachDataError("No data was given: upload a .zip with one folder per class.")
    path = Path(text).expanduser()
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise TeachDataError(f"{path.name} is not a .zip archive; upload a .zip with one folder per class.")
        return extract_zip(path, workdir / "data"), path.name
    if path.is_dir():
        return resolve_folder(path), str(path)
    if re.fullmatch(r"[\w.\-]+/[\w.\-]+", text):
        return hub_dataset(text, workdir), f"hf:{text}"
    raise TeachDataError(f"{text!r} is neither an uploaded .zip, a server folder nor a Hub dataset id.")


# -- scanning -------------------------------------------------------------------------------------
def _visible(p: Path) -> bool:
    return not p.name.startswith(".") and p.name not in IGNORED_NAMES


def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES + DICOM_SUFFIXES


def class_root(folder: Path) -> Path:
    """Descend through single wrapper folders ("IQ-OTHNCCD/The IQ-OTHNCCD dataset/...")."""
    current = folder
    for _ in range(8):
        entries = [p for p in current.iterdir() if _visible(p)]
        dirs = [p for p in entries if p.is_dir()]
        files = [p for p in entries if p.is_file() and _is_image_name(p)]
        # one folder holding folders is a wrapper; one folder holding only images is one class
        if len(dirs) == 1 and not files and any(p.is_dir() and _visible(p) for p in dirs[0].iterdir()):
            current = dirs[0]
            continue
        break
    return current


def read_groups(csv_path: str | Path | None) -> dict[str, str]:
    """file -> group from a CSV with a file column and a group column (header names like
    file/path/image and group/patient/lesion/id; else the first two columns)."""
    if not csv_path:
        return {}
    try:
        text = Path(csv_path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TeachDataError(f"the groups CSV could not be read ({type(exc).__name__}).") from None
    rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
    if not rows or len(rows[0]) < 2:
        raise TeachDataError("the groups CSV needs two columns: file, group (patient or lesion id).")
    head = [c.strip().lower() for c in rows[0]]
    file_col = next((i for i, c in enumerate(head) if c in ("file", "filename", "path", "image", "image_id")), None)
    group_col = next((i for i, c in enumerate(head) if c in ("group", "patient", "patient_id", "lesion",
                                                              "lesion_id", "id", "subject")), None)
    if file_col is None or group_col is None:
        file_col, group_col = 0, 1  # no recognised header: the first row is data
    else:
        rows = rows[1:]
    return {r[file_col].strip().replace("\\", "/"): r[group_col].strip() for r in rows if len(r) > max(file_col, group_col)}


def scan(folder: Path, source: str, groups: dict[str, str] | None = None, max_images: int | None = None) -> TeachSet:
    """Class folders -> items (hashed, deduplicated, grouped). Raises TeachDataError for
    unusable layouts (one class, an empty class, images outside class folders, too many)."""
    root = class_root(folder)
    entries = sorted((p for p in root.iterdir() if _visible(p)), key=lambda p: p.name)
    loose = [p.name for p in entries if p.is_file() and _is_image_name(p)]
    if loose:
        raise TeachDataError(f"{len(loose)} image(s) sit outside any class folder (e.g. {loose[0]!r}); "
                             "a class name must be a folder: put each class's images in a folder named after it.")
    class_dirs = [p for p in entries if p.is_dir()]
    if len(class_dirs) < 2:
        found = f"only one class folder ({class_dirs[0].name!r})" if class_dirs else "no class folder"
        raise TeachDataError(f"Found {found}; a classifier needs at least two classes, one folder each.")
    cap = max_images or load_settings().teach_max_images
    dataset = TeachSet([p.name for p in class_dirs], [], source, grouped=bool(groups))
    files: list[tuple[Path, str, int]] = []
    for label, cdir in enumerate(class_dirs):
        found = 0
        for p in sorted(cdir.rglob("*")):
            if not p.is_file() or any(not _visible(Path(part)) for part in p.relative_to(root).parts):
                continue
            rel = p.relative_to(root).as_posix()
            if not _is_image_name(p):
                dataset.skip("not an image or DICOM file", rel)
                continue
            files.append((p, rel, label))
            found += 1
        if found == 0:
            raise TeachDataError(f"The class folder {cdir.name!r} holds no images (PNG/JPEG or DICOM).")
    if len(files) > cap:
        raise TeachDataError(f"The set holds {len(files)} images; the cap is {cap} (MEDLAB_TEACH_MAX_IMAGES). "
                             "Teach on a subset, or raise the cap on the server.")

    by_hash: dict[str, list[tuple[Path, str, int]]] = defaultdict(list)
    for p, rel, label in files:
        by_hash[file_sha256(p)].append((p, rel, label))
    groups = groups or {}
    for digest, copies in by_hash.items():
        labels = {label for _, _, label in copies}
        if len(copies) > 1:
            dataset.duplicates.append({
                "sha256": digest, "files": [rel for _, rel, _ in copies],
                "classes": sorted(dataset.classes[i] for i in labels),
                "action": "all copies dropped (one image cannot teach two classes)" if len(labels) > 1
                else "kept one copy"})
        if len(labels) > 1:
            continue
        p, rel, label = copies[0]
        group = groups.get(rel) or groups.get(rel.split("/", 1)[-1]) or groups.get(p.name) or f"file:{digest[:16]}"
        dataset.items.append(Item(p, rel, label, digest, group))
    dataset.items.sort(key=lambda it: it.rel)
    if groups:
        unmatched = sum(1 for it in dataset.items if it.group.startswith("file:"))
        if unmatched:
            dataset.notes.append(f"{unmatched} image(s) are not in the groups CSV; each is its own group.")
    else:
        dataset.notes.append(NO_GROUPS_NOTE)
    check_class_sizes(dataset)
    return dataset


def check_class_sizes(dataset: TeachSet, minimum: int = MIN_PER_CLASS) -> None:
    for name, n in dataset.counts().items():
        if n < minimum:
            raise TeachDataError(f"The class {name!r} has {n} usable image(s); at least {minimum} are needed "
                                 "(one to learn from, one to test on).")


# -- the split ----------------------------------------------------------------------------------------
def grouped_split(labels: Sequence[int], groups: Sequence[str], test_fraction: float = 0.2,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices): every group entirely on one side, classes stratified as
    far as the groups allow (scikit-learn's StratifiedGroupKFold, first fold held out). Each
    class keeps at least one training example when it can."""
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(labels)
    g = np.asarray(groups)
    n_splits = max(2, int(round(1.0 / min(max(test_fraction, 0.05), 0.5))))
    n_groups = len(set(g.tolist()))
    if n_groups < 2:
        raise TeachDataError("All images belong to one group, so nothing can be held out; check the groups CSV.")
    # small sets: fewer folds (a larger held-out share) rather than sklearn refusing to split
    n_splits = min(n_splits, n_groups, int(np.bincount(y).max()))
    splitter = StratifiedGroupKFold(n_splits=max(2, n_splits), shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        train, test = next(splitter.split(np.zeros(len(y)), y, g))
    return np.sort(train), np.sort(test)


def split_report(dataset: TeachSet, train: np.ndarray, test: np.ndarray) -> dict[str, Any]:
    """Checks of the split, recomputed from the items: groups or identical images on both sides."""
    items = dataset.items
    g_train = {items[i].group for i in train}
    g_test = {items[i].group for i in test}
    h_train = {items[i].sha256 for i in train}
    h_test = {items[i].sha256 for i in test}
    return {
        "groups_on_both_sides": sorted(g_train & g_test),
        "identical_images_on_both_sides": len(h_train & h_test),
        "test_classes_missing": [c for i, c in enumerate(dataset.classes)
                                 if not any(items[j].label == i for j in test)],
    }


def work_dir() -> tempfile.TemporaryDirectory[str]:
    """A scratch folder inside the data dir (uploads may be large; /tmp may be small)."""
    base = load_settings().data_dir / "taught" / "tmp"
    base.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix="teach-", dir=base)
