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
def applied_env(env: dict[str, str]) -> Iterator[None]:
    """os.environ with `env` applied; the previous values (or absence) restored afterwards."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def serve_app(env: dict[str, str]) -> Iterator[str]:
    """Build and launch the whole app with `env` applied (restored afterwards); yields its URL."""
    with applied_env(env):
        import app as app_module

        demo = app_module.build_app()
        port = free_port()
        demo.launch(prevent_thread_lock=True, quiet=True, **app_module.launch_kwargs("127.0.0.1", port, False))
        try:
            yield f"http://127.0.0.1:{port}/"
        finally:
            demo.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Debian Chromium driven by playwright (tests/browser_support.py)."""
    from playwright.sync_api import sync_playwright

    from tests.browser_support import ARGS, chromium_path

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def live_app(tiny_model_env: dict[str, str]) -> Iterator[tuple[str, object]]:
    """The whole app, served on a free port with every tiny model configured.

    Yields (url, gradio_client.Client)."""
    from gradio_client import Client

    with serve_app(tiny_model_env) as url:
        # A generous read timeout: on a busy 2-core box the first /config can take seconds.
        yield url, Client(url, verbose=False, httpx_kwargs={"timeout": 120})


# -- a local Hugging Face Hub stand-in (tests/hub_standin.py) ------------------------------
@pytest.fixture(scope="session")
def hub_standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The Hub stand-in on 127.0.0.1 serving tiny checkpoints built here:

    org/skin (image classifier, safetensors), org/skin-slow (same, slow download),
    org/gated (gated), org/broken (server error), org/skin-revs (only revision "v1"),
    org/pickled (pickle weights only), vinid/plip (main: pickle only; refs/pr/4: a tiny
    CLIP in safetensors, as the real repo), org/partial (a classifier missing a weight).
    There is no org/missing."""
    from tests.hub_standin import HubStandIn, folder_files
    from tests.tiny_models import tiny_vit_classifier
    from tests.tiny_retrieval import tiny_clip

    root = tmp_path_factory.mktemp("hub-standin")
    skin = folder_files(tiny_vit_classifier(root / "skin", ("nv", "mel", "bkl", "bcc", "melanoma")))
    clip = folder_files(tiny_clip(root / "clip"))
    pickled = {k: v for k, v in skin.items() if not k.endswith(".safetensors")} | {"pytorch_model.bin": b"\x80\x04."}
    partial = dict(skin) | {"model.safetensors": _drop_one_tensor(skin["model.safetensors"])}
    hub = HubStandIn()
    hub.add("org/skin", skin)
    hub.add("org/skin-slow", skin, slow_seconds=2.0)
    hub.add("org/gated", skin, gated=True)
    hub.add("org/broken", skin, server_error=True)
    hub.add("org/skin-revs", revisions={"v1": skin})
    hub.add("org/pickled", pickled)
    hub.add("org/partial", partial)
    plip_main = {k: v for k, v in clip.items() if not k.endswith(".safetensors")} | {"pytorch_model.bin": b"\x80\x04."}
    hub.add("vinid/plip", revisions={"main": plip_main, "refs/pr/4": clip})
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()


def _drop_one_tensor(data: bytes, suffix: str = "classifier.weight") -> bytes:
    """The same safetensors file without its classifier weight (a partial checkpoint)."""
    import json as _json
    import struct

    (length,) = struct.unpack("<Q", data[:8])
    header = _json.loads(data[8:8 + length])
    body = data[8 + length:]
    victim = next(k for k in header if k.endswith(suffix))
    del header[victim]
    kept, tensors, offset = {}, [], 0
    for name, info in sorted((k, v) for k, v in header.items() if k != "__metadata__"):
        begin, end = info["data_offsets"]
        tensors.append(body[begin:end])
        kept[name] = {**info, "data_offsets": [offset, offset + end - begin]}
        offset += end - begin
    if "__metadata__" in header:
        kept["__metadata__"] = header["__metadata__"]
    raw = _json.dumps(kept).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(tensors)


def hub_env(hub: object, hf_home: Path, **extra: str) -> dict[str, str]:
    """Environment for a subprocess that talks to the stand-in: HF_ENDPOINT set, a private
    HF_HOME, HF_HUB_OFFLINE unset, no model overrides inherited."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "MEDLAB_MODEL_", "MEDLAB_REVISION_")) and k != "TRANSFORMERS_OFFLINE"}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(hf_home), HF_HUB_DISABLE_XET="1", MEDLAB_DEVICE="cpu",  # type: ignore[attr-defined]
               HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    env.update(extra)
    return env
