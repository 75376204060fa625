"""ModelCache: single flight, LRU eviction under a budget, failed-load retry, stats,
and the real loader path on a tiny checkpoint."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from medlab.core.cache import ModelCache, measure_bytes
from medlab.core.errors import InsufficientMemoryError, ModelUnavailableError

MB = 2**20


class Model:
    def __init__(self, key: str, nbytes: int) -> None:
        self.key = key
        self.nbytes = nbytes
        self.device = "cpu"


def make_cache(sizes: dict[str, int], budget: int, delay: float = 0.0, fail: set[str] | None = None):
    calls: dict[str, int] = {}
    lock = threading.Lock()
    fail = fail if fail is not None else set()

    def load(key: str, progress) -> Model:
        with lock:
            calls[key] = calls.get(key, 0) + 1
        progress(0.5, f"loading {key}")
        time.sleep(delay)
        if key in fail:
            raise ModelUnavailableError(key, "weights are corrupt", "re-download them")
        return Model(key, sizes[key])

    cache = ModelCache(load, budget, estimate_fn=lambda k: sizes[k], measure_fn=lambda m: m.nbytes)
    return cache, calls


def test_single_flight_with_16_threads() -> None:
    cache, calls = make_cache({"a": MB}, 10 * MB, delay=0.3)
    barrier = threading.Barrier(16)

    def get(_: int) -> Model:
        barrier.wait()
        return cache.get("a")

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(get, range(16)))
    assert calls == {"a": 1}
    assert all(r is results[0] for r in results)
    stats = cache.stats()
    assert stats["loads"] == 1 and stats["misses"] == 1 and stats["hits"] == 15


def test_cold_loads_of_different_keys_run_in_parallel() -> None:
    cache, calls = make_cache({"a": MB, "b": MB}, 10 * MB, delay=0.4)
    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(cache.get, ["a", "b"]))
    assert time.perf_counter() - start < 0.75  # per-key locks, not one global lock
    assert calls == {"a": 1, "b": 1}


def test_lru_eviction_order_and_budget() -> None:
    cache, calls = make_cache({"a": 4 * MB, "b": 4 * MB, "c": 4 * MB}, 10 * MB)
    cache.get("a")
    cache.get("b")
    cache.get("a")  # a is now most recently used; b is the LRU
    cache.get("c")  # needs room: evicts b, not a
    assert cache.loaded_keys() == ["a", "c"]
    assert cache.eviction_log == ["b"]
    assert cache.used_bytes() <= cache.budget_bytes
    cache.get("b")  # evicts a (LRU now)
    assert cache.eviction_log == ["b", "a"]
    assert calls == {"a": 1, "b": 2, "c": 1}
    assert cache.stats()["evictions"] == 2


def test_model_larger_than_budget_refused_before_loading() -> None:
    cache, calls = make_cache({"big": 50 * MB}, 10 * MB)
    with pytest.raises(InsufficientMemoryError) as info:
        cache.get("big")
    assert calls == {}  # refused without trying
    assert "MEDLAB_MEMORY_BUDGET_GB" in str(info.value)


def test_underestimated_model_still_keeps_budget() -> None:
    sizes = {"a": 6 * MB, "b": 6 * MB}
    cache = ModelCache(lambda k, p: Model(k, sizes[k]), 10 * MB, estimate_fn=lambda k: 0,
                       measure_fn=lambda m: m.nbytes)
    cache.get("a")
    cache.get("b")
    assert cache.loaded_keys() == ["b"]
    assert cache.used_bytes() <= 10 * MB


def test_failed_load_reports_reason_and_can_be_retried() -> None:
    fail = {"a"}
    cache, calls = make_cache({"a": MB, "b": MB}, 10 * MB, fail=fail)
    with pytest.raises(ModelUnavailableError, match="corrupt"):
        cache.get("a")
    assert "corrupt" in cache.stats()["errors"]["a"]
    assert cache.get("b").key == "b"  # cache still usable
    fail.clear()
    assert cache.get("a").key == "a"  # retried, now succeeds
    assert calls["a"] == 2
    assert "a" not in cache.stats()["errors"]


def test_progress_callbacks_are_reported() -> None:
    cache, _ = make_cache({"a": MB}, 10 * MB)
    seen: list[tuple[float, str]] = []
    cache.get("a", progress=lambda f, m: seen.append((f, m)))
    assert seen[0][0] == 0.0 and seen[-1][0] == 1.0
    assert any("loading a" in m for _, m in seen)


def test_stats_shape() -> None:
    cache, _ = make_cache({"a": MB}, 10 * MB)
    cache.get("a")
    cache.get("a")
    stats = cache.stats()
    assert stats["loaded"] == ["a"]
    assert stats["models"]["a"]["bytes"] == MB and stats["models"]["a"]["device"] == "cpu"
    assert stats["models"]["a"]["load_seconds"] >= 0
    assert (stats["hits"], stats["misses"], stats["evictions"]) == (1, 1, 0)


def test_measure_bytes_counts_real_parameters_once() -> None:
    import torch

    lin = torch.nn.Linear(10, 10)  # 110 float32 params
    assert measure_bytes(lin) == 110 * 4
    tied = torch.nn.Sequential(lin, lin)
    assert measure_bytes(tied) == 110 * 4  # shared storage counted once


def test_real_loader_through_process_cache(use_tiny_models) -> None:
    from medlab.core.loaders import get_cache, get_model

    first = get_model("skin")
    assert first.model.config.id2label[4] == "melanoma"
    assert first.image_processor is not None
    assert get_model("skin") is first
    stats = get_cache().stats()
    assert stats["load_counts"] == {"skin": 1}
    assert stats["models"]["skin"]["bytes"] == measure_bytes(first.model) > 0


def test_corrupt_safetensors_gives_clear_error_and_cache_stays_usable(use_tiny_models, tmp_path, monkeypatch) -> None:
    import shutil

    from medlab.core.loaders import get_model

    bad = tmp_path / "bad"
    shutil.copytree(use_tiny_models["MEDLAB_MODEL_SKIN"], bad)
    (bad / "model.safetensors").write_bytes(b"not really safetensors")
    monkeypatch.setenv("MEDLAB_MODEL_SKIN", str(bad))
    with pytest.raises(ModelUnavailableError) as info:
        get_model("skin")
    assert "MEDLAB_MODEL_SKIN" in str(info.value)
    assert get_model("lung_ct").model is not None


def test_pickle_only_dir_refused_unless_allowed(use_tiny_models, tmp_path, monkeypatch) -> None:
    import shutil

    from medlab.core.loaders import get_model

    d = tmp_path / "pickled"
    shutil.copytree(use_tiny_models["MEDLAB_MODEL_SKIN"], d)
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04")
    monkeypatch.setenv("MEDLAB_MODEL_SKIN", str(d))
    with pytest.raises(ModelUnavailableError, match="MEDLAB_ALLOW_PICKLE"):
        get_model("skin")


def test_offline_hub_model_says_why_and_how(monkeypatch) -> None:
    from medlab.core.loaders import get_model

    monkeypatch.setenv("MEDLAB_MODEL_SKIN", "someone/not-cached-model")
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as info:
        get_model("skin")
    assert time.perf_counter() - start < 20
    msg = str(info.value)
    assert "HF_HUB_OFFLINE" in msg and "python -m medlab download skin" in msg


# -- leases, reservations and per-device budgets (issue #12) ------------------------------
class Tracked:
    """A fake model whose bytes count as live from construction until it is freed, measured
    outside the cache (weakref.finalize), so the test sees real high-water marks."""

    def __init__(self, key: str, nbytes: int, meter: Meter, device: str = "cpu") -> None:
        import weakref

        self.key, self.nbytes, self.device = key, nbytes, device
        meter.add(device, nbytes)
        weakref.finalize(self, meter.add, device, -nbytes)


class Meter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: dict[str, int] = {}
        self.peak: dict[str, int] = {}

    def add(self, device: str, n: int) -> None:
        with self.lock:
            self.live[device] = self.live.get(device, 0) + n
            self.peak[device] = max(self.peak.get(device, 0), self.live[device])


def tracked_cache(sizes: dict[str, tuple[str, int]], budgets: dict[str, int], delay: float = 0.2,
                  wait_timeout: float = 30.0):
    meter = Meter()
    calls: dict[str, int] = {}
    lock = threading.Lock()

    def load(key: str, progress) -> Tracked:
        with lock:
            calls[key] = calls.get(key, 0) + 1
        time.sleep(delay)
        device, n = sizes[key]
        return Tracked(key, n, meter, device)

    cache = ModelCache(load, lambda device: budgets[device], estimate_fn=lambda k: sizes[k],
                       measure_fn=lambda m: m.nbytes, wait_timeout=wait_timeout)
    return cache, meter, calls


def test_concurrent_loads_never_exceed_a_budget_that_fits_one() -> None:
    """Two 6 MB models under a 10 MB budget, loaded at the same time by 8 threads each,
    repeatedly: the live bytes (measured outside the cache) never exceed the budget."""
    sizes = {"a": ("cpu", 6 * MB), "b": ("cpu", 6 * MB)}
    cache, meter, _ = tracked_cache(sizes, {"cpu": 10 * MB}, delay=0.05)
    barrier = threading.Barrier(8)

    def worker(i: int) -> str:
        barrier.wait()
        key = "ab"[i % 2]
        for _ in range(3):
            with cache.use(key) as model:
                assert model.key == key
                time.sleep(0.01)
        return key

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, range(8)))
    assert meter.peak["cpu"] <= 10 * MB, f"high-water {meter.peak['cpu'] / MB:.0f} MB over a 10 MB budget"
    assert cache.stats()["devices"]["cpu"]["peak_bytes"] <= 10 * MB
    assert len(cache.loaded_keys()) == 1


def test_leased_model_is_not_evicted_and_the_load_waits_for_it() -> None:
    sizes = {"a": ("cpu", 6 * MB), "b": ("cpu", 6 * MB)}
    cache, meter, calls = tracked_cache(sizes, {"cpu": 10 * MB}, delay=0.0)
    got_b = threading.Event()
    order: list[str] = []

    def load_b() -> None:
        with cache.use("b"):
            order.append("b loaded")
            got_b.set()

    with cache.use("a") as a:
        t = threading.Thread(target=load_b)
        t.start()
        assert not got_b.wait(0.5)  # b waits: a is in use and cannot be dropped from under us
        assert cache.loaded_keys() == ["a"] and a.key == "a"
        order.append("a released")
        del a  # the request drops its reference with its lease
    t.join(10)
    assert order == ["a released", "b loaded"]
    assert meter.peak["cpu"] <= 10 * MB
    with cache.use("a"):  # a was evicted after its lease ended; one copy at a time
        pass
    assert calls == {"a": 2, "b": 1}


def test_a_request_that_needs_two_models_that_do_not_fit_fails_at_once() -> None:
    sizes = {"a": ("cpu", 6 * MB), "b": ("cpu", 6 * MB)}
    cache, _, _ = tracked_cache(sizes, {"cpu": 10 * MB}, delay=0.0, wait_timeout=30)
    start = time.perf_counter()
    with cache.use("a"):
        with pytest.raises(InsufficientMemoryError, match="this request itself"):
            with cache.use("b"):
                pass
    assert time.perf_counter() - start < 5  # no wait for a lease that could never end
    with cache.use("b"):  # afterwards, b loads fine
        pass


def test_waiting_for_a_lease_times_out_with_a_clear_error() -> None:
    sizes = {"a": ("cpu", 6 * MB), "b": ("cpu", 6 * MB)}
    cache, _, _ = tracked_cache(sizes, {"cpu": 10 * MB}, delay=0.0, wait_timeout=0.3)
    release = threading.Event()
    held = threading.Event()

    def hold_a() -> None:
        with cache.use("a"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold_a)
    t.start()
    held.wait(5)
    with pytest.raises(InsufficientMemoryError, match="in use by other requests"):
        cache.get("b")
    release.set()
    t.join(5)


def test_devices_have_separate_budgets_and_stats() -> None:
    sizes = {"g1": ("cuda:0", 6 * MB), "g2": ("cuda:0", 6 * MB), "c1": ("cpu", 6 * MB)}
    cache, meter, _ = tracked_cache(sizes, {"cpu": 10 * MB, "cuda:0": 8 * MB}, delay=0.0)
    cache.get("c1")
    cache.get("g1")
    assert sorted(cache.loaded_keys()) == ["c1", "g1"]  # different devices: both fit
    cache.get("g2")  # evicts g1 (same device), never c1
    assert sorted(cache.loaded_keys()) == ["c1", "g2"]
    stats = cache.stats()["devices"]
    assert stats["cuda:0"]["budget_bytes"] == 8 * MB and stats["cpu"]["budget_bytes"] == 10 * MB
    assert stats["cuda:0"]["used_bytes"] == 6 * MB and stats["cuda:0"]["models"] == ["g2"]
    assert stats["cuda:0"]["peak_bytes"] == 6 * MB and meter.peak["cuda:0"] == 6 * MB
    assert stats["cpu"]["used_bytes"] == 6 * MB
    with pytest.raises(InsufficientMemoryError, match="MEDLAB_GPU_MEMORY_BUDGET_GB"):
        ModelCache(lambda k, p: None, lambda d: 4 * MB, estimate_fn=lambda k: ("cuda:0", 6 * MB)).get("x")


def test_use_model_holds_a_lease_on_the_process_cache(use_tiny_models) -> None:
    from medlab.core.loaders import get_cache, use_model

    with use_model("skin") as loaded:
        assert loaded.model is not None
        assert get_cache().stats()["models"]["skin"]["leases"] == 1
        assert get_cache().evict("skin") is False  # in use: kept
    assert get_cache().stats()["models"]["skin"]["leases"] == 0
    assert get_cache().evict("skin") is True


def test_two_requests_waiting_on_each_other_fail_fast_instead_of_deadlocking() -> None:
    """B holds a lease on `a` and asks for `b`, whose load (by A) waits for room that only
    B's lease could free: A must not wait out the whole timeout."""
    sizes = {"a": ("cpu", 6 * MB), "b": ("cpu", 6 * MB)}
    cache, _, _ = tracked_cache(sizes, {"cpu": 10 * MB}, delay=0.0, wait_timeout=60)
    holding, go = threading.Event(), threading.Event()
    errors: dict[str, BaseException] = {}

    def b_thread() -> None:
        try:
            with cache.use("a"):
                holding.set()
                go.wait(10)
                with cache.use("b"):
                    pass
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertions
            errors["B"] = exc

    def a_thread() -> None:
        try:
            with cache.use("b"):
                pass
        except BaseException as exc:  # noqa: BLE001
            errors["A"] = exc

    start = time.perf_counter()
    tb = threading.Thread(target=b_thread)
    tb.start()
    holding.wait(5)
    ta = threading.Thread(target=a_thread)
    ta.start()
    time.sleep(0.3)  # A now loads b and waits for room
    go.set()
    ta.join(20)
    tb.join(20)
    assert time.perf_counter() - start < 10
    assert isinstance(errors.get("A"), InsufficientMemoryError)
    assert isinstance(errors.get("B"), InsufficientMemoryError)


def test_models_loading_at_the_same_time_come_back_whole(use_tiny_models) -> None:
    """transformers' from_pretrained is not thread-safe: loaded in parallel with other models,
    the tiny T5 came back with its embeddings untied (random). Loads take turns, so every
    model of a concurrent cold burst loads, and T5's tied weights share one tensor."""
    import threading

    from medlab.core.loaders import get_model, reset_cache

    for _ in range(4):
        reset_cache()
        errors: dict[str, str] = {}

        def load(key: str, errors: dict[str, str] = errors) -> None:
            try:
                get_model(key)
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors[key] = str(exc)

        keys = ("impression", "skin", "lung_ct", "plip", "clip_baseline", "captioner")
        threads = [threading.Thread(target=load, args=(k,)) for k in keys]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        t5 = get_model("impression").model
        assert t5.encoder.embed_tokens.weight.data_ptr() == t5.shared.weight.data_ptr()
