"""The default pathology index: a public H&E tile set that indexes itself in the background.

MEDLAB_PATHOLOGY_SOURCE names the tiles (Hub dataset id, local folder / zip / parquet, or
"off"; see tile_sources) and MEDLAB_PATHOLOGY_MAX_TILES caps them. `start_background()` (called
once at app start-up) runs `build()` in one daemon thread; `prepare()` runs it in the
foreground for `python -m medlab prepare`. Both index every tile with each pathology model.

- Resumable and never twice: a tile's id is the sha256 of its bytes; each batch first asks the
  collection which ids it already holds and encodes only the others, so a kill -9 resumes where
  it stopped. A finished build leaves a stamp, so the next start does not even re-read tiles.
- Never half a tile: the thumbnail is written (temp file + rename) before the vector is
  upserted; a crash in between leaves a thumbnail that the resumed run gives its vector.
- Search works while tiles arrive (each batch is committed), and `status()` reports progress
  (n of N, tiles/s, time left, skipped and failed tiles) for the tab and `doctor`."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlab.core.config import load_settings
from medlab.core.errors import MedlabError, ModelUnavailableError
from medlab.core.progress import Progress
from medlab.retrieval.encoders import MODEL_NAMES, MODELS
from medlab.retrieval.tile_sources import Tile, TileSourceError, open_source

log = logging.getLogger(__name__)

BATCH_SIZE = 16
SOURCE_CARD = (
    "**Default tile set.** CRC-VAL-HE-7K: 7,180 H&E tiles (224 px, 0.5 µm/px, 9 colorectal tissue "
    "classes, 50 patients) from Kather, Halama & Marx 2018, Zenodo doi:10.5281/zenodo.1214456, "
    "licence **CC-BY-4.0**; read from the parquet shards of the Hub dataset `1aurent/NCT-CRC-HE` "
    "(card: cc-by-4.0). The first `MEDLAB_PATHOLOGY_MAX_TILES` tiles are indexed with every "
    "pathology model in the background; `MEDLAB_PATHOLOGY_SOURCE` points it at another Hub "
    "dataset, a local folder / .zip / .parquet, or `off`. See assets/ATTRIBUTION.md."
)
FINAL = frozenset({"off", "done", "error", "cancelled"})


@dataclass
class BuildStatus:
    state: str = "idle"  # idle | off | starting | running | done | error | cancelled
    source: str = ""
    done: int = 0  # distinct tiles handled (new + already indexed + failed)
    total: int | None = None
    added: dict[str, int] = field(default_factory=dict)
    already: int = 0
    failed: int = 0  # could not be decoded: skipped, never indexed
    duplicates: int = 0  # same bytes twice in the source
    rate: float = 0.0  # new tiles per second in this run
    eta_s: float | None = None
    message: str = ""
    model_errors: dict[str, str] = field(default_factory=dict)

    @property
    def building(self) -> bool:
        return self.state in ("starting", "running")

    def line(self) -> str:
        """One human line: what the builder is doing and how far it is."""
        if self.state == "off":
            return "Default pathology index: off (MEDLAB_PATHOLOGY_SOURCE=off)."
        if self.state == "idle":
            return "Default pathology index: not started."
        if self.state == "error":
            return f"Default pathology index: not available. {self.message}"
        of = f"{self.done} of {self.total}" if self.total else f"{self.done}"
        text = f"Default pathology index ({self.source}): {self.state}, {of} tiles"
        if self.state == "running" and self.rate > 0:
            text += f", {self.rate:.1f} tiles/s"
            if self.eta_s is not None:
                text += f", about {_duration(self.eta_s)} left"
        if self.failed or self.duplicates:
            text += f"; skipped {self.failed} that could not be decoded, {self.duplicates} duplicates"
        text += "."
        for key, err in self.model_errors.items():
            text += f" {MODEL_NAMES.get(key, key)} not indexed: {err}"
        return text


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


_STATUS = BuildStatus()
_LOCK = threading.Lock()
_THREAD: threading.Thread | None = None
_CANCEL = threading.Event()


def status() -> BuildStatus:
    with _LOCK:
        return dataclasses.replace(_STATUS, added=dict(_STATUS.added), model_errors=dict(_STATUS.model_errors))


def _update(**changes: Any) -> None:
    with _LOCK:
        for k, v in changes.items():
            setattr(_STATUS, k, v)


def stamp_path() -> Path:
    return load_settings().data_dir / "pathology" / "default_index.json"


def decode_tile(data: bytes) -> Any:
    """Bytes -> PIL RGB, within the app's pixel limit; ValueError when it cannot be decoded."""
    from PIL import Image

    limit = load_settings().max_image_pixels
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > limit:
                raise ValueError(f"{img.width}x{img.height} is over MEDLAB_MAX_IMAGE_PIXELS")
            img.load()
            return img.convert("RGB")
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:  # PIL's decode errors
        raise ValueError(f"not a decodable image ({type(exc).__name__})") from exc


