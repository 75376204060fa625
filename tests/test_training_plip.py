"""plip_linear_probe end to end on CPU: tiny PLIP (transformers CLIP) and tiny open_clip
baseline built in the test, a generated colour-coded image folder, macro-F1 side by side."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.test_training_classifier import make_colour_folder

TISSUES = {"adipose": (240, 230, 230), "lymphocytes": (70, 40, 140), "stroma": (220, 120, 160)}


@pytest.fixture
def tiny_vl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from tests.tiny_retrieval import tiny_clip, tiny_open_clip

    plip = tiny_clip(tmp_path / "plip")
    monkeypatch.setenv("MEDLAB_MODEL_PLIP", str(plip))
    monkeypatch.setenv("MEDLAB_MODEL_CLIP_BASELINE", str(tiny_open_clip(tmp_path / "clip", seed=1)))
    return plip


def test_linear_probe_reports_both_models(tiny_vl: Path, tmp_path: Path) -> None:
    from sklearn.metrics import f1_score

    from medlab.core.cards import card_markdown, evaluation_plots
    from training import plip_linear_probe

    data = make_colour_folder(tmp_path / "tiles", TISSUES, n=16, size=32, seed=2)
    report = plip_linear_probe.probe(plip_linear_probe.parse_args(["--data", str(data), "--C", "0.1,1,10"]))
    assert set(report["results"]) == {"plip", "clip_baseline"} and not report["missing"]
    y = np.asarray(report["y_test"])
    for key, r in report["results"].items():
        assert r["macro_f1"] == pytest.approx(f1_score(y, r["predictions"], average="macro"))
        assert r["C"] in (0.1, 1.0, 10.0)
        assert r["macro_f1"] > 0.6, (key, r["macro_f1"])  # colour is linearly decodable (chance 0.33)
    assert report["results"]["plip"]["embedding_dim"] == 16
    # written next to the (local) PLIP weights, where the pathology card looks
    saved = json.loads((tiny_vl / "evaluation.json").read_text())
    assert saved["task"] == "linear_probe"
    assert [p.name for p in evaluation_plots("plip")] == ["linear_probe_f1.png"]
    assert "Linear-probe report" in card_markdown("plip")


def test_missing_baseline_is_reported_not_fatal(tiny_vl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training import plip_linear_probe

    monkeypatch.setenv("MEDLAB_MODEL_CLIP_BASELINE", str(tmp_path / "does-not-exist"))
    data = make_colour_folder(tmp_path / "tiles", TISSUES, n=8, size=32, seed=3)
    report = plip_linear_probe.probe(plip_linear_probe.parse_args(["--data", str(data), "--out", str(tmp_path / "r")]))
    assert list(report["results"]) == ["plip"] and "clip_baseline" in report["missing"]
    assert "clip_baseline was not probed" in (tmp_path / "r" / "model_card.md").read_text()
