"""Optional Hugging Face ZeroGPU support.

On a ZeroGPU Space (SPACES_ZERO_GPU set) GPU work must run inside functions decorated
with `spaces.GPU`; elsewhere the decorator is the identity. `spaces` is optional."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from medlab.core.config import load_settings

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def zero_gpu_enabled() -> bool:
    return load_settings().zero_gpu and importlib.util.find_spec("spaces") is not None


def gpu(duration: int = 60) -> Callable[[F], F]:
    """`spaces.GPU(duration=...)` on ZeroGPU, otherwise a no-op decorator."""

    def decorate(fn: F) -> F:
        if not zero_gpu_enabled():
            return fn
        import spaces

        return spaces.GPU(duration=duration)(fn)  # type: ignore[no-any-return]

    return decorate


def preload_for_zero_gpu(keys: list[str]) -> list[str]:
    """On ZeroGPU, weights are placed at start-up (the GPU is attached per call).
    Returns the keys that loaded; failures are logged and left to the tabs to report."""
    if not zero_gpu_enabled():
        return []
    from medlab.core.loaders import get_model

    loaded = []
    for key in keys:
        try:
            get_model(key)
            loaded.append(key)
        except Exception as exc:  # noqa: BLE001 - a missing model must not stop the Space
            log.warning("ZeroGPU preload of %s failed: %s", key, exc)
    return loaded