# -- the build -------------------------------------------------------------------------------------
def build(
    value: str | None = None,
    max_tiles: int | None = None,
    keys: Sequence[str] = MODELS,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    batch_size: int = BATCH_SIZE,
) -> BuildStatus:
    """Index the default tile set with each model of `keys`; returns the final status.
    Source errors end in state "error" with the reason (never an exception)."""
    settings = load_settings()
    value = settings.pathology_source if value is None else value
    cap = settings.pathology_max_tiles if max_tiles is None else max_tiles
    cancel = cancel or threading.Event()
    report = progress or (lambda f, m: None)
    with _LOCK:
        global _STATUS
        _STATUS = BuildStatus(state="starting", source=value, message="Opening the tile source")
    try:
        source = open_source(value)
    except TileSourceError as exc:
        _update(state="error", message=str(exc))
        log.warning("default pathology index: %s", exc)
        return status()
    if source is None:
        _update(state="off", message="")
        return status()
    _update(source=source.description)

    from medlab.retrieval.image_index import image_collection

    cols: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for key in keys:
        try:
            cols[key] = image_collection(key)
        except MedlabError as exc:  # e.g. ModelUnavailableError: the others still build
            errors[key] = str(getattr(exc, "reason", exc))
    stamp = {"source": value, "max_tiles": cap, "collections": {k: c.name for k, c in cols.items()}}
    done_before = _read_stamp()
    if cols and done_before and {k: done_before.get(k) for k in stamp} == stamp and \
            all(c.get(limit=1, include=[])["ids"] for c in cols.values()):
        _update(state="done", done=done_before.get("done", 0), total=done_before.get("done", 0),
                failed=done_before.get("failed", 0), model_errors=errors, message="Already built.")
        return status()
    if not cols:
        _update(state="error", model_errors=errors, message="No pathology model can be loaded: " +
                "; ".join(f"{MODEL_NAMES[k]}: {e}" for k, e in errors.items()))
        return status()
    _update(state="running", model_errors=dict(errors), added={k: 0 for k in cols})

    seen: set[str] = set()
    taken = 0
    batch: list[Tile] = []
    start = time.monotonic()
    counters = {"new": 0, "done": 0, "already": 0, "failed": 0, "duplicates": 0}
    try:
        for tile in source.tiles():
            if cancel.is_set():
                break
            if tile.id and tile.id in seen:
                counters["duplicates"] += 1
                continue
            if tile.id:
                seen.add(tile.id)
            batch.append(tile)
            taken += 1
            if len(batch) >= batch_size:
                _index_batch(batch, cols, errors, counters)
                batch = []
                _report(source, cap, counters, start, errors, report)
            if taken >= cap:
                break
        if batch and not cancel.is_set():
            _index_batch(batch, cols, errors, counters)
            _report(source, cap, counters, start, errors, report)
    except TileSourceError as exc:  # e.g. the next Hub shard cannot be fetched
        _update(state="error", message=str(exc))
        return status()
    if cancel.is_set():
        _update(state="cancelled", message="Stopped; the next start resumes where this one stopped.")
        return status()
    if not cols:
        _update(state="error", message="No pathology model could index the tiles.", model_errors=dict(errors))
        return status()
    _write_stamp({**stamp, "done": counters["done"], "failed": counters["failed"]})
    _update(state="done", total=counters["done"], eta_s=0.0, model_errors=dict(errors),
            message=f"{counters['new']} tiles indexed in this run.")
    report(1.0, status().line())
    return status()


