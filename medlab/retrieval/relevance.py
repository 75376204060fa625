"""Is a question about what the knowledge base covers? The step between retrieval and answer.

A passage can be the closest one and still be about something else: asked what causes lung
cancer, the nearest note is melanoma's risk factors. Similarity to the best passage alone
cannot tell "a paraphrased melanoma question" from "the same question about another disease",
so the offline check (it needs only the English MiniLM embedder) also compares the question
with CONTRAST_TOPICS, subjects next to melanoma that the notes do not cover: other cancers,
other skin diseases, other organs, animals. A question is covered when a calibrated logistic
model over (best passage similarity, best contrast similarity) says so; the model and its
decision threshold are fitted on the calibration half of the labelled evaluation set
(knowledge/eval/questions.jsonl) by `python -m bench.assistant_eval --calibrate` and stored in
relevance_calibration.json beside this module, with the held-out half's score.

On connected machines a cross-encoder (registry key `reranker`) re-scores the retrieved
passages against the question; an answer then also needs the reranker to judge its best
passage relevant (a logit threshold that --calibrate fits where the model can be loaded, else
the model's own boundary, 0), and passages are ordered by the reranker."""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CALIBRATION_FILE = Path(__file__).with_name("relevance_calibration.json")

# Subjects next to the notes that the notes do not cover, named as a student would. None
# names melanoma itself (the covered subject), and the list is kept general: a list written
# from the evaluation questions would only memorise them.
CONTRAST_TOPICS: tuple[str, ...] = (
    # other cancers
    "lung cancer", "breast cancer", "prostate cancer", "colorectal cancer", "colon cancer",
    "pancreatic cancer", "stomach cancer", "liver cancer", "kidney cancer", "bladder cancer",
    "ovarian cancer", "cervical cancer", "uterine cancer", "testicular cancer", "thyroid cancer",
    "oesophageal cancer", "head and neck cancer", "brain tumour", "glioblastoma", "leukaemia",
    "lymphoma", "multiple myeloma", "sarcoma", "bone cancer", "childhood cancer",
    # other skin conditions (including the keratinocyte skin cancers the notes only mention)
    "basal cell carcinoma", "squamous cell carcinoma of the skin", "actinic keratosis treatment",
    "acne", "eczema", "psoriasis", "rosacea", "warts", "fungal skin infection", "hives",
    "hair loss", "vitiligo", "cellulitis", "burns and scalds", "wound healing",
    # other organs and diseases
    "heart attack", "high blood pressure", "stroke", "diabetes", "asthma", "COPD",
    "pneumonia", "influenza", "COVID-19", "HIV", "tuberculosis", "malaria", "arthritis",
    "osteoporosis", "kidney disease", "liver disease", "Alzheimer's disease", "Parkinson's disease",
    "depression", "pregnancy", "obesity", "migraine", "epilepsy", "emergency medicine triage",
    "broken bones", "dental care", "eye disease", "glaucoma", "cataract",
    # animals
    "cancer in dogs", "cancer in cats", "tumours in horses", "veterinary medicine",
    "pet health", "animal disease",
)


@dataclass(frozen=True)
class Calibration:
    """A logistic model p(covered) = sigmoid(w . features + b) and its decision threshold."""

    embedder: str
    weights: tuple[float, ...]
    bias: float
    threshold: float
    features: tuple[str, ...] = ("best_passage", "best_contrast")
    lexical_weight: float = 0.0  # passage order = cosine + lexical_weight * shared-word share

    def probability(self, features: tuple[float, ...]) -> float:
        z = self.bias + sum(w * x for w, x in zip(self.weights, features, strict=True))
        return 1.0 / (1.0 + math.exp(-z))


@dataclass
class Relevance:
    covered: bool
    probability: float
    best_passage: float
    best_contrast: float
    contrast_topic: str
    method: str  # "topic check", "topic check + reranker", "similarity floor"
    reranker_score: float | None = None


