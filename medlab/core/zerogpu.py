"""Hugging Face ZeroGPU support, as its documentation describes it.

On a ZeroGPU Space (SPACES_ZERO_GPU true) a GPU is attached only while a function decorated
with `spaces.GPU` runs. So: `spaces` is imported before torch (it patches torch's CUDA
initialisation when imported), weights are placed on cuda at start-up (outside any GPU
call; they move to the GPU when one is attached), and every event that runs a model is
wrapped in `spaces.GPU(duration=...)`, where the duration is seconds or a callable that
receives the event's arguments. Elsewhere `spaces` is optional and nothing is wrapped."""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from medlab.core.config import load_settings

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
Duration = int | Callable[..., int]

# Every model the app can preload at start-up on ZeroGPU (the captioner when it fits).
PRELOAD_KEYS = ("skin", "lung_ct", "impression", "plip", "clip_baseline", "embedder", "captioner")


def zero_gpu_requested() -> bool:
    """SPACES_ZERO_GPU parsed strictly (0/false/no/off: off; garbage: ConfigError)."""
    return load_settings().zero_gpu


def zero_gpu_enabled() -> bool:
    return zero_gpu_requested() and importlib.util.find_spec("spaces") is not None


def import_spaces_first() -> bool:
    """On ZeroGPU, import `spaces` now, before anything imports torch. True when imported."""
    if not zero_gpu_requested():
        return False
    if "torch" in sys.modules:
        log.warning("torch was imported before spaces: ZeroGPU may not place models on the GPU")
    try:
        import spaces  # noqa: F401 - imported for its side effect on torch
    except ImportError:
        log.warning("SPACES_ZERO_GPU is set but the `spaces` package is not installed: models stay on CPU")
        return False
    return True


def gpu(duration: Duration = 60) -> Callable[[F], F]:
    """`spaces.GPU(duration=...)` on ZeroGPU, otherwise the identity."""

    def decorate(fn: F) -> F:
        if not zero_gpu_enabled():
            return fn
        import spaces

        return spaces.GPU(duration=duration)(fn)  # type: ignore[no-any-return]

    return decorate


def preload_for_zero_gpu(keys: Iterable[str] = PRELOAD_KEYS) -> list[str]:
    """On ZeroGPU, load weights at start-up (placed on cuda; the GPU is attached per call).
    A model that does not fit the GPU budget, or cannot be had, is skipped with a log line
    and left to its tab to explain. Returns the keys that loaded."""
    if not zero_gpu_enabled():
        return []
    from medlab.core.loaders import estimate_placement, get_cache, get_model

    cache = get_cache()
    loaded = []
    for key in keys:
        try:
            device, needed = estimate_placement(key)
            budget = cache.budget_for(device)
            if budget is not None and needed > budget - cache.used_bytes(device):
                log.warning("ZeroGPU preload: %s needs ~%.1f GB on %s, more than is left of the budget; skipped",
                            key, needed / 2**30, device)
                continue
            get_model(key)
            loaded.append(key)
        except Exception as exc:  # noqa: BLE001 - a missing model must not stop the Space
            log.warning("ZeroGPU preload of %s failed: %s", key, exc)
    return loaded
