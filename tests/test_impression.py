"""Findings -> impression engine on a tiny T5 built offline: ROUGE, report parsing, truncation,
streaming, and batch evaluation with its validation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medlab.core.errors import InputError, UnsupportedFileError
from medlab.generation.impression import PROMPT, ImpressionSettings, generate_impression, impression_stream, split_report
from medlab.generation.impression_batch import BatchFileError, evaluate_batch, read_batch_file, rouge_figure
from medlab.generation.metrics import ROUGE_TYPES, rouge


def reference_rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE F-measures straight from Google's rouge-score (stemming on, as the app scores),
    independent of medlab.generation.metrics."""
    from rouge_score import rouge_scorer

    scores = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True).score(reference, prediction)
    return {name: scores[name].fmeasure for name in ROUGE_TYPES}


FINDINGS = [
    "the heart size is normal . the lungs are clear .",
    "small left pleural effusion . no pneumothorax .",
    "right lower lobe opacity consistent with consolidation .",
    "moderate cardiomegaly with vascular congestion and mild edema .",
    "there is a small nodule in the left upper lobe .",
]


# -- ROUGE -----------------------------------------------------------------------------------
def test_rouge_identical_is_one_and_disjoint_is_zero() -> None:
    text = "No acute cardiopulmonary process.\nStable cardiomegaly."
    assert rouge(text, text) == {name: 1.0 for name in ROUGE_TYPES}
    assert rouge("bilateral pleural effusions", "normal heart size") == {name: 0.0 for name in ROUGE_TYPES}


def test_rouge_matches_hand_computed_values() -> None:
    # prediction 4 words, reference 6; the prediction is a prefix of the reference.
    # rouge1: P = 4/4, R = 4/6 -> F = 2PR/(P+R) = 0.8
    # rouge2: bigrams 3 of 3 in the reference, which has 5 -> P = 1, R = 3/5 -> F = 0.75
    # rougeL: LCS = 4 words -> same as rouge1 = 0.8
    scores = rouge("small left pleural effusion", "small left pleural effusion and atelectasis")
    assert scores["rouge1"] == pytest.approx(0.8)
    assert scores["rouge2"] == pytest.approx(0.75)
    assert scores["rougeL"] == pytest.approx(0.8)
    assert scores["rougeLsum"] == pytest.approx(0.8)
    # One word differs out of four: rouge1 = 3/4, rouge2 = 2/3 bigrams, LCS = 3 -> 3/4.
    scores = rouge("no acute cardiopulmonary process", "no acute cardiopulmonary abnormality")
    assert scores["rouge1"] == pytest.approx(0.75)
    assert scores["rouge2"] == pytest.approx(2 / 3)
    assert scores["rougeL"] == pytest.approx(0.75)


# -- report parsing --------------------------------------------------------------------------
def test_split_report_extracts_findings_and_impression() -> None:
    report = ("EXAMINATION: Chest PA and lateral\nIndication: cough\nFindings:\nThe lungs are clear.\n"
              "Heart size normal.\n\nImpression: No acute process.")
    parts = split_report(report)
    assert parts.findings == "The lungs are clear.\nHeart size normal."
    assert parts.impression == "No acute process."
    assert parts.extracted
    one_line = split_report("FINDINGS: Small left effusion. IMPRESSION: Left effusion.")
    assert (one_line.findings, one_line.impression) == ("Small left effusion.", "Left effusion.")
    plain = split_report("The lungs are clear. Impressive cardiomegaly: none.")
    assert plain.findings == "The lungs are clear. Impressive cardiomegaly: none." and plain.impression is None
    assert split_report("Heart normal.\nIMPRESSION: Normal.").findings == "Heart normal."


