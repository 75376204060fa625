"""What a checkpoint holds, read without loading it, and whether a load covered it.

- `safetensors_summary`: tensor names, element counts and stored bytes from the safetensors
  headers (an 8-byte length and a JSON header per file), so memory estimates follow the
  real checkpoint without importing torch.
- `planned_bytes`: the resident size of a model on a device, following the dtype the loader
  will use and 4-bit quantisation where the loader applies it.
- `check_safetensors_files`: a truncated or corrupted weights file (its header unreadable,
  or its bytes not matching the tensors the header lists) is refused as WeightsDamagedError.
- `check_transformers_coverage` / `check_state_dict_coverage`: refuse a model whose
  parameters were not all read from the checkpoint (random or partial weights)."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlab.core.errors import ModelUnavailableError, WeightsDamagedError

DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
}
# nf4 weights take half a byte per parameter; bitsandbytes leaves the vision tower, the
# embeddings, norms and lm_head in bf16, which brings Mllama-11B to ~0.7 byte per parameter.
NF4_BYTES_PER_PARAM = 0.7


@dataclass(frozen=True)
class CheckpointSummary:
    names: frozenset[str]
    numel: int  # floating-point elements (the parameters a dtype change applies to)
    stored_bytes: int


def _read_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path.name} is not a safetensors file (shorter than its header length)")
        (length,) = struct.unpack("<Q", raw)
        if length > 100 * 2**20:
            raise ValueError(f"{path.name} has an implausible safetensors header ({length} bytes)")
        return json.loads(f.read(length))


def safetensors_summary(files: Iterable[Path]) -> CheckpointSummary:
    names: set[str] = set()
    numel = stored = 0
    for path in files:
        for name, info in _read_header(path).items():
            if name == "__metadata__":
                continue
            names.add(name)
            begin, end = info["data_offsets"]
            stored += int(end) - int(begin)
            if str(info["dtype"]).startswith(("F", "BF")):
                count = 1
                for dim in info["shape"]:
                    count *= int(dim)
                numel += count
    return CheckpointSummary(frozenset(names), numel, stored)


def planned_bytes(
    stored_bytes: int, numel: int, load_dtype: str | None, quantize_4bit: bool
) -> int:
    """Resident bytes after loading: 4-bit -> NF4_BYTES_PER_PARAM per parameter; a dtype the
    loader forces -> numel x its size (plus the non-float tensors); None: as stored."""
    if quantize_4bit:
        return int(numel * NF4_BYTES_PER_PARAM)
    if load_dtype is None or numel == 0:
        return stored_bytes
    return int(numel * DTYPE_BYTES[load_dtype])


def _missing_error(key: str, what: str, names: list[str], fix: str) -> ModelUnavailableError:
    shown = ", ".join(sorted(names)[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return ModelUnavailableError(
        key, f"the checkpoint does not cover the model: {len(names)} {what} ({shown}); "
        "the app never serves randomly initialised weights.", fix,
    )


def check_transformers_coverage(key: str, info: dict[str, Any], fix: str) -> None:
    """`info` is from_pretrained(..., output_loading_info=True)'s second value."""
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise _missing_error(key, "parameters were not in the weights", missing, fix)
    mismatched = [str(m[0]) if isinstance(m, (tuple, list)) else str(m) for m in info.get("mismatched_keys") or []]
    if mismatched:
        raise _missing_error(key, "parameters had the wrong shape", mismatched, fix)


def check_state_dict_coverage(key: str, model: Any, state_dict_keys: Iterable[str], fix: str) -> None:
    """Every parameter and persistent buffer of `model` must be in the checkpoint's keys."""
    have = set(state_dict_keys)
    missing = [name for name in model.state_dict() if name not in have]
    if missing:
        raise _missing_error(key, "parameters were not in the weights", missing, fix)


def damage(path: Path) -> str | None:
    """Why a safetensors file is damaged (truncated, corrupted header, tensors outside or not
    filling the data area), or None when its structure is whole. Reads the header only."""
    try:
        size = path.stat().st_size
        header = _read_header(path)
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
    except (OSError, ValueError, UnicodeDecodeError, struct.error) as exc:  # JSONDecodeError is a ValueError
        return f"unreadable header: {type(exc).__name__}"
    if not isinstance(header, dict):
        return "the header is not a table of tensors"
    data = size - 8 - length
    end_max = 0
    try:
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = (int(x) for x in info["data_offsets"])
            count = 1
            for dim in info["shape"]:
                count *= int(dim)
            width = DTYPE_BYTES.get(str(info["dtype"]))
            if begin < 0 or end < begin or (width is not None and end - begin != count * width):
                return f"tensor {name} has inconsistent offsets"
            end_max = max(end_max, end)
    except (KeyError, TypeError, ValueError) as exc:
        return f"malformed tensor entry: {type(exc).__name__}"
    if end_max != data:
        what = "truncated" if data < end_max else "longer than its tensors"
        return f"{what}: {max(0, data)} data bytes, the header lists {end_max}"
    return None


def check_safetensors_files(key: str, folder: Path, env_var: str | None = None) -> None:
    """Refuse a model folder whose safetensors files are damaged (WeightsDamagedError names the
    real file: a Hub-cache blob behind its snapshot link, so deleting it forces a re-download;
    `env_var` when the folder is a local one that variable points at)."""
    for path in sorted(Path(folder).rglob("*.safetensors")):
        why = damage(path)
        if why:
            raise WeightsDamagedError(key, str(path.resolve()), why, env_var)