def _index_batch(batch: list[Tile], cols: dict[str, Any], errors: dict[str, str],
                 counters: dict[str, int]) -> None:
    """Encode and store, for every model, the tiles of `batch` its collection lacks."""
    from medlab.retrieval.image_index import store_batch, thumb_path
    from medlab.retrieval.vectorstore import existing_ids

    decoded: dict[str, Any] = {}
    failed = {t.name for t in batch if not t.id}  # a row without image bytes
    new: set[str] = set()
    for key in list(cols):
        present = existing_ids(cols[key], [t.id for t in batch if t.id])
        ids, images, metas = [], [], []
        for tile in batch:
            if not tile.id or tile.id in present or tile.name in failed:
                continue
            if tile.id not in decoded:
                try:
                    decoded[tile.id] = decode_tile(tile.data)
                except ValueError as exc:
                    log.info("default index: skipping %s (%s)", tile.name, exc)
                    failed.add(tile.name)
                    continue
            ids.append(tile.id)
            images.append(decoded[tile.id])
            metas.append({"file": tile.name, "source": "default", "caption": tile.caption,
                          "label": tile.label, "thumb": str(thumb_path(tile.id)), "sha256": tile.id})
        if not ids:
            continue
        try:
            store_batch(cols[key], key, ids, images, metas)
        except ModelUnavailableError as exc:
            errors[key] = exc.reason
            del cols[key]
            log.warning("default index: %s cannot be loaded (%s); indexing without it", key, exc.reason)
            continue
        new.update(ids)
        with _LOCK:
            _STATUS.added[key] = _STATUS.added.get(key, 0) + len(ids)
    counters["failed"] += len(failed)
    counters["done"] += len(batch)
    counters["new"] += len(new)
    counters["already"] += len(batch) - len(failed) - len(new)
    time.sleep(0)  # bulk work: let request threads have the interpreter between batches


def _report(source: Any, cap: int, counters: dict[str, int], start: float,
            errors: dict[str, str], report: Progress) -> None:
    known = source.count()
    total = min(cap, known) if known else cap
    elapsed = max(1e-6, time.monotonic() - start)
    rate = counters["new"] / elapsed
    left = max(0, total - counters["done"])
    _update(done=counters["done"], total=total, already=counters["already"], failed=counters["failed"],
            duplicates=counters["duplicates"], rate=rate, eta_s=(left / rate) if rate > 0 else None,
            model_errors=dict(errors))
    report(min(1.0, counters["done"] / max(1, total)), status().line())


def _read_stamp() -> dict[str, Any] | None:
    try:
        return json.loads(stamp_path().read_text())
    except (OSError, ValueError):
        return None


def _write_stamp(data: dict[str, Any]) -> None:
    path = stamp_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


# -- entry points ----------------------------------------------------------------------------------
def start_background() -> BuildStatus:
    """Start the builder thread once per process (a no-op while one runs or when "off")."""
    global _THREAD
    with _LOCK:
        if _THREAD is not None and _THREAD.is_alive():
            return dataclasses.replace(_STATUS)
        _CANCEL.clear()
        _THREAD = threading.Thread(target=_run, name="pathology-default-index", daemon=True)
        _THREAD.start()
    return status()


def _run() -> None:
    try:
        build(cancel=_CANCEL)
    except Exception as exc:  # noqa: BLE001 - a background failure must never take the app down
        log.exception("default pathology index failed")
        _update(state="error", message=f"{type(exc).__name__}: {exc}")


def cancel(wait_s: float = 10.0) -> None:
    """Ask the builder to stop after its current batch (app shutdown, tests)."""
    _CANCEL.set()
    thread = _THREAD
    if thread is not None:
        thread.join(wait_s)


def prepare(progress: Progress | None = None) -> BuildStatus:
    """`python -m medlab prepare`: build the default index in the foreground."""
    return build(progress=progress)


def doctor_lines() -> list[str]:
    """What `python -m medlab doctor` prints about the default index (no model load)."""
    settings = load_settings()
    lines = [f"pathology source: {settings.pathology_source} (max {settings.pathology_max_tiles} tiles)"]
    current = status()
    if current.state != "idle":
        lines.append(current.line())
    stamp = _read_stamp()
    if stamp and stamp.get("source") == settings.pathology_source:
        lines.append(f"default index built: {stamp.get('done', 0)} tiles ({stamp.get('failed', 0)} could not be decoded)")
    elif current.state == "idle":
        try:
            src = open_source(settings.pathology_source)
            lines.append("default index: off" if src is None else
                         f"default index: not built yet; {src.description} is readable"
                         " (it builds in the background at app start, or run `python -m medlab prepare`)")
        except TileSourceError as exc:
            lines.append(f"default index: unavailable. {exc}")
    return lines


def cli_prepare(args: Any = None) -> int:  # noqa: ARG001 - argparse passes its namespace
    """`python -m medlab prepare`: build the default index, printing progress; 0 when done/off."""
    last = [0.0]

    def show(fraction: float, message: str) -> None:
        if time.monotonic() - last[0] > 2 or fraction >= 1:  # a line every 2 s is enough
            last[0] = time.monotonic()
            print(f"[{fraction:4.0%}] {message}", flush=True)

    final = prepare(show)
    print(final.line())
    return 0 if final.state in ("done", "off") else 1