# -- single requests ---------------------------------------------------------------------------
def test_greedy_streams_and_matches_plain_generate(use_tiny_models: dict[str, str]) -> None:
    import torch

    from medlab.core.loaders import get_model
    from medlab.generation.impression import build_prompt

    updates = list(impression_stream(FINDINGS[0], settings=ImpressionSettings(num_beams=1, max_length=16)))
    assert len(updates) > 2
    assert all(not u.done for u in updates[:-1]) and updates[-1].done
    texts = [u.text for u in updates[:-1]]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))

    loaded = get_model("impression")
    batch = loaded.tokenizer(build_prompt(FINDINGS[0]), return_tensors="pt")
    with torch.inference_mode():
        out = loaded.model.generate(**batch, max_length=16, num_beams=1, do_sample=False)
    assert updates[-1].text == loaded.tokenizer.decode(out[0], skip_special_tokens=True).strip()
    assert updates[-1].rouge is None  # no reference given


def test_beam_search_returns_one_final_update_with_rouge(use_tiny_models: dict[str, str]) -> None:
    updates = list(impression_stream(FINDINGS[1], "small left pleural effusion",
                                     ImpressionSettings(num_beams=3, max_length=12)))
    assert len(updates) == 1 and updates[0].done
    final = updates[0]
    assert final.rouge == pytest.approx(reference_rouge(final.text, "small left pleural effusion"))


def test_pasted_report_uses_findings_and_its_impression_as_reference(use_tiny_models: dict[str, str]) -> None:
    report = "INDICATION: dyspnea\nFINDINGS: " + FINDINGS[3] + "\nIMPRESSION: cardiomegaly with edema ."
    result = generate_impression(report, settings=ImpressionSettings(1, 10))
    assert result.findings == FINDINGS[3]
    assert result.reference == "cardiomegaly with edema ."
    assert result.rouge == pytest.approx(reference_rouge(result.text, "cardiomegaly with edema ."))
    assert any("FINDINGS section" in n for n in result.notes)
    # An explicit reference wins over the report's own impression.
    explicit = generate_impression(report, "edema", ImpressionSettings(1, 10))
    assert explicit.reference == "edema"


def test_too_long_findings_are_truncated_with_a_notice(use_tiny_models: dict[str, str]) -> None:
    from medlab.core.loaders import get_model

    tokenizer = get_model("impression").tokenizer
    limit = tokenizer.model_max_length  # 48 in the tiny tokenizer
    long = " ".join(["the lungs are clear ."] * 20)
    n_tokens = len(tokenizer(PROMPT.format(findings=long)).input_ids)
    assert n_tokens > limit
    result = generate_impression(long, settings=ImpressionSettings(1, 8))
    (notice,) = [n for n in result.notes if "cut off" in n]
    assert f"{n_tokens} tokens" in notice and f"at most {limit}" in notice
    short = generate_impression(FINDINGS[0], settings=ImpressionSettings(1, 8))
    assert not any("cut off" in n for n in short.notes)


def test_invalid_requests_are_refused() -> None:
    with pytest.raises(InputError):
        generate_impression("   ")
    with pytest.raises(InputError, match="no findings"):
        generate_impression("IMPRESSION: normal chest")
    with pytest.raises(InputError, match="beams"):
        ImpressionSettings(num_beams=0).validated()
    with pytest.raises(InputError, match="max length"):
        ImpressionSettings(max_length=10_000).validated()