_CONTRAST: dict[str, Any] = {}
_LOCK = threading.Lock()


def _contrast_vectors(embedder_key: str) -> Any:
    from medlab.retrieval.knowledge_store import embed
    from medlab.retrieval.vectorstore import model_fingerprint

    key = embedder_key + "|" + model_fingerprint(embedder_key)
    with _LOCK:
        if key not in _CONTRAST:
            _CONTRAST[key] = embed(list(CONTRAST_TOPICS), embedder_key=embedder_key)
        return _CONTRAST[key]


def embedder_identity(embedder_key: str) -> str:
    """What a calibration is valid for: the embedder's registry key and configured source
    (not its local path, which differs between machines)."""
    from medlab.core.registry import get_spec, resolve_source

    source = resolve_source(embedder_key)
    return f"{embedder_key}:{get_spec(embedder_key).default_source if source.is_default else source.location}"


def _calibration_data(path: Path) -> dict[str, Any]:
    """The parsed calibration file, read again only when it changes (it is consulted on every
    question; `--calibrate` rewrites it)."""
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return {}
    return _parse_calibration(str(path), mtime)


@functools.lru_cache(maxsize=4)
def _parse_calibration(path: str, mtime_ns: int) -> dict[str, Any]:  # noqa: ARG001 - mtime keys the cache
    return json.loads(Path(path).read_text())


def load_calibration(embedder_key: str, path: Path | None = None) -> Calibration | None:
    data = _calibration_data(path or CALIBRATION_FILE)
    entry = data.get("embedders", {}).get(embedder_identity(embedder_key))
    if not entry:
        return None
    return Calibration(embedder_identity(embedder_key), tuple(entry["weights"]), float(entry["bias"]),
                       float(entry["threshold"]), tuple(entry.get("features", ("best_passage", "best_contrast"))),
                       float(entry.get("lexical_weight", 0.0)))


def load_reranker_calibration(key: str, path: Path | None = None) -> float | None:
    """The relevance-logit threshold fitted for this reranker source, if any."""
    entry = _calibration_data(path or CALIBRATION_FILE).get("rerankers", {}).get(embedder_identity(key))
    return float(entry["relevant_logit"]) if entry else None


def features(qvec: Any, best_passage: float, embedder_key: str) -> tuple[tuple[float, float], str]:
    """(best passage similarity, best contrast-topic similarity) and that contrast topic."""
    import numpy as np

    scores = _contrast_vectors(embedder_key) @ qvec
    j = int(np.argmax(scores))
    return (float(best_passage), float(scores[j])), CONTRAST_TOPICS[j]


def judge(qvec: Any, best_passage: float, embedder_key: str, floor: float,
          calibration: Calibration | None = None) -> Relevance:
    """The offline relevance decision for one question vector."""
    feats, topic = features(qvec, best_passage, embedder_key)
    cal = calibration if calibration is not None else load_calibration(embedder_key)
    if cal is None:
        # No calibration for this embedder (a custom or tiny model): the similarity floor,
        # plus the plain rule that a contrast topic closer than every passage wins.
        covered = feats[0] >= floor and feats[0] > feats[1]
        return Relevance(covered, float(covered), feats[0], feats[1], topic, "similarity floor")
    p = cal.probability(feats)
    return Relevance(p >= cal.threshold, p, feats[0], feats[1], topic, "topic check")


# -- words the question and a passage share ------------------------------------------------
_SUFFIXES = ("ations", "ation", "ings", "ing", "ies", "ed", "es", "s")


def _stem(word: str) -> str:
    """Crude suffix stripping, enough to match staged/staging or risks/risk."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def content_terms(text: str) -> set[str]:
    """Stemmed words of 3+ characters that are not English stop words."""
    import re

    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    words = re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", text.lower())
    return {_stem(w) for w in words if len(w) >= 3 and w not in ENGLISH_STOP_WORDS}


def lexical_overlap(question_terms: set[str], text: str) -> float:
    """Share of the question's content terms that occur in `text`."""
    if not question_terms:
        return 0.0
    return len(question_terms & content_terms(text)) / len(question_terms)


