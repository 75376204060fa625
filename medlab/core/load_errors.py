"""Why a model could not be loaded, from the libraries' exception CLASSES (never message text).

transformers and sentence-transformers often re-raise a huggingface_hub error as a plain
OSError; the typed original is then on the __cause__ / __context__ chain, which we walk."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from medlab.core.errors import (
    InsufficientMemoryError,
    MedlabError,
    ModelUnavailableError,
    WeightsDamagedError,
    exception_chain,
)
from medlab.core.registry import ModelSource


def fix_hint(source: ModelSource) -> str:
    return (
        f"run `python -m medlab download {source.key}` on a machine with internet access "
        f"(weights go to the Hugging Face cache), or set {source.env_var} to a local model "
        "directory in the standard Hugging Face format."
    )


def _find(exc: BaseException, *types: type[BaseException]) -> Any:
    return next((e for e in exception_chain(exc) if isinstance(e, types)), None)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off")


def _status_code(exc: Any) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _url(exc: Any) -> str:
    response = getattr(exc, "response", None)
    return str(getattr(response, "url", "") or "")


def translate(source: ModelSource, exc: BaseException, device: str | None = None) -> ModelUnavailableError:
    """The ModelUnavailableError (reason + fix) that explains `exc` for model `source.key`."""
    from huggingface_hub import errors as hf

    key, where = source.key, source.location
    torch = sys.modules.get("torch")
    oom_types: tuple[type[BaseException], ...] = (MemoryError,)
    if torch is not None:
        oom_types += (torch.OutOfMemoryError,)
    if (oom := _find(exc, *oom_types)) is not None:
        on = f" on {device}" if device else ""
        return InsufficientMemoryError(
            key, f"the machine ran out of memory{on} while loading {where} ({type(oom).__name__}).",
            f"point {source.env_var} at a smaller checkpoint, load it in 4-bit (install bitsandbytes on a "
            "CUDA machine), lower MEDLAB_MEMORY_BUDGET_GB / MEDLAB_GPU_MEMORY_BUDGET_GB so fewer models "
            "stay loaded together, or use a machine with more memory.",
        )
    safetensors = sys.modules.get("safetensors")
    if safetensors is not None and _find(exc, safetensors.SafetensorError) is not None:
        return WeightsDamagedError(key, where, "safetensors could not read it", source.env_var if source.is_local else None)
    if _find(exc, hf.GatedRepoError) is not None:
        return ModelUnavailableError(
            key, f"{where} is a gated repository on the Hugging Face Hub and this machine has no access to it.",
            f"accept its licence on https://huggingface.co/{where} with your account, then set HF_TOKEN "
            f"(or run `hf auth login`) and restart; or set {source.env_var} to another checkpoint.",
        )
    if _find(exc, hf.RevisionNotFoundError) is not None:
        return ModelUnavailableError(
            key, f"revision {source.revision or 'main'!r} of {where} does not exist on the Hugging Face Hub.",
            f"set MEDLAB_REVISION_{key.upper()} to an existing branch, tag or commit (or unset it).",
        )
    if _find(exc, hf.RepositoryNotFoundError) is not None:
        return ModelUnavailableError(
            key, f"{where} was not found on the Hugging Face Hub (or it is private).",
            f"check the repo id in {source.env_var} (a private repo also needs HF_TOKEN).",
        )
    if (missing := _find(exc, hf.RemoteEntryNotFoundError)) is not None:
        filename = _url(missing).rsplit("/", 1)[-1] or "a required file"
        pickle_note = "" if _allow_pickle() else (
            " The app loads safetensors weights only; if the repo ships only .bin/.pt files, use a "
            "revision that has safetensors, convert them, or set MEDLAB_ALLOW_PICKLE=1 if you trust the repo."
        )
        return ModelUnavailableError(
            key, f"{where} (revision {source.revision or 'main'}) has no file {filename}.{pickle_note}",
            f"set {source.env_var} to a checkpoint in the standard Hugging Face format.",
        )
    if (http := _find(exc, hf.HfHubHTTPError)) is not None:
        code = _status_code(http)
        if code is not None and code >= 500:
            return ModelUnavailableError(
                key, f"the Hugging Face Hub answered with a server error ({code}) for {where}.",
                "try again in a few minutes (https://status.huggingface.co), or " + fix_hint(source),
            )
        return ModelUnavailableError(key, f"the Hugging Face Hub refused {where} (HTTP {code}).", fix_hint(source))
    if _find(exc, hf.OfflineModeIsEnabled, hf.LocalEntryNotFoundError) is not None:
        why = "offline mode is on (HF_HUB_OFFLINE)" if _hub_offline() else "the Hugging Face Hub could not be reached"
        return ModelUnavailableError(key, f"{where} is not in the local Hugging Face cache and {why}.", fix_hint(source))
    if _find(exc, ConnectionError, TimeoutError) is not None or _is_network_error(exc):
        return ModelUnavailableError(key, f"the Hugging Face Hub could not be reached to fetch {where}.", fix_hint(source))
    name = type(exc).__name__
    text = " ".join(str(exc).split())[:400] or name  # reported as is, never interpreted
    if source.is_local:
        return ModelUnavailableError(key, f"loading {where} failed ({name}: {text}).",
                                     f"check that {source.env_var} points at a complete model directory.")
    return ModelUnavailableError(key, f"loading {where} failed ({name}: {text}).", fix_hint(source))


def _is_network_error(exc: BaseException) -> bool:
    httpx = sys.modules.get("httpx")
    return httpx is not None and _find(exc, httpx.TransportError) is not None


def _allow_pickle() -> bool:
    from medlab.core.config import load_settings

    return load_settings().allow_pickle


@contextlib.contextmanager
def translate_load_errors(source: ModelSource, device: str | None = None) -> Iterator[None]:
    """Re-raise any failure inside the block as the ModelUnavailableError that explains it."""
    try:
        yield
    except MedlabError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure is reported with its cause
        raise translate(source, exc, device) from exc
