"""Settings read from the environment.

Every setting is read when asked for (not cached at import) so tests and the CLI can change
the environment. Invalid values raise ConfigError naming the variable and what is allowed."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from medlab.core.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]

DEVICE_CHOICES = ("auto", "cpu", "cuda")
_CUDA_INDEXED = re.compile(r"^cuda:\d+$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def model_env_var(key: str) -> str:
    """Name of the variable that overrides the source of model `key`."""
    return f"MEDLAB_MODEL_{key.upper()}"


def revision_env_var(key: str) -> str:
    return f"MEDLAB_REVISION_{key.upper()}"


@dataclass(frozen=True)
class Settings:
    device: str = "auto"
    memory_budget_gb: float | None = None  # None: derived from the machine (see memory_budget_bytes)
    data_dir: Path = PROJECT_ROOT / "data"
    chroma_host: str | None = None
    chroma_port: int = 8000
    max_upload_mb: float = 50.0
    max_image_pixels: int = 60_000_000
    allow_pickle: bool = False
    auth: tuple[str, str] | None = None
    captioner_endpoint: str | None = None
    captioner_endpoint_model: str | None = None
    zero_gpu: bool = False
    gpu_memory_budget_gb: float | None = None  # None: derived from the device (see gpu_memory_budget_bytes)
    # Default pathology index: Hub dataset id, local folder / .zip / .parquet, or "off".
    pathology_source: str = "1aurent/NCT-CRC-HE:data/CRC_VAL_HE_7K-*.parquet"
    pathology_max_tiles: int = 2000
    teach_max_images: int = 5000  # images one "Teach a classifier" run may use
    lung_dataset: str | None = None  # folder, zip or Hub dataset id taught at first start
    mcp: bool = False  # also serve the public api_names as MCP tools (gradio's MCP server)
    gpu_lane_concurrency: int = 2  # model events (every tab's forward) that run at once (tabs.common.Lane.GPU)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def memory_budget_bytes(self) -> int:
        """The cache's budget: the configured value, or 60% of this machine's RAM."""
        if self.memory_budget_gb is not None:
            return int(self.memory_budget_gb * 1024**3)
        import psutil

        return int(psutil.virtual_memory().total * 0.6)

    def gpu_memory_budget_bytes(self, device: str = "cuda:0") -> int | None:
        """Budget of one CUDA device: MEDLAB_GPU_MEMORY_BUDGET_GB, else what torch reports
        free on it the first time it is asked (minus headroom for activations), else None
        (unknown while torch is not loaded; status pages must not import it)."""
        if self.gpu_memory_budget_gb is not None:
            return int(self.gpu_memory_budget_gb * 1024**3)
        return _gpu_default_budget(device)


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(name, raw, "one of 1/0, true/false, yes/no, on/off")


def _positive_float(env: Mapping[str, str], name: str, default: float | None) -> float | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(name, raw, "a positive number") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ConfigError(name, raw, "a positive number")
    return value


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate every MEDLAB_* setting."""
    env = os.environ if environ is None else environ

    device = env.get("MEDLAB_DEVICE", "auto").strip().lower() or "auto"
    if device not in DEVICE_CHOICES and not _CUDA_INDEXED.match(device):
        raise ConfigError("MEDLAB_DEVICE", env["MEDLAB_DEVICE"], "auto, cpu, cuda or cuda:N")

    budget = _positive_float(env, "MEDLAB_MEMORY_BUDGET_GB", None)

    raw_dir = env.get("MEDLAB_DATA_DIR", "").strip()
    data_dir = Path(raw_dir).expanduser() if raw_dir else PROJECT_ROOT / "data"
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigError("MEDLAB_DATA_DIR", raw_dir, "a directory (the path exists and is a file)")

    chroma_host = env.get("MEDLAB_CHROMA_HOST", "").strip() or None
    raw_port = env.get("MEDLAB_CHROMA_PORT", "").strip()
    chroma_port = 8000
    if raw_port:
        if not raw_port.isdigit() or not 1 <= int(raw_port) <= 65535:
            raise ConfigError("MEDLAB_CHROMA_PORT", raw_port, "an integer port between 1 and 65535")
        chroma_port = int(raw_port)
        if chroma_host is None:
            raise ConfigError(
                "MEDLAB_CHROMA_PORT", raw_port, "to be used together with MEDLAB_CHROMA_HOST"
            )

    max_upload_mb = _positive_float(env, "MEDLAB_MAX_UPLOAD_MB", 50.0)
    raw_pixels = env.get("MEDLAB_MAX_IMAGE_PIXELS", "").strip()
    max_pixels = 60_000_000
    if raw_pixels:
        if not raw_pixels.isdigit() or int(raw_pixels) < 4096:
            raise ConfigError("MEDLAB_MAX_IMAGE_PIXELS", raw_pixels, "an integer >= 4096")
        max_pixels = int(raw_pixels)

    auth = None
    raw_auth = env.get("MEDLAB_AUTH", "").strip()
    if raw_auth:
        user, sep, password = raw_auth.partition(":")
        if not sep or not user or not password:
            raise ConfigError("MEDLAB_AUTH", "<hidden>", "user:password (both non-empty)")
        auth = (user, password)

    endpoint = env.get("MEDLAB_CAPTIONER_ENDPOINT", "").strip() or None
    if endpoint is not None:
        parsed = urlparse(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(
                "MEDLAB_CAPTIONER_ENDPOINT", endpoint, "an http(s) URL such as http://127.0.0.1:8080/v1"
            )

    raw_cap = env.get("MEDLAB_TEACH_MAX_IMAGES", "").strip()
    teach_max_images = 5000
    if raw_cap:
        if not raw_cap.isdigit() or int(raw_cap) < 4:
            raise ConfigError("MEDLAB_TEACH_MAX_IMAGES", raw_cap, "an integer >= 4")
        teach_max_images = int(raw_cap)

    return Settings(
        device=device,
        memory_budget_gb=budget,
        data_dir=data_dir,
        chroma_host=chroma_host,
        chroma_port=chroma_port,
        max_upload_mb=max_upload_mb,  # type: ignore[arg-type]
        max_image_pixels=max_pixels,
        allow_pickle=_bool(env, "MEDLAB_ALLOW_PICKLE", False),
        auth=auth,
        captioner_endpoint=endpoint,
        captioner_endpoint_model=env.get("MEDLAB_CAPTIONER_ENDPOINT_MODEL", "").strip() or None,
        zero_gpu=_bool(env, "SPACES_ZERO_GPU", False),
        gpu_memory_budget_gb=_positive_float(env, "MEDLAB_GPU_MEMORY_BUDGET_GB", None),
        pathology_source=env.get("MEDLAB_PATHOLOGY_SOURCE", "").strip() or Settings.pathology_source,
        pathology_max_tiles=_positive_int(env, "MEDLAB_PATHOLOGY_MAX_TILES", Settings.pathology_max_tiles),
        teach_max_images=teach_max_images,
        lung_dataset=env.get("MEDLAB_LUNG_DATASET", "").strip() or None,
        mcp=_bool(env, "MEDLAB_MCP", False),
        gpu_lane_concurrency=_positive_int(env, "MEDLAB_GPU_LANE_CONCURRENCY", Settings.gpu_lane_concurrency),
    )


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(name, raw, "a whole number >= 1")
    return int(raw)


# Fraction of a GPU's free memory at start that models may take; the rest is left for
# activations, the KV cache and the CUDA context.
GPU_WEIGHT_FRACTION = 0.85
# ZeroGPU's documented memory per workload (an H200 slice); used as the GPU budget when the
# device cannot be asked before a GPU is attached.
ZERO_GPU_MEMORY_GB = 70.0
_gpu_budgets: dict[str, int] = {}


def _gpu_default_budget(device: str) -> int | None:
    if device in _gpu_budgets:
        return _gpu_budgets[device]
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info(torch.device(device))
    except Exception:  # noqa: BLE001 - e.g. ZeroGPU before a GPU is attached: use the total
        try:
            free = torch.cuda.get_device_properties(torch.device(device)).total_memory
        except Exception:  # noqa: BLE001
            return None
    _gpu_budgets[device] = int(free * GPU_WEIGHT_FRACTION)
    return _gpu_budgets[device]


def cuda_expected(settings: Settings | None = None) -> bool:
    """Whether a CUDA device will be used, decided without importing torch when torch is
    not loaded yet (status pages must stay light): the NVIDIA driver's device list."""
    settings = settings or load_settings()
    if settings.device == "cpu":
        return False
    if settings.zero_gpu:  # ZeroGPU attaches a GPU per call; none is visible at start-up
        return True
    torch = sys.modules.get("torch")
    if torch is not None:
        return bool(torch.cuda.is_available())
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or Path("/dev/nvidia0").exists()


def resolve_device(settings: Settings | None = None) -> str:
    """Concrete torch device string for MEDLAB_DEVICE (auto picks cuda when present)."""
    settings = settings or load_settings()
    if settings.device == "cpu":
        return "cpu"
    import torch

    if settings.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise ConfigError(
            "MEDLAB_DEVICE", settings.device, "auto or cpu on this machine (no CUDA device is visible)"
        )
    return settings.device
