"""/teach_train and /teach_use through the real app with gradio_client: the taught model
answers /lung_classify with its own classes and a Grad-CAM overlay, also after the app is
closed and built again (the pointer in the data dir survives a restart)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.teach_data import CLASSES, write_folders, zip_folder


def _confidences(label: dict) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in label["confidences"]}


@pytest.mark.slow
def test_teach_use_then_lung_classify_across_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gradio_client import Client, handle_file

    from tests.conftest import serve_app

    monkeypatch.delenv("MEDLAB_MODEL_LUNG_CT", raising=False)
    data_dir = tmp_path / "data"
    env = {"MEDLAB_DATA_DIR": str(data_dir)}
    images = write_folders(tmp_path / "set", per_class=10, seed=5, size=64)
    archive = zip_folder(images, tmp_path / "set.zip")
    probe = images / "stripes" / "stripes_004.png"

    with serve_app(env) as url:
        client = Client(url, verbose=False)
        api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        params = api["/teach_train"]["parameters"]
        assert params[0]["component"] == "File" and all(p["parameter_has_default"] for p in params[1:])
        summary, *_rest, model_id = client.predict(handle_file(str(archive)), api_name="/teach_train")
        assert summary["classes"] == sorted(CLASSES) and summary["model_id"] == model_id
        assert summary["n_train"] + summary["n_test"] == 30
        assert set(summary["per_class_recall"]) == set(CLASSES) and 0.0 <= summary["held_out_accuracy"] <= 1.0
        text, done = client.predict(model_id, "lung_ct", api_name="/teach_use")
        assert done["model_id"] == model_id and "Lung CT" in text
        bars, overlay, verdict, lung_summary = client.predict(handle_file(str(probe)), api_name="/lung_classify")
        assert set(_confidences(bars)) == set(CLASSES)
        assert Image.open(overlay).size == Image.open(probe).size

    from medlab.core.loaders import reset_cache

    reset_cache()
    with serve_app(env) as url:  # a restart: new app, empty cache, same data dir
        client = Client(url, verbose=False)
        bars, overlay, verdict, again = client.predict(handle_file(str(probe)), api_name="/lung_classify")
        assert set(_confidences(bars)) == set(CLASSES)
        assert again["probabilities"] == pytest.approx(lung_summary["probabilities"], abs=1e-5)
        assert Image.open(overlay).size == Image.open(probe).size
