"""The real download path (huggingface_hub against HF_ENDPOINT) on a local Hub stand-in:
first use with download progress, offline reuse of the cache, `python -m medlab download`
and `doctor`, and every way a Hub source can fail, each named with its fix. No network:
the stand-in listens on 127.0.0.1 and HF_ENDPOINT points at it (in subprocesses, because
huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE at import)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import hub_env

ROOT = Path(__file__).resolve().parent.parent

# Runs in a subprocess: tries each MEDLAB_MODEL_<KEY> override and prints what happened.
TRY_LOADS = r'''
import json, os, sys
from medlab.core.errors import ModelUnavailableError
from medlab.core.loaders import get_model, reset_cache

results = {}
for key, repo in json.loads(sys.argv[1]):
    os.environ["MEDLAB_MODEL_" + key.upper()] = repo
    reset_cache()
    seen = []
    try:
        loaded = get_model(key, lambda f, m: seen.append([f, m]))
        results[repo] = {"ok": True, "source": loaded.source.location, "revision": loaded.source.revision,
                         "progress": seen}
    except ModelUnavailableError as exc:
        results[repo] = {"ok": False, "type": type(exc).__name__, "reason": exc.reason, "fix": exc.fix}
    del os.environ["MEDLAB_MODEL_" + key.upper()]
print("RESULTS" + json.dumps(results))
'''


def _try_loads(pairs: list[tuple[str, str]], env: dict[str, str]) -> dict[str, dict]:
    proc = subprocess.run([sys.executable, "-c", TRY_LOADS, json.dumps(pairs)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULTS"))
    return json.loads(line[len("RESULTS"):])


def test_first_use_downloads_with_progress_then_works_offline(hub_standin, tmp_path: Path) -> None:
    home = tmp_path / "hf"
    first = _try_loads([("skin", "org/skin-slow")], hub_env(hub_standin, home))["org/skin-slow"]
    assert first["ok"], first
    downloads = [(f, m) for f, m in first["progress"] if m.startswith("Downloading weights")]
    assert len(downloads) >= 5, first["progress"]  # the slow file arrives in chunks, each reported
    fractions = [f for f, _ in downloads]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(0.35, abs=0.01)
    assert any("MB/s" in m and "s left" in m for _, m in downloads), downloads  # rate and time left shown
    assert first["progress"][-1][0] == 1.0
    # The weights are now in HF_HOME: offline, the same source loads without the Hub...
    again = _try_loads([("skin", "org/skin-slow"), ("skin", "org/skin")],
                       hub_env(hub_standin, home, HF_HUB_OFFLINE="1"))
    assert again["org/skin-slow"]["ok"], again
    # ...and a source that was never fetched says offline mode is on, and how to fix it.
    never = again["org/skin"]
    assert not never["ok"] and "HF_HUB_OFFLINE" in never["reason"]
    assert "python -m medlab download skin" in never["fix"]


def test_download_message_says_bytes_rate_and_time_left() -> None:
    from medlab.core.hub import download_message

    mb = 2**20
    # 12 of 48 MB after 12 MB arrived in 2 s: 6 MB/s, 36 MB to go -> 6 s (worked by hand)
    assert download_message(12 * mb, 48 * mb, 12 * mb, 2.0) == (
        "Downloading weights: 12.0 of 48.0 MB, 6.0 MB/s, about 6 s left")
    assert download_message(0, 48 * mb, 0, 0.0) == "Downloading weights: 0.0 of 48.0 MB"  # nothing yet


def test_every_hub_failure_is_named_with_its_fix(hub_standin, tmp_path: Path) -> None:
    results = _try_loads(
        [("skin", "org/gated"), ("skin", "org/missing"), ("skin", "org/broken"), ("skin", "org/skin-revs"),
         ("skin", "org/pickled"), ("skin", "org/partial"), ("plip", "vinid/plip")],
        hub_env(hub_standin, tmp_path / "hf"),
    )
    gated = results["org/gated"]
    assert not gated["ok"] and "gated" in gated["reason"] and "HF_TOKEN" in gated["fix"]
    assert "https://huggingface.co/org/gated" in gated["fix"]  # where to accept the licence
    missing = results["org/missing"]
    assert not missing["ok"] and "was not found" in missing["reason"] and "MEDLAB_MODEL_SKIN" in missing["fix"]
    broken = results["org/broken"]
    assert not broken["ok"] and "server error (500)" in broken["reason"]
    revs = results["org/skin-revs"]  # no "main" branch there
    assert not revs["ok"] and "revision 'main'" in revs["reason"] and "MEDLAB_REVISION_SKIN" in revs["fix"]
    pickled = results["org/pickled"]
    assert not pickled["ok"] and "safetensors" in pickled["reason"] and "MEDLAB_ALLOW_PICKLE=1" in pickled["fix"]
    partial = results["org/partial"]  # loads, but a weight is missing: refused, never random
    assert not partial["ok"] and "does not cover the model" in partial["reason"]
    assert "classifier.weight" in partial["reason"]
    # The default PLIP repo written out keeps its pinned safetensors revision (refs/pr/4).
    plip = results["vinid/plip"]
    assert plip["ok"] and plip["revision"] == "refs/pr/4", plip


def test_missing_file_and_chained_errors_are_translated_by_class(hub_standin, tmp_path: Path) -> None:
    code = r'''
import json
from huggingface_hub import hf_hub_download
from medlab.core.load_errors import translate
from medlab.core.registry import resolve_source
src = resolve_source("skin", {"MEDLAB_MODEL_SKIN": "org/skin"})
out = {}
try:
    hf_hub_download("org/skin", "nope.json")
except Exception as exc:
    err = translate(src, exc)
    out["entry"] = [type(exc).__name__, err.reason, err.fix]
try:
    hf_hub_download("org/gated", "config.json")
except Exception as inner:
    try:
        raise OSError("You are trying to access a gated repo.") from inner  # as transformers wraps it
    except OSError as exc:
        out["wrapped"] = [type(exc).__name__, translate(src, exc).reason]
print("RESULTS" + json.dumps(out))
'''
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=hub_env(hub_standin, tmp_path / "hf"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULTS"))[7:])
    name, reason, fix = out["entry"]
    assert name == "RemoteEntryNotFoundError" and "has no file nope.json" in reason
    assert out["wrapped"][0] == "OSError" and "gated" in out["wrapped"][1]


def test_download_and_doctor_cli(hub_standin, tmp_path: Path) -> None:
    home = tmp_path / "hf"
    env = hub_env(hub_standin, home, MEDLAB_MODEL_SKIN="org/skin", MEDLAB_MODEL_IMPRESSION="org/gated")
    before = subprocess.run([sys.executable, "-m", "medlab", "doctor", "--json"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    rows = {r["key"]: r for r in json.loads(before.stdout)}
    assert rows["skin"]["status"] == "downloadable"  # the stand-in is reachable, nothing cached yet
    got = subprocess.run([sys.executable, "-m", "medlab", "download", "skin", "impression"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert got.returncode == 1, got.stdout + got.stderr  # one key failed
    assert "[ ok ] skin" in got.stdout
    assert "[fail] impression" in got.stdout and "gated" in got.stdout and "HF_TOKEN" in got.stdout
    snapshots = list((home / "hub" / "models--org--skin" / "snapshots").glob("*/model.safetensors"))
    assert len(snapshots) == 1
    after = subprocess.run([sys.executable, "-m", "medlab", "doctor", "--json"], cwd=ROOT,
                           env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=120)
    rows = {r["key"]: r for r in json.loads(after.stdout)}
    assert rows["skin"]["status"] == "ready" and "cache" in rows["skin"]["reason"]
    assert rows["impression"]["status"] == "unavailable"
