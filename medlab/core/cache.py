"""The process-wide model cache.

Rules (DESIGN §2): nothing loads at import or start; a model loads on first use; concurrent
first requests for one key trigger exactly one load (a lock per key); when the next load
would exceed the memory budget the least-recently-used models are evicted first; a failed
load raises and leaves the cache usable, and the next request retries."""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from medlab.core.errors import InsufficientMemoryError, MedlabError

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
LoadFn = Callable[[str, Progress], Any]
EstimateFn = Callable[[str], int]


def _no_progress(fraction: float, message: str) -> None:  # noqa: ARG001 - callback signature
    return None


def measure_bytes(obj: Any) -> int:
    """Real bytes held by the torch parameters and buffers reachable from `obj`.

    Looks at `obj` itself and, for bundles, at the attributes `model`, `modules` and
    `extras`. Shared storages are counted once. Objects without tensors count as 0."""
    torch = sys.modules.get("torch")
    if torch is None:
        return int(getattr(obj, "nbytes", 0) or 0)
    seen: set[int] = set()
    total = 0

    def add_module(module: Any) -> None:
        nonlocal total
        for tensor in list(module.parameters()) + list(module.buffers()):
            try:
                ptr = tensor.untyped_storage().data_ptr()
            except (RuntimeError, NotImplementedError):
                ptr = id(tensor)
            if ptr in seen:
                continue
            seen.add(ptr)
            total += tensor.numel() * tensor.element_size()

    def visit(candidate: Any, depth: int = 0) -> None:
        if candidate is None or depth > 2:
            return
        if isinstance(candidate, torch.nn.Module):
            add_module(candidate)
        elif isinstance(candidate, dict):
            for value in candidate.values():
                visit(value, depth + 1)
        elif isinstance(candidate, (list, tuple)):
            for value in candidate:
                visit(value, depth + 1)
        else:
            for attr in ("model", "modules", "extras"):
                if hasattr(candidate, attr):
                    visit(getattr(candidate, attr), depth + 1)

    visit(obj)
    return total


@dataclass
class _Entry:
    value: Any
    nbytes: int
    load_seconds: float
    device: str
    loaded_at: float = field(default_factory=time.time)
    hits: int = 0


class ModelCache:
    """Lazy, single-flight, memory-bounded LRU cache of loaded models."""

    def __init__(
        self,
        load_fn: LoadFn,
        budget_bytes: int | Callable[[], int],
        estimate_fn: EstimateFn | None = None,
        measure_fn: Callable[[Any], int] = measure_bytes,
    ) -> None:
        self._load_fn = load_fn
        self._budget = budget_bytes
        self._estimate_fn = estimate_fn or (lambda key: 0)
        self._measure_fn = measure_fn
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.RLock()  # guards _entries, stats and _key_locks
        self._key_locks: dict[str, threading.Lock] = {}
        self._loading: set[str] = set()
        self.hits = 0
        self.misses = 0
        self.loads = 0
        self.evictions = 0
        self.load_counts: dict[str, int] = {}
        self.errors: dict[str, str] = {}
        self.eviction_log: list[str] = []

    # -- public API ---------------------------------------------------------------------
    @property
    def budget_bytes(self) -> int:
        return int(self._budget() if callable(self._budget) else self._budget)

    def get(self, key: str, progress: Progress | None = None) -> Any:
        """Return the loaded model for `key`, loading it (once) if needed."""
        progress = progress or _no_progress
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._touch(key, entry)
                return entry.value
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            # Another thread may have finished loading while we waited: single flight.
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    self._touch(key, entry)
                    return entry.value
                self.misses += 1
                self._loading.add(key)
            try:
                return self._load(key, progress)
            finally:
                with self._lock:
                    self._loading.discard(key)

    def is_loaded(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def loaded_keys(self) -> list[str]:
        """Keys in LRU order: least recently used first."""
        with self._lock:
            return list(self._entries)

    def used_bytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def evict(self, key: str) -> bool:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return False
            self.evictions += 1
            self.eviction_log.append(key)
        del entry
        self._free_memory()
        log.info("evicted model %s", key)
        return True

    def clear(self) -> None:
        for key in self.loaded_keys():
            self.evict(key)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            models = {
                key: {
                    "bytes": e.nbytes,
                    "mb": round(e.nbytes / 2**20, 1),
                    "device": e.device,
                    "load_seconds": round(e.load_seconds, 3),
                    "hits": e.hits,
                }
                for key, e in self._entries.items()
            }
            return {
                "loaded": list(self._entries),
                "loading": sorted(self._loading),
                "models": models,
                "used_bytes": sum(e.nbytes for e in self._entries.values()),
                "budget_bytes": self.budget_bytes,
                "hits": self.hits,
                "misses": self.misses,
                "loads": self.loads,
                "load_counts": dict(self.load_counts),
                "evictions": self.evictions,
                "errors": dict(self.errors),
            }

    # -- internals ----------------------------------------------------------------------
    def _touch(self, key: str, entry: _Entry) -> None:
        self._entries.move_to_end(key)
        entry.hits += 1
        self.hits += 1

    def _make_room(self, key: str, needed: int) -> None:
        budget = self.budget_bytes
        if needed > budget:
            raise InsufficientMemoryError(
                key,
                f"it needs about {needed / 2**30:.1f} GB but the memory budget is "
                f"{budget / 2**30:.1f} GB.",
                "raise MEDLAB_MEMORY_BUDGET_GB if the machine has the memory, point "
                f"MEDLAB_MODEL_{key.upper()} at a smaller checkpoint, or run on a larger machine.",
            )
        while True:
            with self._lock:
                used = sum(e.nbytes for e in self._entries.values())
                victims = [k for k in self._entries if k != key]
                if used + needed <= budget or not victims:
                    return
                victim = victims[0]  # least recently used
            log.info("memory budget: evicting %s to make room for %s", victim, key)
            self.evict(victim)

    def _load(self, key: str, progress: Progress) -> Any:
        estimate = max(0, int(self._estimate_fn(key)))
        self._make_room(key, estimate)
        progress(0.0, f"Loading {key}...")
        started = time.perf_counter()
        try:
            value = self._load_fn(key, progress)
        except Exception as exc:
            with self._lock:
                self.errors[key] = str(exc)
            log.warning("loading %s failed: %s", key, exc if isinstance(exc, MedlabError) else repr(exc))
            self._free_memory()
            raise
        seconds = time.perf_counter() - started
        nbytes = self._measure_fn(value)
        device = str(getattr(value, "device", "cpu"))
        with self._lock:
            self._entries[key] = _Entry(value, nbytes, seconds, device)
            self.loads += 1
            self.load_counts[key] = self.load_counts.get(key, 0) + 1
            self.errors.pop(key, None)
        # The estimate may have been low: enforce the budget with the real size.
        if nbytes > estimate:
            self._make_room_after(key)
        progress(1.0, f"Loaded {key} in {seconds:.1f}s")
        log.info("loaded %s: %.1f MB in %.2fs on %s", key, nbytes / 2**20, seconds, device)
        return value

    def _make_room_after(self, key: str) -> None:
        budget = self.budget_bytes
        while True:
            with self._lock:
                used = sum(e.nbytes for e in self._entries.values())
                victims = [k for k in self._entries if k != key]
                if used <= budget or not victims:
                    return
                victim = victims[0]
            self.evict(victim)

    @staticmethod
    def _free_memory() -> None:
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
