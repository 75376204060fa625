"""Section 5: the melanoma assistant's retrieval over a 10k-chunk knowledge base vs document
000's approach, implemented faithfully as the baseline.

Document 000 (LangChain + FAISS) answers a question like this, every time:
    docs = faiss_index.similarity_search(query, k=10)          # embed query, search all chunks
    documents = RecursiveCharacterTextSplitter().split_documents(docs)   # 4000-char pieces
    vector = FAISS.from_documents(documents, embeddings)       # RE-EMBED the 10 docs, new index
    retriever = vector.as_retriever()                          # k=4
    ... retrieval_chain.invoke({"input": query})               # embed the query again, search
The baseline does exactly these steps with the app's embedder (all-MiniLM-L6-v2, real
weights) and exact flat search in numpy (what FAISS IndexFlatL2 computes); the splitter is a
no-op here because every chunk is shorter than 4000 characters. The app: medlab.retrieval.knowledge_store
.retrieve(question, k=4) on its persistent chroma collection (the same stored vectors).

The corpus is synthetic but varied: 100 Markdown documents x 100 sections, each section one
chunk about one invented entity (drug, gene, trial, procedure, guideline) with numbers; the
questions ask for a fact of a random section, so the right top-1 is known. It is ingested
once through the app's own incremental ingest (persisted under bench/_work/assistant) and
reused by later runs: re-ingesting an unchanged corpus embeds nothing."""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import WORK, Row, SectionResult, check, loadavg, summary, timed

log = logging.getLogger(__name__)

SYL = ("ba", "cor", "da", "fen", "gal", "hex", "ir", "jun", "kor", "lim", "mav", "nor", "op", "pra", "quin",
       "ros", "sel", "tor", "ul", "vex", "wen", "xal", "yor", "zed", "tri", "mol", "den", "cap", "vir", "sto")
KINDS = {
    "drug": ("The drug {name} is a {cls} used for {cond}. Its usual dose is {n} mg {freq}, and its main "
             "adverse effect is {effect}. A trial in {year} enrolled {m} patients.",
             "What is the main adverse effect of {name}?"),
    "gene": ("The gene {name} encodes a {cls} that is mutated in about {n} percent of {cond}. Loss of "
             "{name} leads to {effect}. It was first described in {year} in a cohort of {m} tumours.",
             "Which condition is the gene {name} mutated in?"),
    "trial": ("The {name} trial compared {cls} with observation in {m} patients with {cond}. After {n} "
              "months the treated group showed {effect}. Results were published in {year}.",
              "What did the {name} trial show?"),
    "procedure": ("The {name} procedure is a {cls} performed for {cond}. It takes about {n} minutes; "
                  "the most common complication is {effect}. It was introduced in {year} and audited "
                  "in {m} cases.",
                  "How long does the {name} procedure take?"),
    "guideline": ("The {name} guideline recommends {cls} for {cond} every {n} months. It warns about "
                  "{effect}. The panel met in {year} and reviewed {m} studies.",
                  "What does the {name} guideline recommend?"),
}
CLASSES = ("kinase inhibitor", "monoclonal antibody", "topical cream", "surface receptor", "transcription factor",
           "targeted therapy", "wide local excision", "sentinel node biopsy", "dermoscopic follow-up",
           "total body photography", "adjuvant immunotherapy", "cryotherapy", "checkpoint blocker")
CONDITIONS = ("superficial spreading melanoma", "nodular melanoma", "lentigo maligna", "acral lentiginous melanoma",
              "uveal melanoma", "basal cell carcinoma", "actinic keratosis", "dysplastic naevi",
              "metastatic melanoma", "in-situ melanoma", "squamous cell carcinoma", "Merkel cell carcinoma")
EFFECTS = ("fatigue", "photosensitivity", "colitis", "a rash on the hands", "hair loss", "fever and chills",
           "scarring", "lymphoedema", "thyroid inflammation", "longer relapse-free survival",
           "no overall survival benefit", "pigment changes", "local recurrence", "nausea")
FREQS = ("once daily", "twice daily", "every two weeks", "every three weeks", "weekly")


def _name(rng: random.Random, used: set[str]) -> str:
    while True:
        name = "".join(rng.choice(SYL) for _ in range(rng.randint(3, 4))).capitalize()
        if name not in used:
            used.add(name)
            return name


