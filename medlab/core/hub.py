"""Fetching a Hub source into the local Hugging Face cache, with our file policy.

Loaders fetch a Hub repo themselves (snapshot_download) and then load the local snapshot
folder: huggingface_hub's typed errors (gated, not found, revision, offline, server) then
reach medlab.core.load_errors intact, download progress reaches the UI, and the weights on
disk can be checked before any library builds a model from them."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from medlab.core.config import load_settings
from medlab.core.errors import ModelUnavailableError
from medlab.core.progress import Progress, no_progress
from medlab.core.registry import ModelSource

# Never fetch pickle weights or other frameworks' files for an app that loads safetensors.
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.ckpt"]
OTHER_FRAMEWORKS = ["*.h5", "*.msgpack", "*.onnx", "*.onnx_data", "*.ot", "tf_model*", "flax_model*", "*.gguf"]
IGNORE_PATTERNS = PICKLE_PATTERNS + OTHER_FRAMEWORKS


def ignore_patterns() -> list[str]:
    return OTHER_FRAMEWORKS if load_settings().allow_pickle else IGNORE_PATTERNS


def download_message(done_bytes: float, total_bytes: float, new_bytes: float, seconds: float) -> str:
    """'Downloading weights: 12.0 of 48.0 MB, 6.0 MB/s, about 6 s left' (rate and time left
    once something has arrived), so a first use shows movement, not a frozen spinner."""
    text = f"Downloading weights: {done_bytes / 2**20:.1f} of {total_bytes / 2**20:.1f} MB"
    if new_bytes > 0 and seconds > 0.2:
        rate = new_bytes / seconds
        text += f", {rate / 2**20:.1f} MB/s, about {max(0.0, total_bytes - done_bytes) / rate:.0f} s left"
    return text


def progress_tqdm(progress: Progress, start: float = 0.05, end: float = 0.35) -> type:
    """A tqdm stand-in class for huggingface_hub's byte bars that reports the fraction of
    bytes downloaded to `progress`, mapped onto [start, end] of the whole load. Files download
    in parallel, one bar each: the bars share one byte count, and what is reported never goes
    backwards (a file that starts later adds to the total)."""
    shared = {"done": 0.0, "new": 0.0, "total": 0.0, "reported": start, "started": time.monotonic()}
    lock = threading.Lock()

    class _Bar:
        def __init__(self, *args: Any, total: float | None = None, initial: float = 0, unit: str = "it",
                     desc: str | None = None, **kwargs: Any) -> None:
            self.total = total
            self.n = initial or 0
            self.unit = unit
            self.desc = desc or ""
            self.disable = False
            if unit == "B" and total:
                with lock:
                    shared["total"] += float(total)
                    shared["done"] += float(self.n)

        def __enter__(self) -> _Bar:
            return self

        def __exit__(self, *exc: Any) -> None:
            return None

        def __iter__(self) -> Any:  # hf_thread_map may iterate a bar over its items
            return iter(())

        def update(self, n: float | None = 1) -> None:
            self.n += n or 0
            if self.unit == "B" and self.total:
                with lock:
                    shared["done"] += n or 0
                    shared["new"] += n or 0  # bytes already there (a resumed download) do not count for the rate
                    fraction = start + (end - start) * min(1.0, shared["done"] / max(shared["total"], 1.0))
                    shared["reported"] = fraction = max(shared["reported"], fraction)
                    message = download_message(shared["done"], shared["total"], shared["new"],
                                               time.monotonic() - shared["started"])
                progress(fraction, message)

        def refresh(self, *args: Any, **kwargs: Any) -> None:
            return None

        def close(self) -> None:
            return None

        def set_description(self, *args: Any, **kwargs: Any) -> None:
            return None

        set_description_str = set_postfix_str = set_postfix = set_description

        def reset(self, total: float | None = None) -> None:
            self.total, self.n = total, 0

    return _Bar


def fetch_snapshot(source: ModelSource, progress: Progress | None = None) -> Path:
    """Download (or find in the cache) the files of a Hub source; returns the snapshot folder.
    Raises huggingface_hub's typed errors; the caller translates them."""
    from huggingface_hub import snapshot_download

    progress = progress or no_progress
    progress(0.02, f"Fetching {source.location} from the Hugging Face Hub (or the local cache)")
    folder = snapshot_download(
        source.location,
        revision=source.revision,
        ignore_patterns=ignore_patterns(),
        tqdm_class=progress_tqdm(progress),  # type: ignore[arg-type]
    )
    return Path(folder)


def require_weights(source: ModelSource, folder: Path, wanted: str = "*.safetensors") -> None:
    """A fetched snapshot must hold weights in a format we load."""
    if any(folder.rglob(wanted)):
        return
    if load_settings().allow_pickle and any(p for pat in PICKLE_PATTERNS for p in folder.rglob(pat)):
        return
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:  # a partial snapshot in the cache, and no way to complete it now
        from medlab.core.load_errors import fix_hint

        raise ModelUnavailableError(
            source.key,
            f"the weights of {source.location} ({wanted}) are not in the local Hugging Face cache and "
            "offline mode is on (HF_HUB_OFFLINE).",
            fix_hint(source),
        )
    others = sorted(p.name for p in folder.iterdir())[:8]
    raise ModelUnavailableError(
        source.key,
        f"{source.location} (revision {source.revision or 'main'}) has no {wanted} weights"
        + (f" (it has: {', '.join(others)})" if others else "")
        + ". The app loads safetensors only, so pickle weights (.bin/.pt) are not fetched.",
        "use a revision of the repo that has .safetensors weights (MEDLAB_REVISION_"
        f"{source.key.upper()}), convert the weights, or set MEDLAB_ALLOW_PICKLE=1 if you trust the repo.",
    )


def damaged_files(folder: Path) -> dict[Path, str]:
    """Files of a Hub-cache snapshot that are not what the Hub sent: a blob named by its
    sha256 (LFS files: weights) whose bytes hash differently, or a safetensors file whose
    structure is broken. snapshot -> why."""
    import hashlib
    import re

    from medlab.core.weights import damage

    out: dict[Path, str] = {}
    for link in sorted(Path(folder).rglob("*")):
        if not link.is_file():
            continue
        blob = link.resolve()
        if re.fullmatch(r"[0-9a-f]{64}", blob.name):
            h = hashlib.sha256()
            with blob.open("rb") as f:
                for block in iter(lambda: f.read(2**20), b""):
                    h.update(block)
            if h.hexdigest() != blob.name:
                out[link] = "its sha256 differs from the Hub's"
                continue
        if link.suffix == ".safetensors" and (why := damage(link)):
            out[link] = why
    return out


def repair_snapshot(source: ModelSource, folder: Path, progress: Progress | None = None) -> list[str]:
    """Delete the damaged files of a fetched snapshot (blob and link) and fetch them again;
    returns what was repaired. huggingface_hub treats a file in the cache as present whatever
    its bytes, so without this a damaged download stays damaged."""
    damaged = damaged_files(folder)
    for link in damaged:
        blob = link.resolve()
        link.unlink(missing_ok=True)
        if blob != link:
            blob.unlink(missing_ok=True)
    if damaged:
        fetch_snapshot(source, progress)
        still = damaged_files(folder)
        if still:
            from medlab.core.errors import WeightsDamagedError

            path, why = next(iter(still.items()))
            raise WeightsDamagedError(source.key, str(path.resolve()), why + ", again after a fresh download")
    return [f"{p.name} ({why})" for p, why in damaged.items()]
