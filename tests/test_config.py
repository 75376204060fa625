"""Every configuration error names the variable and what is allowed."""

from __future__ import annotations

import pytest

from medlab.core.config import load_settings, model_env_var
from medlab.core.errors import ConfigError, ModelUnavailableError, UnknownModelError
from medlab.core.registry import get_spec, model_keys, resolve_source


@pytest.mark.parametrize(
    ("env", "variable", "allowed"),
    [
        ({"MEDLAB_DEVICE": "tpu"}, "MEDLAB_DEVICE", "auto, cpu, cuda or cuda:N"),
        ({"MEDLAB_DEVICE": "cuda:x"}, "MEDLAB_DEVICE", "auto, cpu, cuda or cuda:N"),
        ({"MEDLAB_MEMORY_BUDGET_GB": "lots"}, "MEDLAB_MEMORY_BUDGET_GB", "a positive number"),
        ({"MEDLAB_MEMORY_BUDGET_GB": "-2"}, "MEDLAB_MEMORY_BUDGET_GB", "a positive number"),
        ({"MEDLAB_MEMORY_BUDGET_GB": "nan"}, "MEDLAB_MEMORY_BUDGET_GB", "a positive number"),
        ({"MEDLAB_CHROMA_HOST": "db", "MEDLAB_CHROMA_PORT": "99999"}, "MEDLAB_CHROMA_PORT", "between 1 and 65535"),
        ({"MEDLAB_CHROMA_HOST": "db", "MEDLAB_CHROMA_PORT": "http"}, "MEDLAB_CHROMA_PORT", "between 1 and 65535"),
        ({"MEDLAB_CHROMA_PORT": "8000"}, "MEDLAB_CHROMA_PORT", "together with MEDLAB_CHROMA_HOST"),
        ({"MEDLAB_MAX_UPLOAD_MB": "0"}, "MEDLAB_MAX_UPLOAD_MB", "a positive number"),
        ({"MEDLAB_MAX_IMAGE_PIXELS": "12"}, "MEDLAB_MAX_IMAGE_PIXELS", "an integer >= 4096"),
        ({"MEDLAB_ALLOW_PICKLE": "maybe"}, "MEDLAB_ALLOW_PICKLE", "1/0, true/false"),
        ({"MEDLAB_AUTH": "teacheronly"}, "MEDLAB_AUTH", "user:password"),
        ({"MEDLAB_CAPTIONER_ENDPOINT": "ftp://x"}, "MEDLAB_CAPTIONER_ENDPOINT", "an http(s) URL"),
        ({"SPACES_ZERO_GPU": "sometimes"}, "SPACES_ZERO_GPU", "1/0, true/false"),
        ({"MEDLAB_GPU_MEMORY_BUDGET_GB": "0"}, "MEDLAB_GPU_MEMORY_BUDGET_GB", "a positive number"),
        ({"MEDLAB_GPU_LANE_CONCURRENCY": "0"}, "MEDLAB_GPU_LANE_CONCURRENCY", "a whole number >= 1"),
    ],
)
def test_invalid_values_name_variable_and_allowed(env: dict[str, str], variable: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    message = str(info.value)
    assert variable in message
    assert allowed in message
    assert info.value.variable == variable


def test_data_dir_that_is_a_file(tmp_path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="MEDLAB_DATA_DIR"):
        load_settings({"MEDLAB_DATA_DIR": str(f)})


def test_auth_password_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"MEDLAB_AUTH": "secretpass"})
    assert "secretpass" not in str(info.value)


