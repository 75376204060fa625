"""Text metrics shared by the impression tab and the training/evaluation scripts.

ROUGE comes from Google's `rouge-score` (the reference implementation the HF `evaluate`
metric wraps; `evaluate.load("rouge")` would download code, so we call it directly)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@lru_cache(maxsize=2)
def _scorer(use_stemmer: bool) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)


def rouge(prediction: str, reference: str, use_stemmer: bool = True) -> dict[str, float]:
    """ROUGE F-measures of one prediction against one reference (0..1).

    rougeLsum treats newlines as sentence boundaries, as in the ROUGE-1.5.5 convention."""
    scores = _scorer(use_stemmer).score(reference, prediction)
    return {name: float(scores[name].fmeasure) for name in ROUGE_TYPES}


def summarize(rows: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean / std / quartiles per ROUGE type over per-report scores (document 002's table)."""
    out: dict[str, dict[str, float]] = {}
    for name in ROUGE_TYPES:
        values = np.asarray([row[name] for row in rows], dtype=np.float64)
        if values.size == 0:
            continue
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        out[name] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=0)),
            "min": float(values.min()),
            "q1": float(q1),
            "median": float(median),
            "q3": float(q3),
            "max": float(values.max()),
            "n": int(values.size),
        }
    return out
