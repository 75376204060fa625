"""Lung-CT engine: document 001's defer scenarios, 3-class mapping, DICOM/PNG input, Grad-CAM
overlay geometry, class to explain, and the empty default source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medlab.core.errors import InputError, ModelUnavailableError
from medlab.core.registry import get_spec
from medlab.vision import classify, lung_ct

ASSETS = Path(__file__).parent.parent / "assets"
DICOM = ASSETS / "lung" / "CT_small.dcm"


@pytest.mark.parametrize(
    ("top", "deferred"),
    [
        (0.34, {"screening": False, "routine": True, "high-risk confirmation": True}),
        (0.45, {"screening": False, "routine": True, "high-risk confirmation": True}),
        (0.65, {"screening": False, "routine": False, "high-risk confirmation": True}),
        (0.70, {"screening": False, "routine": False, "high-risk confirmation": False}),
        (0.95, {"screening": False, "routine": False, "high-risk confirmation": False}),
    ],
)
def test_defer_scenarios(top: float, deferred: dict[str, bool]) -> None:
    rest = (1.0 - top) / 2
    probs = {"benign": rest, "malignant": top, "normal": rest}
    assert lung_ct.scenarios() == {"screening": 0.3, "routine": 0.5, "high-risk confirmation": 0.7}
    for scenario, expected in deferred.items():
        decision = lung_ct.defer(probs, scenario)
        assert decision.deferred is expected, (top, scenario)
        assert decision.threshold == lung_ct.scenarios()[scenario]
        assert ("Recommend further examination" in decision.text) is expected
    assert lung_ct.defer(probs).scenario == "routine"  # the spec's default
    with pytest.raises(InputError, match="Unknown scenario"):
        lung_ct.defer(probs, "emergency")


def test_screening_threshold_only_bites_with_more_classes() -> None:
    """With 3 classes the top probability is >= 1/3, so 0.3 (screening) can never defer; it
    does for a model with 4+ classes, where the top can fall below 0.3."""
    assert not lung_ct.defer({"a": 0.34, "b": 0.33, "c": 0.33}, "screening").deferred
    assert lung_ct.defer({"a": 0.28, "b": 0.24, "c": 0.24, "d": 0.24}, "screening").deferred


def test_iq_oth_label_names_map_to_three_classes() -> None:
    spec = get_spec("lung_ct")
    assert classify.map_labels(["Bengin cases", "Malignant cases", "Normal cases"], spec) == [
        "benign", "malignant", "normal"]
    assert classify.aggregate([0.2, 0.5, 0.3], ["a", "b", "c"], ["benign", "malignant", "normal"],
                              spec.labels) == pytest.approx({"benign": 0.2, "malignant": 0.5, "normal": 0.3})


def test_default_source_is_empty_and_says_how_to_fix(monkeypatch) -> None:
    from medlab.core.loaders import get_model

    monkeypatch.delenv("MEDLAB_MODEL_LUNG_CT", raising=False)
    with pytest.raises(ModelUnavailableError) as info:
        get_model("lung_ct")
    assert "MEDLAB_MODEL_LUNG_CT" in str(info.value) and "training" in str(info.value)


def test_dicom_upload_gives_overlay_of_input_size(use_tiny_models) -> None:
    result = lung_ct.classify_lung(DICOM)
    assert result.overlay.size == (128, 128) and result.heatmap.shape == (128, 128)
    assert set(result.probabilities) == {"benign", "malignant", "normal"}
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert result.info["kind"] == "dicom" and result.info["modality"] == "CT"
    assert result.info["window"].startswith("lung")
    assert result.gate.verdict == "in-domain"
    summary = result.summary()
    json.dumps(summary)
    assert summary["deferred"] == (max(result.probabilities.values()) < 0.5)
    assert (summary["prediction"] is None) == summary["deferred"]


def test_window_and_class_to_explain_change_the_result(use_tiny_models) -> None:
    lung = lung_ct.classify_lung(DICOM, window="lung", explain="benign")
    mediastinal = lung_ct.classify_lung(DICOM, window="mediastinal", explain="benign")
    assert lung.info["window"] != mediastinal.info["window"]
    assert not np.array_equal(np.asarray(lung.overlay), np.asarray(mediastinal.overlay))
    normal = lung_ct.classify_lung(DICOM, window="lung", explain="normal")
    assert lung.explained_class == "benign" and normal.explained_class == "normal"
    assert lung.probabilities == pytest.approx(normal.probabilities)  # same forward
    assert not np.allclose(lung.heatmap, normal.heatmap)
    with pytest.raises(InputError, match="Cannot explain"):
        lung_ct.classify_lung(DICOM, explain="cat")


def test_non_square_png_overlay_and_cropped_border(use_tiny_models) -> None:
    """The tiny CNN's processor centre-crops a non-square input; the overlay keeps the input's
    size and leaves the part the model never saw uncoloured."""
    from PIL import Image

    photo = ASSETS / "skin" / "offdomain_cat_chelsea.jpg"
    result = lung_ct.classify_lung(photo, opacity=0.6)
    original = np.asarray(Image.open(photo).convert("RGB"))
    out = np.asarray(result.overlay)
    assert out.shape == original.shape
    left, _, right, _ = result.info["model_saw"]
    assert 0 < left and right < original.shape[1] and result.info["model_saw_whole_image"] is False
    assert np.array_equal(out[:, : int(left) - 1], original[:, : int(left) - 1])
    assert result.heatmap[:, : int(left) - 1].sum() == 0
    assert result.gate.flagged  # a colour photo is not a CT


def test_opacity_zero_returns_the_input(use_tiny_models) -> None:
    from PIL import Image

    png = ASSETS / "lung" / "ct_small_lung_window.png"
    result = lung_ct.classify_lung(png, opacity=0.0)
    assert np.array_equal(np.asarray(result.overlay), np.asarray(Image.open(png).convert("RGB")))
    with pytest.raises(InputError):
        lung_ct.classify_lung(png, opacity=1.5)


def test_png_asset_is_the_dicom_in_the_lung_window() -> None:
    from PIL import Image

    from medlab.io.imaging import load_dicom

    rendered = np.asarray(load_dicom(DICOM, "lung").image.convert("L"))
    assert np.array_equal(rendered, np.asarray(Image.open(ASSETS / "lung" / "ct_small_lung_window.png")))
