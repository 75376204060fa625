"""What each model's availability is, without loading anything or touching the network
(except one short, memoised reachability probe of the Hub when not in offline mode)."""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medlab.core.config import load_settings
from medlab.core.errors import MedlabError, ModelUnavailableError
from medlab.core.registry import get_spec, model_keys, resolve_source

HUB_HOST = "huggingface.co"


def _hub_address() -> tuple[str, int]:
    """Host and port of the Hub this process downloads from (HF_ENDPOINT, as huggingface_hub)."""
    from urllib.parse import urlsplit

    endpoint = urlsplit(os.environ.get("HF_ENDPOINT", "").strip() or f"https://{HUB_HOST}")
    return endpoint.hostname or HUB_HOST, endpoint.port or (80 if endpoint.scheme == "http" else 443)
_probe_lock = threading.Lock()
_probe: tuple[float, bool] | None = None
_probe_thread: threading.Thread | None = None


@dataclass(frozen=True)
class Availability:
    key: str
    title: str
    source: str
    origin: str  # "local", "hub", "pypi" or "none"
    status: str  # "loaded", "ready", "downloadable" or "unavailable"
    reason: str = ""
    fix: str = ""
    licence: str = ""
    community: bool = False

    @property
    def usable(self) -> bool:
        return self.status in ("loaded", "ready", "downloadable")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def _probe_hub(timeout: float) -> bool:
    try:
        with socket.create_connection(_hub_address(), timeout=timeout):
            return True
    except OSError:
        return False


def hub_reachable(timeout: float = 2.0, max_age: float = 300.0, wait: bool = True) -> bool | None:
    """Can this process open a TCP connection to the Hub? Memoised for `max_age` seconds.

    With wait=False the probe runs in a background thread (DNS can stall for seconds) and
    None is returned until it has an answer; status pages use this so they never block."""
    global _probe, _probe_thread
    if hub_offline():
        return False
    with _probe_lock:
        now = time.monotonic()
        if _probe is not None and now - _probe[0] < max_age:
            return _probe[1]
        if not wait:
            if _probe_thread is None or not _probe_thread.is_alive():
                def run() -> None:
                    global _probe
                    ok = _probe_hub(timeout)
                    with _probe_lock:
                        _probe = (time.monotonic(), ok)

                _probe_thread = threading.Thread(target=run, name="hub-probe", daemon=True)
                _probe_thread.start()
            return None
    ok = _probe_hub(timeout)
    with _probe_lock:
        _probe = (time.monotonic(), ok)
    return ok


def hub_cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """Path of a cached snapshot of `repo_id` in the local HF cache, if there is one."""
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    snapshots = folder / "snapshots"
    if not snapshots.is_dir():
        return None
    if revision:
        ref = folder / "refs" / revision
        commit = ref.read_text().strip() if ref.is_file() else revision
        candidate = snapshots / commit
        return candidate if candidate.is_dir() and any(candidate.iterdir()) else None
    ref = folder / "refs" / "main"
    if ref.is_file():
        candidate = snapshots / ref.read_text().strip()
        if candidate.is_dir() and any(candidate.iterdir()):
            return candidate
    for candidate in sorted(snapshots.iterdir()):
        if candidate.is_dir() and any(candidate.iterdir()):
            return candidate
    return None


def availability(key: str, loaded: bool = False, wait_for_probe: bool = False) -> Availability:
    spec = get_spec(key)
    common = {"key": key, "title": spec.title, "licence": spec.licence, "community": spec.community}
    try:
        source = resolve_source(key)
    except ModelUnavailableError as exc:
        return Availability(source=spec.default_source or "-", origin="none", status="unavailable",
                            reason=exc.reason, fix=exc.fix, **common)
    origin = "pypi" if spec.default_source.startswith("pypi:") and not source.from_env else (
        "local" if source.is_local else "hub")
    if loaded:
        return Availability(source=source.location, origin=origin, status="loaded", **common)
    if spec.needs_gpu and source.is_default:
        from medlab.core.loaders import check_hardware

        try:
            check_hardware(key)
        except MedlabError as exc:
            reason = getattr(exc, "reason", str(exc))
            fix = getattr(exc, "fix", "")
            return Availability(source=source.location, origin=origin, status="unavailable",
                                reason=reason, fix=fix, **common)
    if source.is_local:
        if Path(source.location).is_dir():
            return Availability(source=source.location, origin=origin, status="ready", **common)
        return Availability(source=source.location, origin=origin, status="unavailable",
                            reason=f"{source.location} does not exist.", fix=f"fix {source.env_var}.", **common)
    if hub_cached_snapshot(source.location, source.revision) is not None:
        return Availability(source=source.location, origin=origin, status="ready",
                            reason="in the local Hugging Face cache", **common)
    fix = (f"run `python -m medlab download {key}` on a connected machine, or set "
           f"{source.env_var} to a local model directory.")
    reachable = hub_reachable(wait=wait_for_probe)
    if reachable or reachable is None:
        reason = f"downloads on first use (~{spec.memory_gb:g} GB)" if reachable else (
            "not in the local Hugging Face cache; a download will be tried on first use")
        return Availability(source=source.location, origin=origin, status="downloadable",
                            reason=reason, fix=fix, **common)
    why = "offline mode is on (HF_HUB_OFFLINE=1)" if hub_offline() else "the Hugging Face Hub cannot be reached"
    return Availability(source=source.location, origin=origin, status="unavailable",
                        reason=f"not in the local Hugging Face cache and {why}.", fix=fix, **common)


def model_status() -> dict[str, Any]:
    """JSON-ready status: cache stats plus each model's availability."""
    from medlab.core.loaders import get_cache

    cache = get_cache()
    settings = load_settings()
    stats = cache.stats()
    loaded = set(stats["loaded"])
    models = {key: asdict(availability(key, loaded=key in loaded)) for key in model_keys()}
    return {
        "cache": stats,
        "models": models,
        "settings": {
            "device": settings.device,
            "memory_budget_gb": round(settings.memory_budget_bytes() / 2**30, 2),
            "gpu_memory_budget_gb": settings.gpu_memory_budget_gb,  # None: free memory at start
            "data_dir": str(settings.data_dir),
            "chroma": f"{settings.chroma_host}:{settings.chroma_port}" if settings.chroma_host else "embedded",
            "zero_gpu": settings.zero_gpu,
            "hub_offline": hub_offline(),
        },
    }