def test_valid_values_parse(tmp_path) -> None:
    s = load_settings(
        {
            "MEDLAB_DEVICE": "CUDA:1",
            "MEDLAB_MEMORY_BUDGET_GB": "1.5",
            "MEDLAB_DATA_DIR": str(tmp_path),
            "MEDLAB_CHROMA_HOST": "chroma.local",
            "MEDLAB_CHROMA_PORT": "8001",
            "MEDLAB_AUTH": "teacher:pw:with:colons",
            "MEDLAB_ALLOW_PICKLE": "yes",
        }
    )
    assert s.device == "cuda:1"
    assert s.memory_budget_bytes() == int(1.5 * 1024**3)
    assert s.data_dir == tmp_path
    assert (s.chroma_host, s.chroma_port) == ("chroma.local", 8001)
    assert s.auth == ("teacher", "pw:with:colons")
    assert s.allow_pickle is True


def test_defaults() -> None:
    s = load_settings({})
    assert s.device == "auto" and s.chroma_host is None and s.auth is None
    assert s.memory_budget_bytes() > 0
    assert s.allow_pickle is False


def test_unknown_model_key_lists_valid_ones() -> None:
    with pytest.raises(UnknownModelError) as info:
        get_spec("xray")
    for key in model_keys():
        assert key in str(info.value)


def test_registry_has_the_design_keys_and_specs_are_frozen() -> None:
    assert set(model_keys()) == {
        "skin", "lung_ct", "captioner", "captioner_adapter", "impression", "plip", "clip_baseline", "embedder",
        "reranker", "embedder_multilingual", "assistant_generator",
    }
    spec = get_spec("skin")
    with pytest.raises(AttributeError):
        spec.default_source = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.params["threshold"] = 0.5  # type: ignore[index]


def test_source_override_by_env(tmp_path) -> None:
    env = {model_env_var("lung_ct"): str(tmp_path)}
    src = resolve_source("lung_ct", env)
    assert src.is_local and src.from_env and src.location == str(tmp_path.resolve())
    hub = resolve_source("skin", {model_env_var("skin"): "someone/some-model"})
    assert not hub.is_local and hub.location == "someone/some-model"
    default = resolve_source("impression", {})
    assert default.location == "google/flan-t5-base" and default.is_default


def test_lung_default_is_explained_not_silent() -> None:
    with pytest.raises(ModelUnavailableError) as info:
        resolve_source("lung_ct", {})
    assert "MEDLAB_MODEL_LUNG_CT" in str(info.value)
    assert "training.train_classifier" in str(info.value)


def test_embedder_default_resolves_offline_from_pypi_package() -> None:
    src = resolve_source("embedder", {})
    assert src.is_local
    from pathlib import Path

    assert (Path(src.location) / "config.json").is_file() or any(Path(src.location).iterdir())


@pytest.mark.parametrize(("raw", "expected"), [("0", False), ("false", False), ("no", False), ("off", False),
                                               ("", False), ("1", True), ("true", True), ("Yes", True)])
def test_zero_gpu_flag_is_parsed_strictly(raw: str, expected: bool) -> None:
    assert load_settings({"SPACES_ZERO_GPU": raw}).zero_gpu is expected  # "0" used to count as on


def test_gpu_budget_is_its_own_setting() -> None:
    settings = load_settings({"MEDLAB_MEMORY_BUDGET_GB": "2", "MEDLAB_GPU_MEMORY_BUDGET_GB": "7.5"})
    assert settings.memory_budget_bytes() == 2 * 1024**3
    assert settings.gpu_memory_budget_bytes("cuda:0") == int(7.5 * 1024**3)


def test_override_equal_to_the_default_repo_keeps_the_pinned_revision() -> None:
    spec = get_spec("plip")
    assert spec.revision  # the safetensors PR
    same = resolve_source("plip", {model_env_var("plip"): spec.default_source})
    assert (same.location, same.revision, same.from_env) == (spec.default_source, spec.revision, False)
    other = resolve_source("plip", {model_env_var("plip"): "someone/plip-copy"})
    assert other.revision is None and other.from_env
    pinned = resolve_source("plip", {model_env_var("plip"): spec.default_source, "MEDLAB_REVISION_PLIP": "abc"})
    assert pinned.revision == "abc"