def make_corpus(folder: Path, docs: int, sections: int, seed: int = 0) -> list[dict[str, Any]]:
    """Write the Markdown corpus; returns one record per section (= chunk) with its question."""
    rng = random.Random(seed)
    used: set[str] = set()
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for d in range(docs):
        title = f"Teaching notes volume {d + 1}: {rng.choice(CONDITIONS)}"
        lines = [f"# {title}", ""]
        for _ in range(sections):
            kind = rng.choice(sorted(KINDS))
            name = _name(rng, used)
            fields = {"name": name, "cls": rng.choice(CLASSES), "cond": rng.choice(CONDITIONS),
                      "n": rng.randint(2, 400), "freq": rng.choice(FREQS), "effect": rng.choice(EFFECTS),
                      "year": rng.randint(1975, 2024), "m": rng.randint(20, 9000)}
            text_t, question_t = KINDS[kind]
            section = f"{kind.capitalize()} {name}"
            lines += [f"## {section}", "", text_t.format(**fields), ""]
            records.append({"doc": f"knowledge/vol{d + 1:03d}.md", "section": section,
                            "question": question_t.format(**fields)})
        (folder / f"vol{d + 1:03d}.md").write_text("\n".join(lines), encoding="utf-8")
    return records


def prepare(root: Path, docs: int, sections: int) -> dict[str, Any]:
    """Corpus on disk + the app's collection in line with it (incremental ingest)."""
    from medlab.retrieval import knowledge_store

    corpus = root / "corpus"
    os.environ["MEDLAB_DATA_DIR"] = str(root / "data")
    meta_path = root / "corpus.json"
    wanted = {"docs": docs, "sections": sections, "version": 1}
    if meta_path.exists() and json.loads(meta_path.read_text()).get("shape") == wanted:
        records = json.loads(meta_path.read_text())["records"]
    else:
        import shutil

        shutil.rmtree(corpus, ignore_errors=True)
        records = make_corpus(corpus, docs, sections)
        meta_path.write_text(json.dumps({"shape": wanted, "records": records}))
    seconds, report = timed(lambda: knowledge_store.ingest(knowledge_dir=corpus))
    knowledge_store.mark_ready()  # ask() must not re-ingest the default corpus
    stamp_path = root / "ingest-stamp.json"
    stamp = json.loads(stamp_path.read_text()) if stamp_path.exists() else {}
    if report.chunks_embedded:
        stamp = {"chunks_embedded": report.chunks_embedded, "seconds": round(seconds, 1),
                 "chunks_per_s": round(report.chunks_embedded / seconds, 1), "when": time.strftime("%Y-%m-%d %H:%M")}
        stamp_path.write_text(json.dumps(stamp))
    return {"records": records, "ingest_seconds_this_run": round(seconds, 2),
            "chunks_embedded_this_run": report.chunks_embedded, "first_ingest": stamp,
            "count": knowledge_store.collection().count()}


