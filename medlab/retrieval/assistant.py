"""The grounded melanoma assistant: answer only from the knowledge base, with citations, or
decline.

Answers: the best passages with (document, page/section) citations and an extractive answer
made of the passages' sentences closest to the question. When the best passage is below a
similarity floor the assistant says the knowledge base does not cover the question; it never
answers from a model's own memory."""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

from medlab.core.errors import InputError, MedlabError
from medlab.retrieval.documents import split_sentences
from medlab.retrieval.knowledge_store import Passage, Progress, embed, ensure_ingested, retrieve

# Cosine similarity (all-MiniLM-L6-v2, normalised) below which the best passage counts as
# "not about this". Calibrated on the shipped corpus with the real model: 11 on-topic
# questions scored 0.34-0.74 on their best passage; 10 off-topic ones scored 0.03-0.23
# ("best pizza in Naples" 0.03, "how do I treat a broken leg" 0.23). See README.
SIMILARITY_FLOOR = 0.30
# Optional generated answer: the registry key of a seq2seq model (e.g. "impression", FLAN-T5)
# that rewrites the retrieved passages into an answer. Off by default: the extractive answer
# cannot invent anything; a generator can, so its output is shown only when most of its words
# occur in the cited passages (GROUNDING_MIN).
GENERATOR_ENV = "MEDLAB_ASSISTANT_GENERATOR"
GROUNDING_MIN = 0.7
GENERATE_MAX_NEW_TOKENS = 96


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


def ask(question: str, k: int = 4, floor: float = SIMILARITY_FLOOR, progress: Progress | None = None) -> Answer:
    """A grounded answer: the best passages with citations and an extractive answer, or a
    clear statement that the knowledge base does not cover the question."""
    question = (question or "").strip()
    if not question:
        raise InputError("Type a question about melanoma first.")
    if len(question) > 1000:
        raise InputError("The question is too long (over 1000 characters); ask one thing at a time.")
    ensure_ingested(progress)
    qvec = embed([question], progress)[0]  # embedded once, for retrieval and sentence ranking
    passages = retrieve(question, k=k, progress=progress, qvec=qvec)
    best = passages[0].score if passages else 0.0
    if not passages or best < floor:
        msg = (
            "**The knowledge base does not cover this question**, so I will not answer it "
            f"(best passage similarity {best:.2f} < floor {floor:.2f}). I only answer from the "
            "documents in the knowledge base — ask about melanoma (ABCDE rule, risk factors, "
            "dermoscopy, staging, treatment, prevention) or what this app's models can do."
        )
        return Answer(question, False, msg, [], best, floor)
    kept = [p for p in passages if p.score >= floor]
    answer = Answer(question, True, _extractive(qvec, kept), kept, best, floor)
    key = os.environ.get(GENERATOR_ENV, "").strip()
    if key:
        answer.generator = key
        try:
            text = generate(key, question, kept, progress)
        except MedlabError as exc:  # the extractive answer stands on its own
            answer.generator_note = f"No generated answer: {exc}"
        else:
            support = grounding(text, kept)
            if text and support >= GROUNDING_MIN:
                answer.generated = text
            else:
                answer.withheld = text
                answer.generator_note = (
                    f"The generated answer was withheld: only {support:.0%} of its words occur in the "
                    f"cited passages (needs {GROUNDING_MIN:.0%})."
                )
    return answer


def generate(key: str, question: str, passages: list[Passage], progress: Progress | None = None) -> str:
    """A seq2seq model's answer written from the passages only (prompted to stay inside them)."""
    import torch

    from medlab.core.loaders import get_model

    lm = get_model(key, progress)
    context = "\n".join(f"[{i}] {p.text}" for i, p in enumerate(passages[:3], 1))
    prompt = (
        "Answer the question using only the context. If the context does not contain the answer, "
        f"say that the documents do not say.\n\nContext:\n{context}\n\nQuestion: {question}\nAnswer:"
    )
    enc = lm.tokenizer(prompt, return_tensors="pt", truncation=True, max_length=512).to(lm.device)
    with torch.inference_mode():
        out = lm.model.generate(**enc, max_new_tokens=GENERATE_MAX_NEW_TOKENS, num_beams=2, do_sample=False)
    return lm.tokenizer.decode(out[0], skip_special_tokens=True).strip()


def grounding(text: str, passages: list[Passage]) -> float:
    """Share of the generated text's content words (4+ letters) that occur in the passages."""
    words = re.findall(r"[a-z]{4,}", (text or "").lower())
    if not words:
        return 0.0
    source = " ".join(p.text for p in passages).lower()
    return sum(w in source for w in words) / len(words)


_SENTENCE_CACHE: OrderedDict[str, Any] = OrderedDict()
_SENTENCE_CACHE_MAX = 4096
_SENTENCE_LOCK = threading.Lock()


def _sentence_vectors(sentences: list[str]) -> Any:
    """Embeddings of passage sentences, memoised: the same top passages come back for many
    questions, and re-embedding their sentences dominated the cost of ask()."""
    import numpy as np

    with _SENTENCE_LOCK:
        missing = [s for s in sentences if s not in _SENTENCE_CACHE]
    if missing:
        fresh = embed(missing)
        with _SENTENCE_LOCK:
            for s, v in zip(missing, fresh, strict=True):
                _SENTENCE_CACHE[s] = v
            while len(_SENTENCE_CACHE) > _SENTENCE_CACHE_MAX:
                _SENTENCE_CACHE.popitem(last=False)
    with _SENTENCE_LOCK:
        vectors = [_SENTENCE_CACHE.get(s) for s in sentences]
    if any(v is None for v in vectors):  # evicted meanwhile by another thread: embed directly
        return embed(sentences)
    return np.stack(vectors)


def _extractive(qvec: Any, passages: list[Passage], max_sentences: int = 3) -> str:
    """The passages' sentences closest to the question vector, each with its [n] citation."""
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
    vecs = _sentence_vectors([s for s, _ in uniq])
    scores = vecs @ qvec
    order = np.argsort(-scores)
    best = float(scores[order[0]])
    picked = [uniq[j] + (float(scores[j]),) for j in order[:max_sentences] if scores[j] >= best - 0.15]
    return " ".join(f"{s} [{i}]" for s, i, _ in picked)
