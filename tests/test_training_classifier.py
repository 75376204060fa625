"""train_classifier + evaluate_classifier end to end on CPU with a generated image folder.

The synthetic task: each image is grey noise with one disc whose colour is the class. A tiny
timm EfficientNet (timm's `test_efficientnet`, random init, ~100k parameters) must learn it
well above chance on the held-out split, save a standard HF dir that the app's own loader
reads, and the evaluation report must reach the app's model card."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest

LUNG_CLASSES = {"Bengin cases": (220, 40, 40), "Malignant cases": (40, 200, 40), "Normal cases": (40, 40, 220)}
SKIN_CLASSES = {"benign": (200, 150, 90), "malignant": (60, 30, 20)}


def make_colour_folder(root: Path, classes: dict[str, tuple[int, int, int]], n: int = 30, size: int = 48, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for name, colour in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(60, 160, (size, size, 3)).astype(np.float64)
            r = int(rng.integers(size // 5, size // 3))
            cx, cy = rng.integers(r, size - r, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            img[disc] = np.asarray(colour) + rng.normal(0, 15, (int(disc.sum()), 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from training import train_classifier

    root = tmp_path_factory.mktemp("clf")
    data = make_colour_folder(root / "data", LUNG_CLASSES)
    out = root / "model"
    train_classifier.main([
        "--data", str(data), "--out", str(out), "--backbone", "test_efficientnet", "--no-pretrained",
        "--image-size", "48", "--epochs-frozen", "1", "--epochs", "8", "--lr-finetune", "3e-3",
        "--batch-size", "16", "--patience", "4", "--seed", "0",
    ])
    return data, out


@pytest.mark.parametrize("name", ["train_classifier", "evaluate_classifier", "finetune_impression",
                                  "evaluate_impression", "finetune_captioner", "plip_linear_probe"])
def test_every_script_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module(f"training.{name}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"training.{name}" in text and "--seed" in text


def test_smote_is_not_an_offered_balancing(capsys: pytest.CaptureFixture[str]) -> None:
    """Document 001's SMOTE on raw pixels collapsed: the CLI offers sampler / class weights
    / none and refuses anything else."""
    from training import train_classifier

    base = ["--data", "x", "--out", "y"]
    for choice in ("sampler", "class-weights", "none"):
        assert train_classifier.parse_args(base + ["--balance", choice]).balance == choice
    with pytest.raises(SystemExit) as exit_info:
        train_classifier.parse_args(base + ["--balance", "smote"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_trained_model_is_a_standard_dir_the_app_loads(trained: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from medlab.core.loaders import get_model
    from training.common import load_rgb

    data, out = trained
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not (out / "checkpoint").exists()  # resume state removed after a finished run
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "test_efficientnet" and config["label_names"] == list(LUNG_CLASSES)
    log = json.loads((out / "training_log.json").read_text())
    assert {h["phase"] for h in log["history"]} == {1, 2}

    # the app's real loader path (registry -> cache -> load_image_classifier)
    monkeypatch.setenv("MEDLAB_MODEL_LUNG_CT", str(out))
    loaded = get_model("lung_ct")
    assert loaded.model.config.id2label == dict(enumerate(LUNG_CLASSES))

    # held-out test split: clearly better than chance (1/3)
    splits = json.loads((out / "splits.json").read_text())
    assert splits["test"] and not set(splits["test"]) & set(splits["train"])
    images = [load_rgb(data / rel) for rel in splits["test"]]
    truth = [list(LUNG_CLASSES).index(Path(rel).parts[0]) for rel in splits["test"]]
    with torch.inference_mode():
        logits = loaded.model(**loaded.image_processor(images=images, return_tensors="pt")).logits
    accuracy = float((logits.argmax(-1).numpy() == np.asarray(truth)).mean())
    assert accuracy >= 0.75, f"held-out accuracy {accuracy:.2f} (chance 0.33)"


def test_evaluation_report_reaches_the_model_card(trained: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.metrics import accuracy_score, roc_auc_score

    from medlab.core.cards import card_markdown, evaluation_plots, evaluation_report
    from training import evaluate_classifier

    data, out = trained
    evaluate_classifier.main(["--model", str(out), "--data", str(data), "--split", "test", "--key", "lung_ct"])
    report = json.loads((out / "evaluation.json").read_text())
    assert report["labels"] == ["benign", "malignant", "normal"]  # mapped through the registry
    assert report["n"] == len(json.loads((out / "splits.json").read_text())["test"])
    saved = np.load(out / "predictions.npz")
    assert report["accuracy"] == pytest.approx(accuracy_score(saved["y_true"], saved["probs"].argmax(1)))
    assert report["micro_auc"] == pytest.approx(
        roc_auc_score(np.eye(3)[saved["y_true"]], saved["probs"], average="micro"))
    bt = report["binary_threshold"]  # the contract the app reads
    assert bt["positive_label"] == "malignant" and isinstance(bt["threshold"], float)
    assert {"tpr", "fpr", "rule"} <= set(bt)
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert len(plots) == 6 and all((out / "plots" / p).stat().st_size > 5000 for p in plots)

    monkeypatch.setenv("MEDLAB_MODEL_LUNG_CT", str(out))
    assert evaluation_report("lung_ct")["binary_threshold"]["threshold"] == bt["threshold"]
    assert [p.name for p in evaluation_plots("lung_ct")] == plots
    card = card_markdown("lung_ct")
    assert "Evaluation report" in card and "Defer to an expert" in card


def test_skin_labels_are_mapped_to_benign_malignant(tmp_path: Path, tiny_model_env: dict[str, str]) -> None:
    """A 7-class HAM10000 model evaluated on a benign/malignant folder: probabilities of the
    classes the registry maps to 'malignant' are summed; the tuned threshold is reported."""
    from training import evaluate_classifier

    data = make_colour_folder(tmp_path / "skin", SKIN_CLASSES, n=12, size=32, seed=1)
    out = tmp_path / "report"
    report = evaluate_classifier.evaluate(evaluate_classifier.parse_args(
        ["--model", tiny_model_env["MEDLAB_MODEL_SKIN"], "--data", str(data), "--key", "skin", "--out", str(out)]))
    assert report["labels"] == ["malignant", "benign"] or report["labels"] == ["benign", "malignant"]
    assert len(report["model_labels"]) == 7
    probs = np.load(out / "predictions.npz")["probs"]
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert report["binary_threshold"]["positive_label"] == "malignant"
    assert (out / "model_card.md").read_text().startswith("### Evaluation report")


def test_training_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    from training import train_classifier

    data = make_colour_folder(tmp_path / "data", SKIN_CLASSES, n=10, size=32)
    common = ["--data", str(data), "--out", str(tmp_path / "m"), "--backbone", "test_efficientnet", "--no-pretrained",
              "--image-size", "32", "--epochs-frozen", "1", "--batch-size", "8", "--keep-checkpoint", "--seed", "1",
              "--patience", "99"]
    first = train_classifier.train(train_classifier.parse_args(common + ["--epochs", "1"]))
    assert (tmp_path / "m" / "checkpoint" / "last.pt").is_file()
    second = train_classifier.train(train_classifier.parse_args(common + ["--epochs", "3", "--resume"]))
    steps = [(h["phase"], h["epoch"]) for h in second["history"]]
    assert steps == [(1, 1), (2, 1), (2, 2), (2, 3)]  # continued, did not start over
    assert second["history"][:2] == first["history"]


@pytest.mark.browser
def test_model_card_accordion_shows_the_plots(trained: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared model-card accordion (tabs.common.model_card, used by every tab) renders the
    evaluation section and the plots of a freshly evaluated lung model; saves a screenshot."""
    from playwright import sync_api as playwright

    from tests.browser_support import chromium_path

    chromium = Path(chromium_path())
    import gradio as gr

    from tabs.common import finalize_page_load, model_card
    from tests.conftest import ARTIFACTS, free_port
    from training import evaluate_classifier

    data, out = trained
    if not (out / "evaluation.json").exists():
        evaluate_classifier.main(["--model", str(out), "--data", str(data), "--split", "test", "--key", "lung_ct"])
    monkeypatch.setenv("MEDLAB_MODEL_LUNG_CT", str(out))
    with gr.Blocks() as demo:
        model_card("lung_ct")
        finalize_page_load(demo)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    shots = ARTIFACTS / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(chromium), args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            page.get_by_text("Model card").first.click()
            page.get_by_text("Evaluation report").first.wait_for(timeout=20_000)
            page.locator("img").first.wait_for(timeout=20_000)
            assert page.locator("img").count() >= 6  # the six evaluation plots in the gallery
            page.wait_for_timeout(500)
            page.screenshot(path=str(shots / "lung_ct_model_card.png"), full_page=True)
            browser.close()
    finally:
        demo.close()
