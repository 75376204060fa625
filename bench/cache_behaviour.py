"""Section 7: the process-wide model cache (medlab.core.loaders.get_model) under load.

Every request reads every weight page (what a forward pass does; see touch()).

1. Warm switching: with two models resident, 40 alternating requests trigger 0 loads (the
   same check through the live app's API is in section 2 and merged here).
2. Single flight: 16 threads released together ask for one cold model: exactly 1 load, and
   all 16 get the same object.
3. Memory: MEDLAB_MEMORY_BUDGET_GB is set so that any 2 of 3 real-size models fit but not
   all 3 (skin ViT-B/16, PLIP CLIP-B/32, impression T5-base); cycling through them twice
   forces an eviction at every load. A psutil thread samples this process's RSS every 5 ms.
   Stated bound: peak RSS <= RSS before any model + budget + the largest model's file size
   (safetensors are memory-mapped while a model loads, so its pages are counted once more
   until the load finishes)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from bench.common import WORK, Row, SectionResult, check, loadavg

GIB = 1024**3
MIB = 1024**2


class RssSampler:
    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self.trace: list[tuple[float, int, str]] = []
        self.phase = "start"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        t0 = time.perf_counter()
        last = 0.0
        while not self._stop.is_set():
            rss = self.proc.memory_info().rss
            self.peak = max(self.peak, rss)
            now = time.perf_counter() - t0
            if now - last > 0.25:
                self.trace.append((round(now, 2), rss, self.phase))
                last = now
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def touch(loaded: Any) -> float:
    """Read every page of every weight, as a forward pass does. Without this the memory-mapped
    safetensors of a freshly loaded model are mostly not resident and RSS says nothing."""
    import torch

    total = 0.0
    with torch.inference_mode():
        for t in list(loaded.model.parameters()) + list(loaded.model.buffers()):
            flat = t.detach().reshape(-1)
            total += float(flat[:: max(1, 4096 // flat.element_size())].float().sum())
    return total


def use(key: str) -> None:
    from medlab.core.loaders import get_model

    touch(get_model(key))


def run(quick: bool = False) -> SectionResult:
    from bench.models import build_all

    res = SectionResult(7, "Model cache: warm switching, single-flight cold loads, peak RSS under the budget")
    started = time.perf_counter()
    scale = "tiny" if quick else "real"
    os.environ.update(build_all(WORK / "models", scale))

    import psutil
    import torch  # noqa: F401 - imported before the baseline so library memory is not counted as models
    import transformers  # noqa: F401

    from medlab.core.loaders import estimate_bytes, get_cache, get_model, reset_cache

    keys = ("skin", "plip", "impression")
    sizes = {k: estimate_bytes(k) for k in keys}
    total = sum(sizes.values())
    budget = total - min(sizes.values()) // 2  # any two fit, all three do not
    os.environ["MEDLAB_MEMORY_BUDGET_GB"] = f"{budget / GIB:.6f}"
    reset_cache()
    cache = get_cache()
    budget = cache.budget_bytes
    proc = psutil.Process()

    # -- 2. single flight (first: the process holds no model yet) ----------------------------
    barrier = threading.Barrier(16)
    got: list[Any] = []
    errors: list[str] = []

    def cold() -> None:
        try:
            barrier.wait()
            got.append(get_model("lung_ct"))
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))

    threads = [threading.Thread(target=cold) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sf_loads = cache.stats()["load_counts"].get("lung_ct", 0)
    same = len({id(x) for x in got}) == 1 and len(got) == 16
    cache.evict("lung_ct")
    evictions0 = cache.stats()["evictions"]

    import gc

    gc.collect()
    baseline = proc.memory_info().rss
    with RssSampler() as sampler:
        # -- 1. warm switching between two resident models ---------------------------------------
        sampler.phase = "load skin+plip"
        use("skin")
        use("plip")
        loads0 = cache.stats()["loads"]
        sampler.phase = "warm switching"
        for i in range(40):
            use(("skin", "plip")[i % 2])
        warm_loads = cache.stats()["loads"] - loads0
        # -- 3. cycle through more models than fit -------------------------------------------------
        order = ["impression", "skin", "plip", "impression", "skin", "plip"]
        resident = []
        for key in order:
            sampler.phase = f"load {key}"
            use(key)
            resident.append(list(cache.loaded_keys()))
        sampler.phase = "end"
        time.sleep(0.05)
    stats = cache.stats()
    stats["evictions"] -= evictions0  # only the cycle's evictions
    peak = sampler.peak
    largest = max(sizes.values())
    bound = baseline + budget + largest
    over_budget = peak - baseline
    res.load["end"] = loadavg()
    res.details = {
        "model_bytes": sizes, "budget_bytes": budget, "baseline_rss": baseline, "peak_rss": peak,
        "bound": bound, "evictions": stats["evictions"], "loads": stats["loads"],
        "load_counts": stats["load_counts"], "resident_after_each_load": resident,
        "single_flight": {"threads": 16, "loads": sf_loads, "same_object": same, "errors": errors},
        "warm_switching_engine": {"requests": 40, "loads": warm_loads},
        "rss_trace_mib": [(t, round(r / MIB), ph) for t, r, ph in sampler.trace],
        "final_rss": proc.memory_info().rss,
    }
    res.tables.append({
        "title": "Memory (MiB)",
        "columns": ["model files (skin / plip / impression)", "budget", "RSS before models", "peak RSS",
                    "peak - before", "stated bound", "evictions", "final RSS"],
        "rows": [[" / ".join(str(round(sizes[k] / MIB)) for k in keys), round(budget / MIB), round(baseline / MIB),
                  round(peak / MIB), round(over_budget / MIB), round(bound / MIB), stats["evictions"],
                  round(res.details["final_rss"] / MIB)]],
    })
    res.rows.append(Row("loads while switching between 2 warm models (40 requests, engine)", warm_loads, "loads",
                        "= 0", warm_loads == 0))
    res.rows.append(Row("loads for 16 concurrent cold requests", sf_loads, "loads", "= 1",
                        sf_loads == 1 and same and not errors,
                        f"all 16 got the same object: {same}" + (f"; errors: {errors[:2]}" if errors else "")))
    slack = (bound - peak) / MIB
    res.rows.append(Row("peak RSS - RSS before models, vs budget", round(over_budget / MIB), "MiB",
                        f"<= budget {round(budget / MIB)} + largest model {round(largest / MIB)} MiB",
                        check(peak, "<=", bound),
                        f"{stats['evictions']} evictions over {len(order)} loads; "
                        f"{'margin' if slack >= 0 else 'over by'} {abs(slack):.0f} MiB"))
    res.seconds = time.perf_counter() - started
    return res
