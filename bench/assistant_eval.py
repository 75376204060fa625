"""Section 8: does the melanoma assistant answer what it covers and decline what it does not?

The labelled set is knowledge/eval/questions.jsonl: paraphrased questions with the note that
answers them ("covered"), medically adjacent questions the notes do not cover ("decline":
other cancers, other skin diseases, other organs, animals, the same words in another field)
and questions in other scripts ("non_english"). Each row is in the calibration or the test
half. Every question goes through the app's own medlab.retrieval.assistant.ask over the
shipped notes in a fresh store.

    python -m bench.assistant_eval              # evaluate, print the figures
    python -m bench.assistant_eval --calibrate  # refit the relevance model on the calibration
                                                # half, write relevance_calibration.json, evaluate

Calibration (offline check, English embedder): a logistic regression (scikit-learn) on
(best passage similarity, best contrast-topic similarity) fitted on the calibration half; its
threshold is the midpoint between the highest probability of a calibration question that
must be declined and the next covered one above it; the weight of shared words in passage
order is the grid value that puts the most calibration questions' expected note first."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EVAL_FILE = ROOT / "knowledge" / "eval" / "questions.jsonl"
LEXICAL_GRID = tuple(round(0.05 * i, 2) for i in range(9))  # 0.00 .. 0.40


def load_rows(path: Path = EVAL_FILE) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def fresh_store(data_dir: Path | None = None) -> Path:
    """Point the app at a new data dir holding only the shipped notes."""
    from medlab.retrieval import knowledge_store
    from medlab.retrieval.vectorstore import reset_clients

    data = data_dir or Path(tempfile.mkdtemp(prefix="assistant-eval-"))
    os.environ["MEDLAB_DATA_DIR"] = str(data)
    reset_clients()
    knowledge_store.reset_ready()
    knowledge_store.ensure_ingested()
    return data


def _features(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per English question: relevance features and the retrieved candidates."""
    from medlab.retrieval import relevance
    from medlab.retrieval.assistant import CANDIDATES
    from medlab.retrieval.knowledge_store import EMBEDDER, embed, ensure_ingested, retrieve

    ensure_ingested()
    out = []
    for r in rows:
        if r["label"] == "non_english":
            continue
        qvec = embed([r["question"]])[0]
        cands = retrieve(r["question"], k=CANDIDATES, qvec=qvec)
        best = max(p.score for p in cands)
        feats, _ = relevance.features(qvec, best, EMBEDDER)
        out.append({**r, "features": feats, "candidates": cands})
    return out


def calibrate(rows: list[dict[str, Any]], write: Path | None = None) -> dict[str, Any]:
    """Fit the relevance model and the lexical weight on the calibration half."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from medlab.retrieval import relevance
    from medlab.retrieval.assistant import order_passages
    from medlab.retrieval.knowledge_store import EMBEDDER

    feats = _features([r for r in rows if r["split"] == "calibration"])
    x = np.array([f["features"] for f in feats])
    y = np.array([f["label"] == "covered" for f in feats], dtype=int)
    model = LogisticRegression(C=100.0).fit(x, y)
    p = model.predict_proba(x)[:, 1]
    threshold = separating_threshold(p[y == 1].tolist(), p[y == 0].tolist())

    covered = [f for f in feats if f["label"] == "covered"]
    accuracy = {}
    for w in LEXICAL_GRID:
        right = 0
        for f in covered:
            terms = relevance.content_terms(f["question"]) if w else set()
            right += order_passages(f["candidates"], terms, w)[0].doc == f["expected"]
        accuracy[w] = right
    weight = max(LEXICAL_GRID, key=lambda w: (accuracy[w], -w))
    entry = {
        "features": ["best_passage", "best_contrast"],
        "weights": [round(float(v), 6) for v in model.coef_[0]],
        "bias": round(float(model.intercept_[0]), 6),
        "threshold": round(threshold, 6),
        "lexical_weight": weight,
        "fitted_on": {"questions": len(feats), "covered": int(y.sum()), "decline": int((1 - y).sum()),
                      "eval_file": str(EVAL_FILE.relative_to(ROOT)),
                      "lexical_grid_top1": {str(k): v for k, v in accuracy.items()}},
    }
    reranker = _calibrate_reranker(feats, weight)
    if write is not None:
        data = json.loads(write.read_text()) if write.exists() else {"embedders": {}}
        data["embedders"][relevance.embedder_identity(EMBEDDER)] = entry
        if reranker is not None:
            data.setdefault("rerankers", {})[relevance.embedder_identity("reranker")] = reranker
        write.write_text(json.dumps(data, indent=1) + "\n")
    return {**entry, "reranker": reranker}


def separating_threshold(keep: list[float], drop: list[float]) -> float:
    """Midpoint between the highest score that must be dropped and the next score to keep
    above it (just above the highest dropped one when no kept score is above it)."""
    top_drop = max(drop)
    above = [v for v in keep if v > top_drop]
    return (top_drop + min(above)) / 2 if above else top_drop + 1e-6


def _calibrate_reranker(feats: list[dict[str, Any]], weight: float) -> dict[str, Any] | None:
    """Where the cross-encoder can be loaded (a connected machine): its relevance-logit
    threshold, from the best reranked passage of each calibration question."""
    from medlab.retrieval import relevance
    from medlab.retrieval.assistant import order_passages

    lm = relevance.optional_model("reranker")
    if lm is None:
        return None
    best: dict[str, list[float]] = {"covered": [], "decline": []}
    for f in feats:
        terms = relevance.content_terms(f["question"]) if weight else set()
        texts = [p.text for p in order_passages(f["candidates"], terms, weight)[:4]]
        best[f["label"]].append(max(relevance.rerank_scores(lm, f["question"], texts)))
    return {"relevant_logit": round(separating_threshold(best["covered"], best["decline"]), 4),
            "fitted_on": {"covered": len(best["covered"]), "decline": len(best["decline"])}}


def evaluate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Ask every question through the app; counts per split and label."""
    from medlab.retrieval.assistant import ask

    per: dict[str, dict[str, Any]] = {}
    mistakes = []
    seconds = []
    for r in rows:
        t0 = time.perf_counter()
        a = ask(r["question"])
        seconds.append(time.perf_counter() - t0)
        top = a.passages[0].doc if a.passages else None
        s = per.setdefault(r["split"], {"covered": 0, "answered": 0, "right_note": 0, "first_sentence_right_note": 0,
                                        "decline": 0,
                                        "off_topic_answered": 0, "non_english": 0, "non_english_handled": 0})
        if r["label"] == "covered":
            s["covered"] += 1
            s["answered"] += a.covered
            s["right_note"] += a.covered and top == r["expected"]
            s["first_sentence_right_note"] += a.covered and _first_sentence_doc(a) == r["expected"]
            if not (a.covered and top == r["expected"]):
                mistakes.append({"question": r["question"], "expected": r["expected"], "got": top,
                                 "reason": a.reason})
        elif r["label"] == "decline":
            s["decline"] += 1
            s["off_topic_answered"] += a.covered
            if a.covered:
                mistakes.append({"question": r["question"], "expected": "decline", "got": top, "reason": a.reason})
        else:
            s["non_english"] += 1
            # Handled: answered from the right note (multilingual model), or declined saying
            # that the multilingual model is needed. A bare "not covered" is not handled.
            ok = (a.covered and top == r["expected"]) or a.reason == "needs_multilingual"
            s["non_english_handled"] += ok
            if not ok:
                mistakes.append({"question": r["question"], "expected": r["expected"], "got": top, "reason": a.reason})
    total = {k: sum(s[k] for s in per.values()) for k in next(iter(per.values()))}
    return {"splits": per, "all": total, "mistakes": mistakes, "seconds": seconds}


