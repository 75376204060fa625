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
