"""The process-wide model cache.

Rules (DESIGN §2): nothing loads at import or start; a model loads on first use; concurrent
first requests for one key trigger exactly one load (a lock per key); a failed load raises
and leaves the cache usable, and the next request retries.

Memory: every device (``cpu``, ``cuda:0``, ...) has its own budget. A load first reserves
its estimate on its device under the cache lock, so two loads in flight cannot both fit
into room that exists once. Room is made by evicting least-recently-used models that no
request holds. A request holds a model through a lease (``with cache.use(key) as model``);
a leased model is never evicted from under it: a load that needs its room waits until the
lease ends (or fails after ``wait_timeout`` seconds, or at once when only the waiting
request's own leases are in the way, which could never end)."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from medlab.core.errors import InsufficientMemoryError, MedlabError
from medlab.core.memory import free_memory, measure_bytes, normalize_device, torch_cuda_stats
from medlab.core.progress import Progress, no_progress

log = logging.getLogger(__name__)

__all__ = ["ModelCache", "Progress", "measure_bytes", "normalize_device"]

LoadFn = Callable[[str, Progress], Any]
# estimate_fn(key) -> bytes (on "cpu") or (device, bytes)
EstimateFn = Callable[[str], "int | tuple[str, int]"]
# budget: bytes for every device, or budget(device) -> bytes (None: not known yet)
BudgetFn = Callable[[str], "int | None"]


@dataclass
class _Entry:
    value: Any
    nbytes: int
    load_seconds: float
    device: str
    loaded_at: float = field(default_factory=time.time)
    hits: int = 0
    leases: dict[int, int] = field(default_factory=dict)  # thread id -> open leases


class ModelCache:
    """Lazy, single-flight, per-device memory-bounded LRU cache of loaded models, with leases."""

    def __init__(
        self,
        load_fn: LoadFn,
        budget: int | BudgetFn,
        estimate_fn: EstimateFn | None = None,
        measure_fn: Callable[[Any], int] = measure_bytes,
        wait_timeout: float = 300.0,
        devices: tuple[str, ...] = ("cpu",),
    ) -> None:
        self._load_fn = load_fn
        self._budget = budget
        self._estimate_fn = estimate_fn or (lambda key: 0)
        self._measure_fn = measure_fn
        self.wait_timeout = wait_timeout
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.RLock()  # guards everything below
        self._cond = threading.Condition(self._lock)  # signalled when memory or a lease is released
        self._key_locks: dict[str, threading.Lock] = {}
        self._reserved: dict[str, tuple[str, int]] = {}  # loads in flight: key -> (device, estimate)
        self._waiting_for: dict[int, str] = {}  # thread id -> key whose load it waits for
        self._freeing: dict[str, int] = {}  # device -> bytes evicted but not yet collected
        self._peak: dict[str, int] = {}
        self._devices: set[str] = {normalize_device(d) for d in devices}
        self.hits = 0
        self.misses = 0
        self.loads = 0
        self.evictions = 0
        self.load_counts: dict[str, int] = {}
        self.errors: dict[str, str] = {}
        self.eviction_log: list[str] = []

    # -- public API ---------------------------------------------------------------------
    def budget_for(self, device: str) -> int | None:
        budget = self._budget(normalize_device(device)) if callable(self._budget) else self._budget
        return None if budget is None else int(budget)

    @property
    def budget_bytes(self) -> int:
        """The CPU budget (kept for callers that predate per-device budgets)."""
        return int(self.budget_for("cpu") or 0)

    def get(self, key: str, progress: Progress | None = None) -> Any:
        """Return the loaded model for `key`, loading it (once) if needed. Holds no lease:
        prefer `use(key)`, which keeps the model from being evicted while it is used."""
        return self._acquire(key, progress or no_progress, lease=False).value

    @contextlib.contextmanager
    def use(self, key: str, progress: Progress | None = None) -> Iterator[Any]:
        """Lease the model for `key` for the duration of the block (loading it if needed)."""
        entry = self._acquire(key, progress or no_progress, lease=True)
        try:
            yield entry.value
        finally:
            self._release(entry)

    def loaded_keys(self) -> list[str]:
        """Keys in LRU order: least recently used first."""
        with self._lock:
            return list(self._entries)

    def used_bytes(self, device: str | None = None) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values() if device is None or e.device == device)

    def evict(self, key: str, force: bool = False) -> bool:
        """Drop `key`. A leased model is kept unless `force` (tests, shutdown)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or (entry.leases and not force):
                return False
            self._pop_locked(key)
        self._finish_eviction(entry)
        return True

    def clear(self) -> None:
        for key in self.loaded_keys():
            self.evict(key, force=True)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            models = {
                key: {
                    "bytes": e.nbytes,
                    "mb": round(e.nbytes / 2**20, 1),
                    "device": e.device,
                    "load_seconds": round(e.load_seconds, 3),
                    "hits": e.hits,
                    "leases": sum(e.leases.values()),
                }
                for key, e in self._entries.items()
            }
            devices = sorted(self._devices | {e.device for e in self._entries.values()}
                             | {d for d, _ in self._reserved.values()})
            per_device = {}
            for device in devices:
                used = self.used_bytes(device)
                reserved = sum(n for d, n in self._reserved.values() if d == device)
                budget = self.budget_for(device)
                per_device[device] = {
                    "budget_bytes": budget,
                    "budget_gb": None if budget is None else round(budget / 2**30, 3),
                    "used_bytes": used,
                    "reserved_bytes": reserved,
                    "peak_bytes": self._peak.get(device, 0),
                    "used_gb": round(used / 2**30, 3),
                    "peak_gb": round(self._peak.get(device, 0) / 2**30, 3),
                    "models": [k for k, e in self._entries.items() if e.device == device],
                    **torch_cuda_stats(device),
                }
            return {
                "loaded": list(self._entries),
                "loading": sorted(self._reserved),
                "models": models,
                "devices": per_device,
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
    def _acquire(self, key: str, progress: Progress, lease: bool) -> _Entry:
        with self._lock:
            entry = self._hit_locked(key, lease)
            if entry is not None:
                return entry
            key_lock = self._key_locks.setdefault(key, threading.Lock())
            self._waiting_for[threading.get_ident()] = key
        try:
            key_lock.acquire()
        finally:
            with self._lock:
                self._waiting_for.pop(threading.get_ident(), None)
        with _Held(key_lock):
            # Another thread may have finished loading while we waited: single flight.
            with self._lock:
                entry = self._hit_locked(key, lease)
                if entry is not None:
                    return entry
                self.misses += 1
            return self._load(key, progress, lease)

    def _hit_locked(self, key: str, lease: bool) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        entry.hits += 1
        self.hits += 1
        if lease:
            tid = threading.get_ident()
            entry.leases[tid] = entry.leases.get(tid, 0) + 1
        return entry

    def _release(self, entry: _Entry) -> None:
        tid = threading.get_ident()
        with self._cond:
            left = entry.leases.get(tid, 0) - 1
            if left > 0:
                entry.leases[tid] = left
            else:
                entry.leases.pop(tid, None)
            self._cond.notify_all()

    def _committed_locked(self, device: str) -> int:
        return (self.used_bytes(device) + self._freeing.get(device, 0)
                + sum(n for d, n in self._reserved.values() if d == device))

    def _note_peak_locked(self, device: str) -> None:
        self._peak[device] = max(self._peak.get(device, 0), self._committed_locked(device))

    def _pop_locked(self, key: str) -> _Entry:
        entry = self._entries.pop(key)
        self.evictions += 1
        self.eviction_log.append(key)
        self._freeing[entry.device] = self._freeing.get(entry.device, 0) + entry.nbytes
        return entry

    def _finish_eviction(self, entry: _Entry) -> None:
        """Free an entry popped by _pop_locked (outside the lock: gc can take a while)."""
        device, nbytes = entry.device, entry.nbytes
        entry.value = None
        free_memory()
        with self._cond:
            self._freeing[device] = max(0, self._freeing.get(device, 0) - nbytes)
            self._cond.notify_all()
        log.info("evicted a model from %s (%.1f MB)", device, nbytes / 2**20)

    def _estimate(self, key: str) -> tuple[str, int]:
        raw = self._estimate_fn(key)
        device, nbytes = raw if isinstance(raw, tuple) else ("cpu", raw)
        return normalize_device(device), max(0, int(nbytes))

    def _too_big(self, key: str, device: str, needed: int, budget: int) -> InsufficientMemoryError:
        var = "MEDLAB_MEMORY_BUDGET_GB" if device == "cpu" else "MEDLAB_GPU_MEMORY_BUDGET_GB"
        return InsufficientMemoryError(
            key,
            f"it needs about {needed / 2**30:.2f} GB on {device} but the memory budget there is "
            f"{budget / 2**30:.2f} GB.",
            f"raise {var} if the machine has the memory, point MEDLAB_MODEL_{key.upper()} at a smaller "
            "checkpoint (or a 4-bit one on a GPU), or run on a larger machine.",
        )

    def _reserve(self, key: str, device: str, needed: int) -> None:
        """Reserve `needed` bytes on `device` for the load of `key`, evicting unleased LRU
        models there, waiting for leases held by other requests when that is not enough."""
        budget = self.budget_for(device)
        if budget is None:  # no budget known for this device: account, never refuse
            budget = sys.maxsize
        if needed > budget:
            raise self._too_big(key, device, needed, budget)
        deadline = time.monotonic() + self.wait_timeout
        me = threading.get_ident()
        while True:
            with self._cond:
                if self._committed_locked(device) + needed <= budget:
                    self._reserved[key] = (device, needed)
                    self._devices.add(device)
                    self._note_peak_locked(device)
                    return
                victim = next((k for k, e in self._entries.items()
                               if e.device == device and not e.leases and k != key), None)
                if victim is None:
                    # Leases that can end: held by other threads that are not themselves waiting
                    # for this very load (they would wait for us while we wait for them).
                    others = (
                        any(e.device == device and any(t != me and self._waiting_for.get(t) != key for t in e.leases)
                            for e in self._entries.values())
                        or any(d == device for k, (d, _) in self._reserved.items() if k != key)
                        or self._freeing.get(device, 0) > 0
                    )
                    remaining = deadline - time.monotonic()
                    if not others or remaining <= 0:
                        held = [k for k, e in self._entries.items() if e.device == device and e.leases]
                        why = ("they are in use by other requests and none finished in time"
                               if others else "this request itself is using them")
                        raise InsufficientMemoryError(
                            key,
                            f"it needs about {needed / 2**30:.2f} GB on {device}, and the budget of "
                            f"{budget / 2**30:.2f} GB is held by {', '.join(held) or 'loads in flight'} "
                            f"({why}).",
                            "try again in a moment, or raise the memory budget "
                            f"({'MEDLAB_MEMORY_BUDGET_GB' if device == 'cpu' else 'MEDLAB_GPU_MEMORY_BUDGET_GB'}) "
                            "so these models fit together.",
                        )
                    self._cond.wait(min(remaining, 1.0))
                    continue
                log.info("memory budget on %s: evicting %s to make room for %s", device, victim, key)
                entry = self._pop_locked(victim)
            self._finish_eviction(entry)

    def _load(self, key: str, progress: Progress, lease: bool) -> _Entry:
        device, estimate = self._estimate(key)
        self._reserve(key, device, estimate)
        progress(0.0, f"Loading {key}...")
        started = time.perf_counter()
        try:
            value = self._load_fn(key, progress)
        except BaseException as exc:
            with self._cond:
                self._reserved.pop(key, None)
                self.errors[key] = str(exc)
                self._cond.notify_all()
            log.warning("loading %s failed: %s", key, exc if isinstance(exc, MedlabError) else repr(exc))
            free_memory()
            raise
        seconds = time.perf_counter() - started
        nbytes = int(self._measure_fn(value))
        actual = normalize_device(getattr(value, "device", None) or device)
        entry = _Entry(value, nbytes, seconds, actual)
        if lease:
            entry.leases[threading.get_ident()] = 1
        with self._cond:
            self._reserved.pop(key, None)
            self._entries[key] = entry
            self._devices.add(actual)
            self.loads += 1
            self.load_counts[key] = self.load_counts.get(key, 0) + 1
            self.errors.pop(key, None)
            self._note_peak_locked(actual)
            self._cond.notify_all()
        if nbytes > estimate or actual != device:  # the estimate was low: enforce the budget now
            self._make_room_after(key, actual)
        progress(1.0, f"Loaded {key} in {seconds:.1f}s")
        log.info("loaded %s: %.1f MB in %.2fs on %s", key, nbytes / 2**20, seconds, actual)
        return entry

    def _make_room_after(self, key: str, device: str) -> None:
        budget = self.budget_for(device)
        if budget is None:
            return
        while True:
            with self._lock:
                if self._committed_locked(device) <= budget:
                    return
                victim = next((k for k, e in self._entries.items()
                               if e.device == device and not e.leases and k != key), None)
                if victim is None:
                    log.warning("%s is over its memory budget after loading %s (the estimate was low "
                                "and the other models there are in use)", device, key)
                    return
                entry = self._pop_locked(victim)
            self._finish_eviction(entry)


class _Held:
    """Releases an already acquired lock at the end of a with block."""

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