# -- language ------------------------------------------------------------------------------
# Scripts the English embedder cannot read (Unicode blocks). Detection is by script only: a
# question in another Latin-script language (Spanish, German...) is not recognised as such.
_SCRIPTS = (
    ("Chinese/Japanese", ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF))),
    ("Korean", ((0xAC00, 0xD7AF), (0x1100, 0x11FF))),
    ("Cyrillic", ((0x0400, 0x04FF),)),
    ("Greek", ((0x0370, 0x03FF),)),
    ("Arabic", ((0x0600, 0x06FF),)),
    ("Hebrew", ((0x0590, 0x05FF),)),
    ("Devanagari", ((0x0900, 0x097F),)),
    ("Thai", ((0x0E00, 0x0E7F),)),
)


def non_latin_script(text: str, share: float = 0.3) -> str | None:
    """The name of the non-Latin script that makes up at least `share` of the letters, if any."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return None
    counts: dict[str, int] = {}
    for ch in letters:
        cp = ord(ch)
        for name, ranges in _SCRIPTS:
            if any(lo <= cp <= hi for lo, hi in ranges):
                counts[name] = counts.get(name, 0) + 1
                break
    if not counts:
        return None
    name, n = max(counts.items(), key=lambda kv: kv[1])
    return name if n / len(letters) >= share else None


# -- optional models: reranker (cross-encoder) ------------------------------------------------
_UNAVAILABLE: dict[str, str] = {}  # key|source -> why it could not be loaded (asked once per process)


def optional_model(key: str, progress: Any = None) -> Any:
    """The LoadedModel of an optional registry key, or None when it cannot be had here (asked
    once per process and source, so an offline machine does not retry on every question)."""
    from medlab.core.errors import ModelUnavailableError
    from medlab.core.loaders import get_model
    from medlab.core.registry import resolve_source

    try:
        memo = f"{key}|{resolve_source(key).location}"
    except ModelUnavailableError as exc:
        log.info("%s unavailable: %s", key, exc)
        return None
    if memo in _UNAVAILABLE:
        return None
    try:
        return get_model(key, progress)
    except ModelUnavailableError as exc:
        _UNAVAILABLE[memo] = str(exc)
        log.info("%s unavailable, continuing without it: %s", key, exc)
        return None


def unavailable_reason(key: str) -> str | None:
    from medlab.core.registry import resolve_source

    try:
        return _UNAVAILABLE.get(f"{key}|{resolve_source(key).location}")
    except Exception:  # noqa: BLE001 - a reason is informative only
        return None


def reset_unavailable() -> None:
    _UNAVAILABLE.clear()


def load_cross_encoder(spec: Any, source: Any, device: str, progress: Any) -> Any:
    """A sentence-transformers CrossEncoder (one relevance logit per question-passage pair)."""
    from medlab.core.load_errors import translate_load_errors
    from medlab.core.loaders import LoadedModel, check_local_dir

    if source.is_local:
        check_local_dir(source)
    with translate_load_errors(source):
        from sentence_transformers import CrossEncoder

        progress(0.3, f"Reading {spec.key} weights")
        kwargs: dict[str, Any] = {"device": device, "trust_remote_code": False}
        if source.revision and not source.is_local:
            kwargs["revision"] = source.revision
        model = CrossEncoder(source.location, **kwargs)
    model.eval()
    return LoadedModel(spec.key, model, device, source)


def rerank_scores(lm: Any, question: str, texts: list[str]) -> list[float]:
    """The cross-encoder's raw relevance logits (no sigmoid) for each text."""
    import torch

    if not texts:
        return []
    with torch.inference_mode():
        scores = lm.model.predict([(question, t) for t in texts], activation_fn=torch.nn.Identity(),
                                  convert_to_numpy=True, show_progress_bar=False)
    return [float(x) for x in scores]
