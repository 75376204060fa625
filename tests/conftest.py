"""Test-wide setup: offline, no analytics, a private data dir, tiny models built locally.

Nothing here downloads. Tiny checkpoints are built from configs with random weights by the
builder modules listed in TINY_BUILDERS; each returns {ENV_VAR: path} for the models it made."""

from __future__ import annotations

import importlib
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["ANONYMIZED_TELEMETRY"] = "False"  # chromadb
os.environ.setdefault("MEDLAB_DEVICE", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_SESSION_DATA = Path(tempfile.mkdtemp(prefix="medlab-test-data-"))
os.environ["MEDLAB_DATA_DIR"] = str(_SESSION_DATA)
# Keep the user's HF cache out of the tests: availability must not depend on it.
os.environ["HF_HOME"] = str(_SESSION_DATA / "hf-home")

ARTIFACTS = Path(__file__).parent / "_artifacts"

# Modules with build(root: Path) -> dict[str, str]: env var -> tiny model dir.
TINY_BUILDERS: tuple[str, ...] = (
    "tests.tiny_models",
    "tests.tiny_generation",
    "tests.tiny_retrieval",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    """Every test starts with an empty process-wide model cache."""
    from medlab.core.loaders import reset_cache

    reset_cache()
    yield
    reset_cache()


@pytest.fixture(scope="session")
def tiny_model_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Build every tiny model once per session; returns {MEDLAB_MODEL_*: dir}."""
    root = tmp_path_factory.mktemp("tiny-models")
    env: dict[str, str] = {}
    for name in TINY_BUILDERS:
        env.update(importlib.import_module(name).build(root))
    return env


@pytest.fixture
def use_tiny_models(tiny_model_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for var, value in tiny_model_env.items():
        monkeypatch.setenv(var, value)
    return tiny_model_env


@contextmanager
def serve_app(env: dict[str, str]) -> Iterator[str]:
    """Build and launch the whole app with `env` applied (restored afterwards); yields its URL."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import app as app_module

    try:
        demo = app_module.build_app()
        port = free_port()
        demo.launch(prevent_thread_lock=True, quiet=True, **app_module.launch_kwargs("127.0.0.1", port, False))
        try:
            yield f"http://127.0.0.1:{port}/"
        finally:
            demo.close()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def live_app(tiny_model_env: dict[str, str]) -> Iterator[tuple[str, object]]:
    """The whole app, served on a free port with every tiny model configured.

    Yields (url, gradio_client.Client)."""
    from gradio_client import Client

    with serve_app(tiny_model_env) as url:
        yield url, Client(url, verbose=False)
