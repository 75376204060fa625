"""Shared helpers for the benchmark sections: environment, timing statistics, results."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# persistent work (models, corpora, stores); MEDLAB_BENCH_WORK points a run elsewhere, e.g. an
# empty folder to time a fresh first run without touching the stores built so far
WORK = Path(os.environ.get("MEDLAB_BENCH_WORK") or ROOT / "bench" / "_work")

# Set for every section process before torch is imported.
BASE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "ANONYMIZED_TELEMETRY": "False",
    "TOKENIZERS_PARALLELISM": "false",
    "MEDLAB_DEVICE": "cpu",
    # libgomp spin-waits by default; on a shared 2-core box (other processes, or two Gradio
    # workers each running 2 torch threads) that makes every op 2-7x slower and the numbers
    # noise. PASSIVE threads sleep instead. See results.md "Environment" for the probe.
    "OMP_WAIT_POLICY": "PASSIVE",
}


def apply_env(extra: dict[str, str] | None = None) -> None:
    for key, value in BASE_ENV.items():
        os.environ.setdefault(key, value)
    for key, value in (extra or {}).items():
        os.environ[key] = value


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), like numpy's default."""
    if not values:
        return float("nan")
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary(values_s: list[float]) -> dict[str, Any]:
    """Median / p95 / min / mean in milliseconds of a list of seconds."""
    ms = [v * 1000.0 for v in values_s]
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 3) if ms else None,
        "p95_ms": round(percentile(ms, 95), 3) if ms else None,
        "min_ms": round(min(ms), 3) if ms else None,
        "mean_ms": round(statistics.fmean(ms), 3) if ms else None,
    }


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run each function `repeats` times, alternating between them (A B C A B C ...), so slow
    drifts of a shared machine's load hit every variant alike. Returns seconds per run."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            runs[name].append(timed(fn)[0])
    return runs


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


@dataclass
class Row:
    """One line of the summary table: a measured value against its target."""

    measure: str
    value: float | None
    unit: str  # "x" for ratios, "ms", "img/s"...
    target: str  # e.g. "<= 1.3x"
    met: bool | None  # None: no target / not measurable
    note: str = ""


@dataclass
class SectionResult:
    id: int
    title: str
    status: str = "ok"  # ok | partial | error | skipped
    rows: list[Row] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)  # {"title", "columns", "rows"}
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    load: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check(value: float | None, op: str, target: float) -> bool | None:
    if value is None or value != value:  # None or NaN
        return None
    return value <= target if op == "<=" else value >= target
