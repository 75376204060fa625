"""ZeroGPU as Hugging Face documents it, checked with a stand-in `spaces` package (a fake
module on PYTHONPATH of a subprocess): spaces is imported before torch, every model event
runs inside spaces.GPU with a duration that fits its work (a callable for batch and
streaming jobs), SPACES_ZERO_GPU is parsed strictly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FAKE_SPACES = '''
"""Stand-in for Hugging Face's `spaces` package: records the import order and each GPU wrap."""
import functools, inspect, sys

TORCH_LOADED_AT_IMPORT = "torch" in sys.modules
WRAPPED = []
DOUBLE = []  # functions wrapped twice (a GPU call inside a GPU call)


def GPU(task=None, duration=60):
    def decorate(fn):
        if getattr(fn, "fake_spaces_duration", None) is not None:
            DOUBLE.append(fn.__name__)
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def wrapper(*args, **kwargs):
                yield from fn(*args, **kwargs)
        else:
            @functools.wraps(fn)
            def wrapper(*args, **kwargs):
                return fn(*args, **kwargs)
        wrapper.fake_spaces_duration = duration
        WRAPPED.append(fn.__name__)
        return wrapper
    return decorate(task) if callable(task) else decorate
'''

PROBE = textwrap.dedent('''
    import json, sys
    import app
    spaces = sys.modules.get("spaces")
    from tabs.common import LANE_ATTR
    demo = app.build_app()
    events = {}
    for fn in demo.fns.values():
        lane = getattr(fn.fn, LANE_ATTR, None)
        duration = getattr(fn.fn, "fake_spaces_duration", None)
        events[fn.name] = {"lane": lane.name if lane else None, "wrapped": duration is not None,
                           "fixed": duration if isinstance(duration, int) else None,
                           "callable": callable(duration)}
        if callable(duration):
            events[fn.name]["sizes"] = {}
    d = lambda name: next(getattr(f.fn, "fake_spaces_duration", None) for f in demo.fns.values() if f.name == name)
    import tempfile, zipfile, os
    tmp = tempfile.mkdtemp()
    rows = os.path.join(tmp, "rows.jsonl")
    open(rows, "w").write("\\n".join('{"findings": "x"}' for _ in range(40)))
    archive = os.path.join(tmp, "tiles.zip")
    with zipfile.ZipFile(archive, "w") as z:
        for i in range(100):
            z.writestr(f"t{i}.png", b"x")
    sizes = {} if d("radiograph_caption") is None else {
        "caption_64": d("radiograph_caption")(None, "describe", 0.5, 64),
        "caption_512": d("radiograph_caption")(None, "describe", 0.5, max_new_tokens=512),
        "batch_40": d("impression_batch")(rows, 4, 128),
        "index_100": d("pathology_index")(archive, "", ["plip"]),
        "index_none": d("pathology_index")(None, "", ["plip"]),
    }
    print("PROBE" + json.dumps({"spaces_imported": spaces is not None,
                                "double": getattr(spaces, "DOUBLE", []),
                                "torch_before_spaces": getattr(spaces, "TORCH_LOADED_AT_IMPORT", None),
                                "torch_after_build": "torch" in sys.modules,
                                "events": events, "sizes": sizes}))
''')


def _probe(tmp_path: Path, zero_gpu: str) -> subprocess.CompletedProcess:
    fake = tmp_path / "fake"
    (fake / "spaces").mkdir(parents=True, exist_ok=True)
    (fake / "spaces" / "__init__.py").write_text(FAKE_SPACES)
    env = {**os.environ, "SPACES_ZERO_GPU": zero_gpu, "PYTHONPATH": f"{fake}{os.pathsep}{ROOT}"}
    return subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)


def _result(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("PROBE"))[5:])


def test_on_zero_gpu_spaces_comes_first_and_every_model_event_is_wrapped(tmp_path: Path) -> None:
    out = _result(_probe(tmp_path, "true"))
    assert out["torch_before_spaces"] is False  # app.py imports spaces before anything imports torch
    events = out["events"]
    model_events = {name for name, e in events.items() if e["lane"]}
    assert len(model_events) >= 14
    unwrapped = sorted(n for n in model_events if not events[n]["wrapped"])
    assert not unwrapped, f"model events outside spaces.GPU: {unwrapped}"
    assert out["double"] == [], f"wrapped twice: {out['double']}"
    assert not any(e["wrapped"] for e in events.values() if not e["lane"])  # nothing else holds a GPU
    # Durations fit the work: fixed seconds for quick forwards, callables for streams and batches.
    assert events["skin_classify"]["fixed"] == 20 and events["pathology_search"]["fixed"] == 20
    for name in ("radiograph_caption", "compare_adapter", "impression_batch", "pathology_index",
                 "assistant_add_document"):
        assert events[name]["callable"], name
    sizes = out["sizes"]
    assert sizes["caption_64"] == int(30 + 64 * 0.15) and sizes["caption_512"] == int(30 + 512 * 0.15)
    assert sizes["batch_40"] == int(30 + 40 * 1.5)
    assert sizes["index_100"] == int(60 + 100 * 0.25) and sizes["index_none"] == 60
    assert max(sizes.values()) <= 300


@pytest.mark.parametrize("value", ["0", "false", "no", ""])
def test_zero_gpu_off_means_no_wrapping(tmp_path: Path, value: str) -> None:
    out = _result(_probe(tmp_path, value))
    assert out["sizes"] == {}
    assert not any(e["wrapped"] for e in out["events"].values())


def test_zero_gpu_garbage_stops_the_app_naming_the_variable(tmp_path: Path) -> None:
    proc = _probe(tmp_path, "perhaps")
    assert proc.returncode != 0
    assert "SPACES_ZERO_GPU" in proc.stderr and "ConfigError" in proc.stderr


def test_preload_places_every_available_model_and_skips_what_does_not_fit(
    use_tiny_models: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On ZeroGPU every model (the captioner included) is loaded at start-up; one that does
    not fit the budget of its device is skipped, not loaded over budget."""
    import importlib.util

    from medlab.core import zerogpu
    from medlab.core.loaders import estimate_bytes, get_cache

    monkeypatch.setenv("SPACES_ZERO_GPU", "1")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "spaces" else real(n, *a))
    assert "captioner" in zerogpu.PRELOAD_KEYS
    keys = ["skin", "impression", "captioner"]
    sizes = {k: estimate_bytes(k, "cpu") for k in keys}
    budget = sizes["skin"] + sizes["captioner"] + sizes["impression"] // 2  # impression does not fit after them
    monkeypatch.setenv("MEDLAB_MEMORY_BUDGET_GB", str(budget / 2**30))
    loaded = zerogpu.preload_for_zero_gpu(["skin", "captioner", "impression"])
    assert loaded == ["skin", "captioner"]
    assert get_cache().used_bytes("cpu") <= budget
