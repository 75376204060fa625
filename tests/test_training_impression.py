"""finetune_impression + evaluate_impression end to end on CPU: a tiny T5 (built in the test
session, word-level tokenizer) learns a synthetic findings -> impression mapping, and the
ROUGE report shows the fine-tuned model beating its own starting point."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest


def make_reports(n: int, seed: int) -> list[dict[str, str]]:
    """Impressions that depend on the findings (size and side of an effusion, or normal)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        if rng.random() < 0.34:
            findings = "the lungs are clear . no pleural effusion or pneumothorax . heart size is normal ."
            impression = "no acute cardiopulmonary process ."
        else:
            size, side = rng.choice(["small", "large"]), rng.choice(["left", "right"])
            findings = f"there is a {size} {side} pleural effusion . heart size is normal . no pneumothorax ."
            impression = f"{size} {side} pleural effusion ."
        rows.append({"findings": findings, "impression": impression})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base_t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_generation import tiny_t5

    return tiny_t5(tmp_path_factory.mktemp("t5") / "base", model_max_length=128)


def test_finetune_then_rouge_report(base_t5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medlab.core.cards import card_markdown, evaluation_plots, evaluation_report
    from medlab.core.loaders import get_model
    from tests.test_impression import reference_rouge
    from training import evaluate_impression, finetune_impression

    train = write_jsonl(tmp_path / "train.jsonl", make_reports(64, seed=0))
    test = write_jsonl(tmp_path / "test.jsonl", make_reports(16, seed=1))
    out = tmp_path / "tuned"
    summary = finetune_impression.train(finetune_impression.parse_args([
        "--model", str(base_t5), "--train", str(train), "--out", str(out), "--epochs", "5", "--batch-size", "8",
        "--lr", "1e-2", "--val-fraction", "0.1", "--seed", "0", "--warmup-ratio", "0.05",
    ]))
    assert summary["history"][-1]["val_loss"] < summary["initial_val_loss"] * 0.5
    assert not (out / "checkpoint").exists()

    # the app loads the output as is
    monkeypatch.setenv("MEDLAB_MODEL_IMPRESSION", str(out))
    assert get_model("impression").model.config.d_model == 32

    report = evaluate_impression.evaluate(evaluate_impression.parse_args([
        "--model", str(out), "--baseline", str(base_t5), "--data", str(test), "--num-beams", "2",
        "--max-length", "12", "--batch-size", "8",
    ]))
    means, base_means = report["rouge_mean"], report["baseline"]["rouge_mean"]
    assert set(means) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert means["rouge1"] > base_means["rouge1"] + 0.3, (means, base_means)
    # the table equals rouge-score on the saved predictions
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 16
    mean_r1 = sum(reference_rouge(p["prediction"], p["reference"])["rouge1"] for p in preds) / len(preds)
    assert report["rouge"]["rouge1"]["mean"] == pytest.approx(mean_r1)
    assert {"std", "q1", "median", "q3"} <= set(report["rouge"]["rouge1"])
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["rouge_mean"] == pytest.approx(means)

    assert evaluation_report("impression")["task"] == "impression"
    assert [p.name for p in evaluation_plots("impression")] == ["01_rouge_distribution.png", "02_rouge_boxplot.png"]
    card = card_markdown("impression")
    assert "document 002: fine-tuned, MIMIC-CXR dev" in card and "this model" in card


def test_reads_csv_and_skips_incomplete_rows(tmp_path: Path) -> None:
    from training.finetune_impression import read_pairs

    path = tmp_path / "r.csv"
    path.write_text("findings,impression\nclear lungs,normal\n,missing findings\nsmall effusion,\n", encoding="utf-8")
    assert read_pairs(path) == [("clear lungs", "normal")]