# -- batch evaluation --------------------------------------------------------------------------
def test_batch_of_20_jsonl_rows_matches_single_requests_and_its_summary(
    use_tiny_models: dict[str, str], tmp_path: Path
) -> None:
    from rouge_score import rouge_scorer

    settings = ImpressionSettings(num_beams=1, max_length=12)
    findings = [f"{FINDINGS[i % 5]} {' '.join(['stable'] * (i // 5))}".strip() for i in range(20)]
    singles = [generate_impression(f, settings=settings).text for f in findings]
    # References that share a varying share of words with the model's output, so scores spread.
    references = []
    for i, text in enumerate(singles):
        words = text.split()
        keep = words[: (i % 5) * len(words) // 4]
        references.append(" ".join(keep + ["pleural", "effusion", "cardiomegaly"][: 1 + i % 3]))
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "findings": f, "impression": r})
                              for i, (f, r) in enumerate(zip(findings, references))) + "\n", encoding="utf-8")

    steps: list[float] = []
    result = evaluate_batch(path, settings, progress=lambda f, m: steps.append(f), output_dir=tmp_path)
    assert [r["row"] for r in result.rows] == list(range(1, 21))
    assert [r["generated"] for r in result.rows] == singles  # padding in mini-batches changes nothing
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    for row, ref in zip(result.rows, references):
        direct = scorer.score(ref, row["generated"])
        for name in ROUGE_TYPES:
            assert row[name] == pytest.approx(direct[name].fmeasure)
    for name in ROUGE_TYPES:
        values = np.array([r[name] for r in result.rows])
        s = result.summary[name]
        assert s["n"] == 20
        assert s["mean"] == pytest.approx(values.mean())
        assert s["std"] == pytest.approx(values.std())
        assert [s["q1"], s["median"], s["q3"]] == pytest.approx(list(np.percentile(values, [25, 50, 75])))
        assert s["min"] == pytest.approx(values.min()) and s["max"] == pytest.approx(values.max())
    assert result.summary["rouge1"]["std"] > 0.05  # the scores really differ between rows
    assert steps and steps == sorted(steps) and steps[-1] == 1.0

    with result.csv_path.open(encoding="utf-8") as fh:
        saved = list(csv.DictReader(fh))
    assert len(saved) == 20
    assert [s["generated"] for s in saved] == singles
    assert float(saved[3]["rouge1"]) == pytest.approx(result.rows[3]["rouge1"])
    table = result.summary_table()
    assert [r[0] for r in table] == list(ROUGE_TYPES) and table[0][1] == round(result.summary["rouge1"]["mean"], 4)

    figure = rouge_figure(result)
    assert [ax.get_title() for ax in figure.axes] == list(ROUGE_TYPES)
    assert sum(p.get_height() for p in figure.axes[0].patches) == 20  # every report in the histogram


def test_batch_csv_with_report_column_and_missing_references(tmp_path: Path) -> None:
    path = tmp_path / "reports.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Report"])
        writer.writerow(["FINDINGS: Lungs clear. IMPRESSION: Normal."])
        writer.writerow([""])
        writer.writerow(["Small effusion on the left."])
    rows, notes = read_batch_file(path)
    assert [(r.row, r.findings, r.reference) for r in rows] == [
        (1, "Lungs clear.", "Normal."), (3, "Small effusion on the left.", None)]
    assert any("Skipped 1 row" in n and ": 2." in n for n in notes)

    no_ref = tmp_path / "findings.jsonl"
    no_ref.write_text('{"findings": "lungs clear"}\n\n{"findings": "effusion"}\n', encoding="utf-8")
    rows, notes = read_batch_file(no_ref)
    assert len(rows) == 2 and all(r.reference is None for r in rows)
    assert any("not scored" in n for n in notes)


def test_batch_file_validation_messages(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("id,text_body,label\n1,lungs clear,normal\n", encoding="utf-8")
    with pytest.raises(BatchFileError) as info:
        read_batch_file(wrong)
    message = str(info.value)
    assert "'id', 'text_body', 'label'" in message and "'findings'" in message and "'impression'" in message

    latin = tmp_path / "latin1.csv"
    latin.write_bytes("findings,impression\nPl\u00e9ural effusion,effusion\n".encode("latin-1"))
    with pytest.raises(BatchFileError, match="not UTF-8.*0xE9"):
        read_batch_file(latin)

    many = tmp_path / "many.jsonl"
    many.write_text("".join(json.dumps({"findings": f"row {i}"}) + "\n" for i in range(6)), encoding="utf-8")
    with pytest.raises(BatchFileError, match="6 rows; the limit here is 5"):
        read_batch_file(many, max_rows=5)

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"findings": "ok"}\n{"findings": \n', encoding="utf-8")
    with pytest.raises(BatchFileError, match="Line 2"):
        read_batch_file(broken)

    empty = tmp_path / "empty.csv"
    empty.write_text("findings,impression\n,normal\n", encoding="utf-8")
    with pytest.raises(BatchFileError, match="no rows with findings"):
        read_batch_file(empty)

    text = tmp_path / "notes.txt"
    text.write_text("findings", encoding="utf-8")
    with pytest.raises(UnsupportedFileError):
        read_batch_file(text)