def _first_sentence_doc(answer: Any) -> str | None:
    """The document the extractive answer's first sentence is quoted from (its [n] tag)."""
    import re

    m = re.search(r"\[(\d+)\]", answer.answer)
    return answer.passages[int(m.group(1)) - 1].doc if m else None


def rate(n: int, d: int) -> float:
    return round(n / d, 4) if d else 0.0


def run(quick: bool = False) -> Any:
    from bench.common import WORK, Row, SectionResult, check, summary

    res = SectionResult(8, "Assistant: answers what the notes cover, declines what they do not")
    started = time.perf_counter()
    import shutil

    data = WORK / "assistant-eval"
    shutil.rmtree(data, ignore_errors=True)
    fresh_store(data)
    rows = load_rows()
    if quick:
        rows = rows[::3]
    result = evaluate(rows)
    latency = summary(result.pop("seconds")[1:])  # the first question also loads the models
    a = result["all"]
    res.rows.append(Row("off-topic questions answered", a["off_topic_answered"], "questions", "= 0",
                        a["off_topic_answered"] == 0, f"of {a['decline']} that must be declined"))
    right = rate(a["right_note"], a["covered"])
    res.rows.append(Row("covered questions answered from the right note", round(100 * right, 1), "%", ">= 95%",
                        check(right, ">=", 0.95), f"{a['right_note']}/{a['covered']}"))
    res.rows.append(Row("non-English questions answered or told they need the multilingual model",
                        a["non_english_handled"], "questions", f"= {a['non_english']}",
                        a["non_english_handled"] == a["non_english"], "script-based detection"))
    res.tables.append({
        "title": "Per split (calibration half fitted the relevance model; test half held out)",
        "columns": ["split", "covered answered", "right note", "first sentence from the right note",
                    "off-topic answered", "non-English handled"],
        "rows": [[name, f"{s['answered']}/{s['covered']}", f"{s['right_note']}/{s['covered']}",
                  f"{s['first_sentence_right_note']}/{s['covered']}",
                  f"{s['off_topic_answered']}/{s['decline']}", f"{s['non_english_handled']}/{s['non_english']}"]
                 for name, s in sorted(result["splits"].items())],
    })
    res.notes.append(f"{len(rows)} questions from knowledge/eval/questions.jsonl through assistant.ask: "
                     f"median {latency['median_ms']:.0f} ms, p95 {latency['p95_ms']:.0f} ms per question after the "
                     "first (English MiniLM embedder and the offline topic check; the reranker and the "
                     "multilingual embedder cannot be loaded offline, so they are not part of these figures).")
    res.details = {**result, "latency": latency}
    res.seconds = time.perf_counter() - started
    return res


def main(argv: list[str] | None = None) -> int:
    from medlab.retrieval.relevance import CALIBRATION_FILE

    parser = argparse.ArgumentParser(prog="python -m bench.assistant_eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibrate", action="store_true", help="refit and write relevance_calibration.json")
    args = parser.parse_args(argv)
    fresh_store()
    rows = load_rows()
    if args.calibrate:
        entry = calibrate(rows, write=CALIBRATION_FILE)
        print(json.dumps(entry, indent=1))
    print(json.dumps(evaluate(rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
