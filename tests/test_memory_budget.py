"""The real process cache under a budget that fits two of three tiny models: cycling through
all three keeps the budget, reloads evicted models, and every answer stays correct."""

from __future__ import annotations

import pytest

from medlab.core.cache import measure_bytes


def _predict_skin(bundle, image):  # same input -> same logits, whatever was evicted meanwhile
    import torch

    with torch.inference_mode():
        inputs = bundle.image_processor(images=image, return_tensors="pt")
        return bundle.model(**inputs).logits[0].tolist()


@pytest.fixture
def three_models(use_tiny_models, monkeypatch):
    from medlab.core.loaders import get_model, reset_cache

    sizes = {}
    for key in ("skin", "lung_ct", "impression"):
        sizes[key] = measure_bytes(get_model(key))
    reset_cache()
    # Budget: the two largest fit together, all three do not.
    ordered = sorted(sizes.values())
    budget = ordered[1] + ordered[2] + ordered[0] // 2
    assert budget < sum(ordered)
    monkeypatch.setenv("MEDLAB_MEMORY_BUDGET_GB", str(budget / 2**30))
    return sizes, budget


def test_cycling_keeps_budget_and_results(three_models) -> None:
    from PIL import Image

    from medlab.core.loaders import get_cache, get_model

    sizes, budget = three_models
    image = Image.new("RGB", (64, 64), (180, 90, 60))
    reference = _predict_skin(get_model("skin"), image)
    for _ in range(3):
        for key in ("skin", "lung_ct", "impression"):
            bundle = get_model(key)
            assert get_cache().used_bytes() <= budget
            assert len(get_cache().loaded_keys()) <= 2
            if key == "skin":
                assert _predict_skin(bundle, image) == pytest.approx(reference)
    stats = get_cache().stats()
    assert stats["evictions"] >= 6  # every step of the cycle needed room
    assert stats["used_bytes"] <= budget
    assert stats["load_counts"]["skin"] >= 3


def test_failed_load_in_the_cycle_leaves_cache_usable(three_models, use_tiny_models, tmp_path, monkeypatch) -> None:
    import shutil

    from medlab.core.errors import ModelUnavailableError
    from medlab.core.loaders import get_cache, get_model

    get_model("skin")
    get_model("lung_ct")
    broken = tmp_path / "broken-t5"
    good = use_tiny_models["MEDLAB_MODEL_IMPRESSION"]
    shutil.copytree(good, broken)
    for f in broken.glob("*.safetensors"):
        f.write_bytes(f.read_bytes()[:100])  # truncated weights
    monkeypatch.setenv("MEDLAB_MODEL_IMPRESSION", str(broken))
    with pytest.raises(ModelUnavailableError):
        get_model("impression")
    assert "impression" in get_cache().stats()["errors"]
    assert get_model("lung_ct").model is not None
    monkeypatch.setenv("MEDLAB_MODEL_IMPRESSION", good)  # repaired: the retry succeeds
    assert get_model("impression").model is not None


def test_concurrent_cold_requests_never_exceed_a_budget_that_fits_one(use_tiny_models, monkeypatch) -> None:
    """Real loaders, two tiny models, a budget that fits one of them: 6 threads lease both
    keys at once, repeatedly. The bytes of model objects alive at any moment (counted outside
    the cache, from construction until they are freed) never exceed the budget."""
    import threading
    import weakref
    from concurrent.futures import ThreadPoolExecutor

    from medlab.core import loaders

    sizes = {}
    for key in ("skin", "lung_ct"):
        sizes[key] = measure_bytes(loaders.get_model(key))
    loaders.reset_cache()
    budget = max(sizes.values()) + min(sizes.values()) // 2  # fits one, never both
    monkeypatch.setenv("MEDLAB_MEMORY_BUDGET_GB", str(budget / 2**30))
    lock = threading.Lock()
    live = {"now": 0, "peak": 0}

    def add(n: int) -> None:
        with lock:
            live["now"] += n
            live["peak"] = max(live["peak"], live["now"])

    real_load = loaders.load_model

    def counted_load(key, progress):
        value = real_load(key, progress)
        n = measure_bytes(value)
        add(n)
        weakref.finalize(value.model, add, -n)
        return value

    monkeypatch.setattr(loaders, "load_model", counted_load)
    barrier = threading.Barrier(6)

    def worker(i: int) -> None:
        barrier.wait()
        for j in range(3):
            key = ("skin", "lung_ct")[(i + j) % 2]
            with loaders.use_model(key) as loaded:
                assert loaded.model is not None
                del loaded

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(worker, range(6)))
    stats = loaders.get_cache().stats()
    assert live["peak"] <= budget, f"high-water {live['peak']} B over the budget {budget} B"
    assert stats["devices"]["cpu"]["peak_bytes"] <= budget
    assert stats["loads"] >= 2
