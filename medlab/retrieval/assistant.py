"""The grounded melanoma assistant: answer a question from the knowledge base, with
citations, or decline and say why.

1. Language: a question written in a script the English embedder cannot read (Chinese,
   Cyrillic, ...) is embedded with the multilingual embedder (`embedder_multilingual`) and
   matched against the English notes; without that model it is declined with the fix.
2. Retrieval: the closest chunks, re-ordered by cosine similarity plus a calibrated weight on
   the words question and passage share (medlab.retrieval.relevance).
3. Relevance: a calibrated topic check (and, when it can be loaded, a cross-encoder) decides
   whether the notes are about what is asked; if not, the assistant declines.
4. Answer: the passages' sentences that best answer the question (question-driven, so the
   first sentence addresses it), each with its [n] citation; optionally a generated answer
   shown only when every sentence is supported by a cited passage (medlab.retrieval.generator).
It never answers from a model's own memory."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

from medlab.core.errors import InputError, MedlabError
from medlab.retrieval import generator as _generator
from medlab.retrieval.documents import split_sentences
from medlab.retrieval.generator import GENERATOR_ENV, GROUNDING_MIN, grounding
from medlab.retrieval.knowledge_store import (
    EMBEDDER,
    Passage,
    Progress,
    embed,
    ensure_ingested,
    retrieve,
)
from medlab.retrieval.relevance import (
    Relevance,
    content_terms,
    judge,
    lexical_overlap,
    load_calibration,
    load_reranker_calibration,
    non_latin_script,
    optional_model,
    rerank_scores,
    unavailable_reason,
)

MULTILINGUAL = "embedder_multilingual"
RERANKER = "reranker"
# Cosine similarity below which, without a calibration for the embedder in use, the best
# passage counts as "not about this"; passages cited beside the best one must reach it too.
SIMILARITY_FLOOR = 0.30
CANDIDATES = 8  # chunks fetched before re-ordering; the best k are kept
GENERATE_MAX_NEW_TOKENS = _generator.GENERATE_MAX_NEW_TOKENS

ANSWERED, NOT_COVERED, NEEDS_MULTILINGUAL = "answered", "not_covered", "needs_multilingual"


@dataclass
class Answer:
    question: str
    covered: bool
    answer: str
    passages: list[Passage] = field(default_factory=list)
    best_score: float = 0.0
    floor: float = SIMILARITY_FLOOR
    generated: str | None = None  # grounded generated answer (only when a generator is configured)
    generator: str | None = None
    generator_note: str = ""
    withheld: str | None = None  # a generated answer that failed the grounding check (for audit)
    reason: str = ANSWERED  # answered | not_covered | needs_multilingual
    embedder: str = EMBEDDER
    relevance: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["citations"] = [
            {"n": i + 1, "document": p.doc, "title": p.title, "page": p.page or None,
             "section": p.section or None, "score": round(p.score, 4)}
            for i, p in enumerate(self.passages)
        ]
        return d

    def markdown(self) -> str:
        if not self.covered:
            return self.answer
        lines = []
        if self.generated:
            lines += [f"**Generated answer** ({self.generator}, written from the passages below; check them):",
                      "", self.generated, "", "**From the documents:**", ""]
        lines += [self.answer]
        if self.generator_note:
            lines += ["", f"*{self.generator_note}*"]
        lines += ["", "**Sources**"]
        for i, p in enumerate(self.passages, 1):
            lines.append(f"{i}. {p.citation} — similarity {p.score:.2f}")
        return "\n".join(lines)


def _needs_multilingual(question: str, script: str) -> Answer:
    why = unavailable_reason(MULTILINGUAL)
    msg = (
        f"**This question is not in English** ({script} script). The notes are in English and the "
        "English embedder available here cannot match questions in other languages, so I will not "
        "guess. Non-English questions need the multilingual embedder (`embedder_multilingual`, "
        "paraphrase-multilingual-MiniLM-L12-v2): run `python -m medlab download embedder_multilingual` "
        "on a connected machine, or set `MEDLAB_MODEL_EMBEDDER_MULTILINGUAL` to a local copy. "
        "Meanwhile, please ask in English." + (f"\n\n*Why it is missing: {why}*" if why else "")
    )
    return Answer(question, False, msg, reason=NEEDS_MULTILINGUAL)


def _not_covered(question: str, rel: Relevance, embedder_key: str) -> Answer:
    if rel.method.endswith("reranker"):  # the topic check passed; the reranker said no
        why = f"the reranker found no passage that answers it (best relevance logit {rel.reranker_score:.1f})"
    elif rel.best_contrast > rel.best_passage:
        why = f"it reads as a question about **{rel.contrast_topic}**, which the notes do not cover"
    else:
        why = f"no passage is close enough to it (best passage similarity {rel.best_passage:.2f})"
    msg = (
        f"**The knowledge base does not cover this question**, so I will not answer it: {why}. "
        "I only answer from the documents in the knowledge base — ask about melanoma in people "
        "(ABCDE rule, risk factors, dermoscopy, staging, treatment, prevention) or what this "
        "app's models can do."
    )
    return Answer(question, False, msg, [], rel.best_passage, reason=NOT_COVERED, embedder=embedder_key,
                  relevance=asdict(rel))


def order_passages(passages: list[Passage], question_terms: set[str], weight: float) -> list[Passage]:
    """Passages by cosine similarity plus `weight` x the share of the question's words they
    contain (title and section included: they name the topic)."""
    if not weight or not question_terms:
        return sorted(passages, key=lambda p: -p.score)
    key = {id(p): p.score + weight * lexical_overlap(question_terms, f"{p.title} {p.section} {p.text}")
           for p in passages}
    return sorted(passages, key=lambda p: -key[id(p)])


def ask(question: str, k: int = 4, floor: float = SIMILARITY_FLOOR, progress: Progress | None = None) -> Answer:
    """A grounded answer with citations, or a clear statement of why there is none."""
    question = (question or "").strip()
    if not question:
        raise InputError("Type a question about melanoma first.")
    if len(question) > 1000:
        raise InputError("The question is too long (over 1000 characters); ask one thing at a time.")
    script = non_latin_script(question)
    embedder_key = EMBEDDER
    if script:
        if optional_model(MULTILINGUAL, progress) is None:
            return _needs_multilingual(question, script)
        embedder_key = MULTILINGUAL
    ensure_ingested(progress, embedder_key)
    qvec = embed([question], progress, embedder_key)[0]  # once: retrieval, relevance, sentences
    candidates = retrieve(question, k=max(k, CANDIDATES), progress=progress, qvec=qvec, embedder_key=embedder_key)
    calibration = load_calibration(embedder_key)
    weight = calibration.lexical_weight if calibration is not None and not script else 0.0
    terms = content_terms(question) if weight else set()
    ranked = order_passages(candidates, terms, weight)[:k]
    best = max((p.score for p in candidates), default=0.0)
    if not ranked:
        return _not_covered(question, Relevance(False, 0.0, 0.0, 0.0, "", "empty knowledge base"), embedder_key)
    rel = judge(qvec, best, embedder_key, floor, calibration)
    if rel.covered:
        reranker = optional_model(RERANKER, progress)
        if reranker is not None:
            scores = rerank_scores(reranker, question, [p.text for p in ranked])
            ranked = [p for _, p in sorted(zip(scores, ranked, strict=True), key=lambda sp: -sp[0])]
            rel.reranker_score = max(scores)
            rel.method += " + reranker"
            rel.covered = rel.reranker_score >= float(reranker_threshold())
    if not rel.covered:
        return _not_covered(question, rel, embedder_key)
    kept = ranked[:1] + [p for p in ranked[1:] if p.score >= floor]
    text = _extractive(qvec, kept, embedder_key, terms, weight)
    answer = Answer(question, True, text, kept, best, floor, reason=ANSWERED, embedder=embedder_key,
                    relevance=asdict(rel))
    _maybe_generate(answer, progress)
    return answer


def reranker_threshold() -> float:
    """The calibrated relevance logit for the configured reranker, else the registry's
    default (the model's own 50% boundary)."""
    from medlab.core.registry import get_spec

    calibrated = load_reranker_calibration(RERANKER)
    return calibrated if calibrated is not None else float(get_spec(RERANKER).params.get("relevant_logit", 0.0))


def _maybe_generate(answer: Answer, progress: Progress | None) -> None:
    key = os.environ.get(GENERATOR_ENV, "").strip()
    if not key:
        return
    answer.generator = key
    try:
        text = generate(key, answer.question, answer.passages, progress)
    except MedlabError as exc:  # the extractive answer stands on its own
        answer.generator_note = f"No generated answer: {exc}"
        return
    support = grounding(text, answer.passages)
    if text and support >= GROUNDING_MIN:
        answer.generated = text
    else:
        answer.withheld = text
        answer.generator_note = (
            f"The generated answer was withheld: its least supported sentence has only {support:.0%} of "
            f"its words in a cited passage (every sentence needs {GROUNDING_MIN:.0%})."
        )


def generate(key: str, question: str, passages: list[Passage], progress: Progress | None = None) -> str:
    return _generator.generate(key, question, passages, progress, max_new_tokens=GENERATE_MAX_NEW_TOKENS)


_SENTENCE_CACHE: OrderedDict[tuple[str, str], Any] = OrderedDict()
_SENTENCE_CACHE_MAX = 4096
_SENTENCE_LOCK = threading.Lock()


def _sentence_vectors(sentences: list[str], embedder_key: str = EMBEDDER) -> Any:
    """Embeddings of passage sentences, memoised: the same top passages come back for many
    questions, and re-embedding their sentences dominated the cost of ask()."""
    import numpy as np

    keys = [(embedder_key, s) for s in sentences]
    with _SENTENCE_LOCK:
        missing = [k for k in keys if k not in _SENTENCE_CACHE]
    if missing:
        fresh = embed([s for _, s in missing], embedder_key=embedder_key)
        with _SENTENCE_LOCK:
            for key, v in zip(missing, fresh, strict=True):
                _SENTENCE_CACHE[key] = v
            while len(_SENTENCE_CACHE) > _SENTENCE_CACHE_MAX:
                _SENTENCE_CACHE.popitem(last=False)
    with _SENTENCE_LOCK:
        vectors = [_SENTENCE_CACHE.get(k) for k in keys]
    if any(v is None for v in vectors):  # evicted meanwhile by another thread: embed directly
        return embed(sentences, embedder_key=embedder_key)
    return np.stack(vectors)


def _extractive(qvec: Any, passages: list[Passage], embedder_key: str = EMBEDDER,
                question_terms: set[str] | None = None, weight: float = 0.0, max_sentences: int = 3) -> str:
    """The passages' sentences that best answer the question, best first, each with its [n]
    citation. A sentence's score is its similarity to the question plus `weight` x the share of
    the question's words it contains, so the first sentence is the one about what was asked."""
    import numpy as np

    cands: list[tuple[str, int]] = []
    for i, p in enumerate(passages[:3], 1):
        for s in split_sentences(p.text):
            if len(s) >= 25:
                cands.append((s, i))
    if not cands:
        return passages[0].text
    seen: set[str] = set()
    uniq = [(s, i) for s, i in cands if not (s in seen or seen.add(s))]
    scores = _sentence_vectors([s for s, _ in uniq], embedder_key) @ qvec
    if weight and question_terms:
        scores = scores + weight * np.array([lexical_overlap(question_terms, s) for s, _ in uniq])
    order = np.argsort(-scores)
    best = float(scores[order[0]])
    picked = [uniq[j] for j in order[:max_sentences] if scores[j] >= best - 0.15]
    return " ".join(f"{s} [{i}]" for s, i in picked)