class Doc000Baseline:
    """Document 000's per-question pipeline (see the module docstring)."""

    def __init__(self, n_docs_retrieve: int = 10, retriever_k: int = 4) -> None:
        from medlab.retrieval import knowledge_store

        col = knowledge_store.collection()
        got = col.get(include=["embeddings", "metadatas", "documents"])
        self.ids = got["ids"]
        self.metas = got["metadatas"]
        # page_content = the text the app embeds for the chunk (title + section + text)
        self.texts = [f"{m.get('title', '')} — {m.get('section', '')}: {t}" if m.get("section") else t
                      for m, t in zip(got["metadatas"], got["documents"])]
        self.index = np.asarray(got["embeddings"], dtype=np.float32)  # the global FAISS index
        self.n_docs = n_docs_retrieve
        self.k = retriever_k
        self.embed = knowledge_store.embed

    @staticmethod
    def _flat_l2(index: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
        d = ((index - q) ** 2).sum(axis=1)  # IndexFlatL2: exact squared L2
        k = min(k, len(d))
        top = np.argpartition(d, k - 1)[:k]
        return top[np.argsort(d[top])]

    def exact_top1(self, question: str) -> dict[str, Any]:
        """Top-1 of an exact search over the app's stored vectors (diagnostic, untimed)."""
        return self.metas[self._flat_l2(self.index, self.embed([question])[0], 1)[0]]

    def __call__(self, question: str) -> list[dict[str, Any]]:
        q = self.embed([question])[0]
        first = self._flat_l2(self.index, q, self.n_docs)  # similarity_search(query, k=10)
        docs = [self.texts[i] for i in first]  # (the 4000-char splitter leaves these whole)
        fresh = self.embed(docs)  # FAISS.from_documents: re-embed the retrieved docs
        q2 = self.embed([question])[0]  # the retriever embeds the question again
        second = self._flat_l2(fresh, q2, self.k)
        return [self.metas[first[j]] for j in second]


def run(quick: bool = False) -> SectionResult:
    from medlab.retrieval import assistant, knowledge_store

    res = SectionResult(5, "Assistant retrieval: app vs document 000's re-embed-per-question approach")
    started = time.perf_counter()
    docs, sections = (6, 25) if quick else (100, 100)
    n_questions = 8 if quick else 24
    root = WORK / ("assistant-quick" if quick else "assistant")
    prep = prepare(root, docs, sections)
    records = prep["records"]
    rng = random.Random(11)
    asked = rng.sample(records, n_questions)
    baseline = Doc000Baseline()
    knowledge_store.retrieve("warm up the embedder", k=4)

    def app_fn(question: str) -> Any:
        return knowledge_store.retrieve(question, k=4)

    runs: dict[str, list[float]] = {"app_retrieve": [], "doc000_baseline": [], "app_ask_full": []}
    agree = app_right = base_right = app_exact = base_exact = 0
    disagreements = []
    baseline(asked[0]["question"])
    assistant.ask(asked[0]["question"])
    for rec in asked:
        question = rec["question"]
        t_app, app_hits = timed(lambda q=question: app_fn(q))
        t_base, base_hits = timed(lambda q=question: baseline(q))
        t_ask, _ = timed(lambda q=question: assistant.ask(q))
        runs["app_retrieve"].append(t_app)
        runs["doc000_baseline"].append(t_base)
        runs["app_ask_full"].append(t_ask)
        a = (app_hits[0].doc, app_hits[0].section) if app_hits else None
        b = (base_hits[0]["doc"], base_hits[0].get("section")) if base_hits else None
        ex = baseline.exact_top1(question)
        e = (ex["doc"], ex.get("section"))
        agree += a == b
        app_exact += a == e
        base_exact += b == e
        app_right += a == (rec["doc"], rec["section"])
        base_right += b == (rec["doc"], rec["section"])
        if a != b:
            disagreements.append({"question": question, "app": a, "baseline": b, "exact": e,
                                  "planted": (rec["doc"], rec["section"])})
    stats = {k: summary(v) for k, v in runs.items()}
    speedup = stats["doc000_baseline"]["median_ms"] / stats["app_retrieve"]["median_ms"]
    speedup_p95 = stats["doc000_baseline"]["p95_ms"] / stats["app_retrieve"]["p95_ms"]
    res.load["end"] = loadavg()
    res.details = {"stats": stats, "chunks": prep["count"], "questions": n_questions, "top1_agreement": agree,
                   "app_top1_correct": app_right, "baseline_top1_correct": base_right,
                   "app_top1_equals_exact_search": app_exact, "baseline_top1_equals_exact_search": base_exact,
                   "disagreements": disagreements,
                   "ingest": {k: v for k, v in prep.items() if k != "records"}}
    res.tables.append({
        "title": f"Latency per question over {prep['count']:,} chunks, {n_questions} questions (ms)",
        "columns": ["pipeline", "median", "p95", "top-1 = planted section"],
        "rows": [["app: knowledge_store.retrieve(k=4) (embed question + chroma query)", stats["app_retrieve"]["median_ms"],
                  stats["app_retrieve"]["p95_ms"], f"{app_right}/{n_questions}"],
                 ["document 000: search k=10, re-embed 10 docs, new index, embed question again, k=4",
                  stats["doc000_baseline"]["median_ms"], stats["doc000_baseline"]["p95_ms"], f"{base_right}/{n_questions}"],
                 ["app: assistant.ask (retrieve + extractive answer)", stats["app_ask_full"]["median_ms"],
                  stats["app_ask_full"]["p95_ms"], "-"]],
    })
    equal = agree == n_questions
    res.rows.append(Row("retrieval speed-up vs document 000 (median)", round(speedup, 2), "x", ">= 5x",
                        check(speedup, ">=", 5.0) and equal,
                        f"top-1 agreement {agree}/{n_questions}; p95 speed-up {speedup_p95:.1f}x"))
    res.notes.append(
        f"Top-1 against an exact (brute-force) search over the same stored vectors: app {app_exact}/{n_questions}, "
        f"document 000 pipeline {base_exact}/{n_questions}. The app queries chroma's HNSW index (approximate, "
        "ef_search 400 for knowledge collections), the baseline searches exactly; any disagreement is listed in results.json.")
    first = prep["first_ingest"]
    if first and prep["chunks_embedded_this_run"] == 0:
        res.notes.append(f"Corpus ingest through medlab.retrieval.knowledge_store.ingest: {first.get('chunks_embedded')} chunks "
                         "in "
                         f"{first.get('seconds')} s ({first.get('chunks_per_s')} chunks/s, {first.get('when')}); "
                         f"this run's re-ingest of the unchanged corpus took {prep['ingest_seconds_this_run']} s and "
                         f"embedded {prep['chunks_embedded_this_run']} chunks.")
    ask_ratio = stats["app_ask_full"]["median_ms"] / stats["app_retrieve"]["median_ms"]
    res.notes.append(f"assistant.ask costs {ask_ratio:.1f}x knowledge_store.retrieve: the extractive answer embeds the "
                     "sentences of the top passages (memoised across questions, so repeated passages are free; "
                     "these 24 questions mostly hit different passages) and reuses the question's vector.")
    res.seconds = time.perf_counter() - started
    return res
