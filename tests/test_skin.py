"""Skin engine: threshold + uncertain band, label mapping, malignant probability, the
threshold coming from an evaluation report, and the pipeline on the tiny ViT."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medlab.core.errors import InputError
from medlab.core.registry import get_spec
from medlab.vision import classify, skin

ASSETS = Path(__file__).parent.parent / "assets"


# -- threshold and band ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("p", "label", "lean"),
    [
        (0.0, "benign", "benign"),
        (0.2676, "benign", "benign"),  # just below threshold - band
        (0.2678, "uncertain", "benign"),
        (0.36, "uncertain", "benign"),
        (0.3677, "uncertain", "malignant"),  # at the threshold: malignant side
        (0.4676, "uncertain", "malignant"),
        (0.4678, "malignant", "malignant"),
        (0.99, "malignant", "malignant"),
    ],
)
def test_decision_band_around_the_tuned_threshold(p: float, label: str, lean: str) -> None:
    decision = skin.decide(p, 0.3677, 0.10)
    assert (decision.label, decision.lean) == (label, lean)
    assert decision.band == pytest.approx((0.2677, 0.4677))
    assert ("Uncertain" in decision.text(p)) == (label == "uncertain")


def test_threshold_is_not_one_half_and_band_can_be_off() -> None:
    # 0.45 would be benign at 0.5 but is malignant at document 000's threshold
    assert skin.decide(0.45, 0.3677, 0.0).label == "malignant"
    assert skin.decide(0.45, 0.5, 0.0).label == "benign"
    assert skin.decide(0.05, 0.08, 0.10).band == (0.0, pytest.approx(0.18))
    with pytest.raises(ValueError):
        skin.decide(1.2, 0.5, 0.1)


def test_threshold_comes_from_the_spec_then_the_report(tiny_model_env, tmp_path, monkeypatch) -> None:
    spec = get_spec("skin")
    monkeypatch.setenv("MEDLAB_MODEL_SKIN", tiny_model_env["MEDLAB_MODEL_SKIN"])
    value, source = skin.decision_threshold(spec)
    assert value == 0.3677  # document 000's ROC-tuned threshold (seeds/DIGEST.md)
    assert "registry spec" in source and "evaluation report" not in source
    model_dir = tmp_path / "skin"
    shutil.copytree(tiny_model_env["MEDLAB_MODEL_SKIN"], model_dir)
    (model_dir / "evaluation.json").write_text(json.dumps({"binary_threshold": {"threshold": 0.42}}))
    monkeypatch.setenv("MEDLAB_MODEL_SKIN", str(model_dir))
    value, source = skin.decision_threshold(spec)
    assert value == 0.42 and "evaluation report" in source
    assert "42.0%" in skin.explanation(value, 0.1, source)
    # A report threshold outside (0, 1) is not a threshold: the spec's value is used again.
    (model_dir / "evaluation.json").write_text(json.dumps({"binary_threshold": {"threshold": 1.5}}))
    assert skin.decision_threshold(spec)[0] == 0.3677


# -- label mapping -----------------------------------------------------------------------------
def test_label_normalisation_and_mapping() -> None:
    spec = get_spec("skin")
    assert classify.normalise_label("benign_keratosis-like_lesions") == "benign keratosis like lesions"
    assert classify.normalise_label("  Melanocytic_Nevi ") == "melanocytic nevi"
    ham_codes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert classify.map_labels(ham_codes, spec) == [
        "malignant", "malignant", "benign", "benign", "malignant", "benign", "benign"]
    long_names = ["benign_keratosis-like_lesions", "basal_cell_carcinoma", "actinic_keratoses", "vascular_lesions",
                  "melanocytic_Nevi", "melanoma", "dermatofibroma"]  # Anwarkh1's id2label order
    assert classify.map_labels(long_names, spec) == [
        "benign", "malignant", "malignant", "benign", "benign", "malignant", "benign"]


def test_unmapped_label_names_the_label_and_the_spec() -> None:
    with pytest.raises(classify.LabelMappingError) as info:
        classify.map_labels(["melanoma", "LABEL_1"], get_spec("skin"))
    message = str(info.value)
    assert "'LABEL_1'" in message and "'skin' spec" in message and "medlab/core/specs.py" in message


def test_malignant_probability_sums_the_malignant_classes() -> None:
    spec = get_spec("skin")
    labels = ["mel", "nv", "bcc", "bkl", "akiec", "df", "vasc"]
    probs = np.array([0.10, 0.30, 0.05, 0.20, 0.02, 0.13, 0.20])
    assert skin.malignant_probability(probs, labels, spec) == pytest.approx(0.17)
    # one-logit binary model: sigmoid output is the probability of its own label
    assert skin.malignant_probability(np.array([0.8]), ["malignant"], spec) == pytest.approx(0.8)
    assert skin.malignant_probability(np.array([0.8]), ["benign"], spec) == pytest.approx(0.2)
    with pytest.raises(classify.LabelMappingError):
        skin.malignant_probability(np.array([0.5, 0.5]), ["nv", "bkl"], spec)


# -- the pipeline on the tiny ViT ---------------------------------------------------------------
def test_classify_skin_matches_a_manual_forward(use_tiny_models) -> None:
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    path = ASSETS / "skin" / "synthetic_lesion.png"
    result = skin.classify_skin(path)
    model_dir = use_tiny_models["MEDLAB_MODEL_SKIN"]
    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        probs = model(**processor(images=Image.open(path).convert("RGB"), return_tensors="pt")).logits.softmax(-1)[0]
    malignant = {"melanoma", "basal_cell_carcinoma", "actinic_keratoses"}
    expected = sum(float(p) for i, p in enumerate(probs) if model.config.id2label[i] in malignant)
    assert result.malignant_probability == pytest.approx(expected, abs=1e-5)
    assert sum(result.class_probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    summary = result.summary()
    json.dumps(summary)  # JSON-friendly
    assert summary["decision"] in ("benign", "malignant", "uncertain")
    assert summary["threshold"] == 0.3677 and summary["gate"]["verdict"] == "plausible"


def test_classify_skin_rejects_non_images(use_tiny_models, tmp_path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(InputError):
        skin.classify_skin(bad)
    with pytest.raises(InputError):
        skin.classify_skin("")
