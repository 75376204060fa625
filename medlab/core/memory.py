"""How much memory a loaded model holds, and what torch's allocator says about a device.

Nothing here imports torch: it is used only when torch is already loaded."""

from __future__ import annotations

import gc
import sys
from typing import Any


def free_memory() -> None:
    """Release dropped models: unreachable objects first, then the CUDA allocator's cache (an
    evicted model or a failed load leaves both behind)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def normalize_device(device: Any) -> str:
    """'cuda' -> 'cuda:0' (torch's default device index), other names unchanged."""
    text = str(device or "cpu")
    return "cuda:0" if text == "cuda" else text


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


def torch_cuda_stats(device: str) -> dict[str, Any]:
    """What torch's allocator says about a CUDA device (only when torch is already loaded)."""
    torch = sys.modules.get("torch")
    if not device.startswith("cuda") or torch is None:
        return {}
    try:
        if not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return {}
        return {
            "torch_allocated_bytes": int(torch.cuda.memory_allocated(device)),
            "torch_peak_allocated_bytes": int(torch.cuda.max_memory_allocated(device)),
        }
    except Exception:  # noqa: BLE001 - stats are informative; never fail a status page
        return {}
