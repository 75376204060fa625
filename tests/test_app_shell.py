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
    cpu = status["cache"]["devices"]["cpu"]  # budget, used and peak per device
    assert cpu["budget_bytes"] > 0 and cpu["used_bytes"] >= 0 and cpu["peak_bytes"] >= cpu["used_bytes"]


def _default_env() -> dict[str, str]:
    """The environment without any model override (the registry defaults)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("MEDLAB_MODEL_", "MEDLAB_REVISION_"))}


def test_doctor_reports_every_key_with_fix() -> None:
    proc = subprocess.run([sys.executable, "-m", "medlab", "doctor", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=_default_env())
    rows = {r["key"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == {"skin", "lung_ct", "captioner", "captioner_adapter", "impression", "plip",
                         "clip_baseline", "embedder", "reranker", "embedder_multilingual", "assistant_generator"}
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


def test_share_is_off_unless_asked(monkeypatch: pytest.MonkeyPatch, tiny_model_env: dict[str, str]) -> None:
    """The command line decides: no public gradio.live link unless --share is given."""
    import gradio as gr

    import app
    from medlab.retrieval import default_index

    launched: list[dict] = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.append(kwargs))
    # only the launch is under test: no background index build left running for later tests
    monkeypatch.setattr(default_index, "start_background", lambda: None)
    assert app.main([]) == 0
    assert app.main(["--share"]) == 0
    assert [kwargs["share"] for kwargs in launched] == [False, True]


@pytest.mark.parametrize("flag", ["--help"])
def test_cli_flags(flag: str) -> None:
    proc = subprocess.run([sys.executable, "app.py", flag], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for option in ("--host", "--port", "--share"):
        assert option in proc.stdout


# -- queue lanes (declared at registration: tabs.common.model_event) ---------------------------
MODEL_FREE_PUBLIC = {"model_status", "teach_use",  # public events with inputs that run no model
                     # the class quiz's SQLite events (quiz lane); a reveal reads the stored answer and runs
                     # the model at most once per quiz and case, in spaces.GPU, bounded by the GPU lane's limit
                     "quiz_create", "quiz_case", "quiz_guess", "quiz_reveal"}
GPU_EVENTS = {"skin_classify", "lung_classify", "skin_explain", "lung_ct_explain",
              "radiograph_caption", "compare_adapter", "impression",
              "pathology_search", "pathology_similar", "more_like_this", "pathology_zero_shot", "assistant_ask",
              "skin_stress", "lung_ct_stress", "pathology_stress", "quiz_results"}
BULK_EVENTS = {"impression_batch", "pathology_index", "index_examples", "assistant_add_document", "teach_train"}


def test_every_model_event_is_in_a_lane() -> None:
    """Model forwards share the GPU lane, bulk jobs the bulk lane (as registered by the tabs,
    nothing overrides them later); every other public event is known to be model-free."""
    import app
    from tabs.common import LANE_ATTR, Lane

    demo = app.build_app()
    fns = list(demo.fns.values())
    lanes = {fn.name: getattr(fn.fn, LANE_ATTR, None) for fn in fns}
    assert {n for n, lane in lanes.items() if lane is Lane.GPU} == GPU_EVENTS
    assert {n for n, lane in lanes.items() if lane is Lane.BULK} == BULK_EVENTS
    for fn in fns:
        lane = lanes[fn.name]
        if lane is not None:
            assert (fn.concurrency_id, fn.concurrency_limit) == (lane.concurrency_id, lane.limit), fn.name
        elif fn.api_visibility == "public" and fn.inputs:
            assert fn.name in MODEL_FREE_PUBLIC, f"public event {fn.name!r} is in no queue lane"


def test_model_event_refuses_its_own_concurrency() -> None:
    from tabs.common import model_event

    with pytest.raises(TypeError, match="lane sets the concurrency"):
        model_event(lambda *a, **k: None, lambda: None, concurrency_limit=5)


def test_space_front_matter_names_every_default_model() -> None:
    """The Space card links every Hub model the app can use by default (models:), and the
    weights of the CPU defaults are preloaded at build time (preload_from_hub)."""
    import yaml

    from medlab.core.specs import DEFAULT_BY_DEVICE, KNOWN_CHECKPOINTS, SPECS

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    front = yaml.safe_load(text.split("---\n")[1])
    specs = list(SPECS.values()) + [s for by in DEFAULT_BY_DEVICE.values() for s in by.values()]
    specs += [s for known in KNOWN_CHECKPOINTS.values() for s in known]
    hub_defaults = {s.default_source for s in specs if s.default_source and "/" in s.default_source
                    and not s.default_source.startswith("pypi:")}
    assert hub_defaults <= set(front["models"]), hub_defaults - set(front["models"])
    preloaded = {entry.split()[0] for entry in front["preload_from_hub"]}
    cpu_defaults = {DEFAULT_BY_DEVICE["captioner"]["cpu"].default_source, SPECS["skin"].default_source,
                    SPECS["impression"].default_source, SPECS["clip_baseline"].default_source}
    assert cpu_defaults <= preloaded, cpu_defaults - preloaded
    assert front["suggested_hardware"] and front["datasets"]


def test_prepare_fetches_what_the_default_configuration_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m medlab prepare` downloads the models this machine's defaults use: not an
    adapter no base model attaches (CPU default: SmolVLM has none), not the optional answer
    writer unless it is switched on."""
    from medlab.__main__ import prepare_keys

    for var in ("MEDLAB_MODEL_CAPTIONER", "MEDLAB_MODEL_CAPTIONER_ADAPTER", "MEDLAB_ASSISTANT_GENERATOR"):
        monkeypatch.delenv(var, raising=False)
    keys = prepare_keys()
    assert {"skin", "captioner", "impression", "plip", "clip_baseline", "embedder"} <= set(keys)
    assert "captioner_adapter" not in keys and "assistant_generator" not in keys
    monkeypatch.setenv("MEDLAB_ASSISTANT_GENERATOR", "assistant_generator")
    assert "assistant_generator" in prepare_keys()
