"""The app shell: light imports, the status API, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=180)


def test_building_the_app_imports_no_heavy_library() -> None:
    proc = _run(
        "import sys, app\n"
        "app.build_app()\n"
        "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers', 'open_clip', 'chromadb', 'peft')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY []" in proc.stdout


def test_engine_imports_without_gradio() -> None:
    proc = _run(
        "import sys, pkgutil, importlib, medlab\n"
        "mods = [m.name for m in pkgutil.walk_packages(medlab.__path__, 'medlab.') if m.name != 'medlab.__main__']\n"
        "assert len(mods) > 20, mods\n"
        "for name in mods:\n"
        "    importlib.import_module(name)\n"
        "print('GRADIO', 'gradio' in sys.modules, 'TORCH', 'torch' in sys.modules)\n"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "GRADIO False" in proc.stdout
    assert "TORCH False" in proc.stdout


def test_invalid_setting_stops_the_app_with_the_variable_name() -> None:
    proc = _run("import app; app.build_app()", env={"MEDLAB_DEVICE": "quantum"})
    assert proc.returncode != 0
    assert "MEDLAB_DEVICE" in proc.stderr


def test_model_status_through_gradio_client(live_app) -> None:
    _, client = live_app
    status = client.predict(api_name="/model_status")
    assert set(status) >= {"cache", "models", "settings"}
    assert status["models"]["embedder"]["status"] in ("ready", "loaded")
    assert status["models"]["skin"]["origin"] == "local"
    # The default lung model does not exist; here the tiny one is configured.
    assert status["models"]["lung_ct"]["status"] in ("ready", "loaded")
    assert status["settings"]["hub_offline"] is True
    for key in ("loaded", "hits", "misses", "evictions", "budget_bytes"):
        assert key in status["cache"]


def _default_env() -> dict[str, str]:
    """The environment without any model override (the registry defaults)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("MEDLAB_MODEL_", "MEDLAB_REVISION_"))}


def test_doctor_reports_every_key_with_fix() -> None:
    proc = subprocess.run([sys.executable, "-m", "medlab", "doctor", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=_default_env())
    rows = {r["key"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == {"skin", "lung_ct", "captioner", "captioner_adapter", "impression", "plip",
                         "clip_baseline", "embedder"}
    assert rows["embedder"]["status"] == "ready"
    assert rows["skin"]["status"] == "unavailable" and "medlab download skin" in rows["skin"]["fix"]
    # MEDLAB_DEVICE=cpu: the captioner's default is the small CPU model, offline here
    assert rows["captioner"]["source"] == "HuggingFaceTB/SmolVLM-500M-Instruct"
    assert "medlab download captioner" in rows["captioner"]["fix"]
    assert "MEDLAB_MODEL_LUNG_CT" in rows["lung_ct"]["fix"]
    human = subprocess.run([sys.executable, "-m", "medlab", "doctor"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120, env=_default_env())
    assert human.returncode == 1  # something is missing here
    assert "fix:" in human.stdout


def test_download_offline_is_a_clear_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "medlab", "download", "skin"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "HF_HUB_OFFLINE" in proc.stdout


def test_download_unknown_key_lists_valid() -> None:
    proc = subprocess.run([sys.executable, "-m", "medlab", "download", "xray"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "plip" in proc.stdout


def test_share_is_off_unless_asked() -> None:
    import app

    assert app.launch_kwargs("127.0.0.1", 7860, False)["share"] is False


@pytest.mark.parametrize("flag", ["--help"])
def test_cli_flags(flag: str) -> None:
    proc = subprocess.run([sys.executable, "app.py", flag], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for option in ("--host", "--port", "--share"):
        assert option in proc.stdout