def test_estimates_follow_dtype_and_4bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The captioner's 22 GB is its bf16 size: 4-bit on a GPU with bitsandbytes is ~0.7 byte
    per parameter, not 22 GB."""
    import importlib.util

    from medlab.core import loaders

    for var in ("MEDLAB_MODEL_CAPTIONER", "MEDLAB_REVISION_CAPTIONER", "MEDLAB_MODEL_PLIP", "MEDLAB_REVISION_PLIP"):
        monkeypatch.delenv(var, raising=False)
    from medlab.core import registry

    # a GPU machine: the 11B captioner is the default there (DEFAULT_BY_DEVICE)
    monkeypatch.setattr(registry, "cuda_expected", lambda settings=None: True)
    params = 22.0 * 1024**3 / 2  # bf16 -> parameters
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "bitsandbytes" else real_find_spec(name, *a))
    assert loaders.estimate_bytes("captioner", "cuda:0") == int(params * 0.7)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    assert loaders.estimate_bytes("captioner", "cuda:0") == int(params * 2)  # bf16 without bitsandbytes
    assert loaders.estimate_bytes("plip", "cpu") == int(0.6 * 1024**3)  # as stored (float32 spec)


def test_local_estimate_reads_the_safetensors_header(tmp_path) -> None:
    import json
    import struct

    from medlab.core.weights import planned_bytes, safetensors_summary

    header = {"w": {"dtype": "F32", "shape": [10, 30], "data_offsets": [0, 1200]},
              "ids": {"dtype": "I64", "shape": [5], "data_offsets": [1200, 1240]}, "__metadata__": {}}
    raw = json.dumps(header).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(1240))
    summary = safetensors_summary([tmp_path / "model.safetensors"])
    assert (summary.numel, summary.stored_bytes, set(summary.names)) == (300, 1240, {"w", "ids"})
    assert planned_bytes(summary.stored_bytes, summary.numel, "bfloat16", False) == 600
    assert planned_bytes(summary.stored_bytes, summary.numel, None, False) == 1240


def test_each_device_has_its_own_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """GPU models are held to a GPU budget (not 60% of system RAM): MEDLAB_GPU_MEMORY_BUDGET_GB,
    else the device's free memory at start (torch.cuda.mem_get_info) minus headroom, else on
    ZeroGPU before a GPU is attached its documented 70 GB."""
    import torch

    from medlab.core import config
    from medlab.core.loaders import device_budget

    monkeypatch.setenv("MEDLAB_MEMORY_BUDGET_GB", "3")
    monkeypatch.setenv("MEDLAB_GPU_MEMORY_BUDGET_GB", "7.5")
    assert device_budget("cpu") == 3 * 1024**3
    assert device_budget("cuda:0") == int(7.5 * 1024**3)
    monkeypatch.delenv("MEDLAB_GPU_MEMORY_BUDGET_GB")
    monkeypatch.setattr(config, "_gpu_budgets", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * 1024**3, 80 * 1024**3))
    assert device_budget("cuda:0") == int(10 * 1024**3 * config.GPU_WEIGHT_FRACTION)
    monkeypatch.setattr(config, "_gpu_budgets", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_budget("cuda:0") is None  # unknown: the cache accounts but does not refuse
    monkeypatch.setenv("SPACES_ZERO_GPU", "1")
    assert device_budget("cuda:0") == int(70 * config.GPU_WEIGHT_FRACTION * 1024**3)


def test_gpu_lane_concurrency_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from tabs.common import Lane

    assert load_settings({}).gpu_lane_concurrency == 2
    monkeypatch.setenv("MEDLAB_GPU_LANE_CONCURRENCY", "4")
    assert Lane.GPU.limit == 4 and Lane.BULK.limit == 1  # the bulk lane stays at 1
    monkeypatch.delenv("MEDLAB_GPU_LANE_CONCURRENCY")
    assert Lane.GPU.limit == 2
