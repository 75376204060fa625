"""The knowledge base's vector store: embed chunks, keep one chroma collection per embedder
in line with the documents on disk (incremental ingest), and retrieve the closest passages.

Ingest is incremental by content hash: an unchanged corpus embeds nothing, a changed file is
re-embedded and its old chunks deleted, a deleted file leaves. A document counts as indexed
only when all its chunks are stored, so an interrupted ingest resumes cleanly."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlab.core.errors import InputError
from medlab.core.progress import Progress
from medlab.io.files import file_sha256
from medlab.retrieval.documents import (
    Chunk,
    chunk_document,
    citation,
    source_files,
    uploads_dir,
)

log = logging.getLogger(__name__)


EMBEDDER = "embedder"  # registry key of the default (English) embedder
# A knowledge base is small (thousands of chunks), so a wide HNSW beam costs little and keeps
# the approximate top-1 equal to the exact one (ef 100 missed 1 of 24: bench/results.md).
KNOWLEDGE_EF_SEARCH = 400

_INGEST_LOCK = threading.Lock()
_READY: set[str] = set()  # (store, embedder) identities ingested in this process


@dataclass
class Passage:
    doc: str
    title: str
    page: int
    section: str
    text: str
    score: float

    @property
    def citation(self) -> str:
        return citation(self.doc, self.title, self.page, self.section)


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    chunks_embedded: int = 0
    chunks_deleted: int = 0

    def summary(self) -> str:
        return (
            f"{len(self.added)} added, {len(self.updated)} updated, {len(self.removed)} removed, "
            f"{len(self.unchanged)} unchanged; {self.chunks_embedded} chunks embedded, "
            f"{self.chunks_deleted} deleted" + (f"; failed: {self.failed}" if self.failed else "")
        )


# -- embedding + store ----------------------------------------------------------------------
def embed(texts: list[str], progress: Progress | None = None, embedder_key: str = EMBEDDER) -> Any:
    """Unit-length float32 sentence embeddings (one row per text)."""
    import numpy as np
    import torch

    from medlab.core.loaders import use_model

    with use_model(embedder_key, progress) as loaded:  # a lease: not evicted while encoding
        model = loaded.model
        if not texts:
            return np.zeros((0, model.get_sentence_embedding_dimension()), dtype="float32")
        with torch.inference_mode():
            vecs = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                                show_progress_bar=False)
    return vecs.astype("float32")


def collection(embedder_key: str = EMBEDDER) -> Any:
    """The cosine collection holding the knowledge base embedded by `embedder_key`."""
    from medlab.retrieval.vectorstore import (
        collection_name,
        get_collection,
        model_fingerprint,
    )

    return get_collection(collection_name("knowledge", embedder_key, model_fingerprint(embedder_key)),
                          metadata={"medlab:kind": "knowledge"}, ef_search=KNOWLEDGE_EF_SEARCH)


def embed_text(c: Chunk) -> str:
    # Title and section give a chunk its topic even when its sentences do not name it.
    head = c.title + (f" — {c.section}" if c.section and c.section != c.title else "")
    return f"{head}: {c.text}"


def _indexed(col: Any) -> dict[str, dict[str, Any]]:
    """doc -> {"hashes": {hash: count}, "n": {hash: expected chunk count}}."""
    got = col.get(include=["metadatas"])
    out: dict[str, dict[str, Any]] = {}
    for meta in got["metadatas"] or []:
        d = out.setdefault(meta["doc"], {"hashes": {}, "n": {}})
        h = meta["doc_hash"]
        d["hashes"][h] = d["hashes"].get(h, 0) + 1
        d["n"][h] = int(meta.get("n_chunks", 0))
    return out


def chunk_ids(doc: str, doc_hash: str, n_chunks: int) -> list[str]:
    """One id per (document, version, chunk). The document's name is part of it, so two
    documents with the same bytes keep a row each (with content alone they overwrote each
    other and one was re-embedded at every ingest); the file hash is part of it, so a re-run
    after a crash overwrites its own rows and a new version never collides with the old."""
    import hashlib

    doc_part = hashlib.sha256(doc.encode("utf-8")).hexdigest()[:16]
    return [f"{doc_part}-{doc_hash[:24]}-{n}" for n in range(n_chunks)]


def ingest(
    knowledge_dir: Path | None = None,
    progress: Progress | None = None,
    only: set[str] | None = None,
    embedder_key: str = EMBEDDER,
) -> IngestReport:
    """Bring the collection in line with the documents on disk. Returns what changed."""
    from medlab.retrieval.vectorstore import upsert

    report = IngestReport()
    report_progress = progress or (lambda f, m: None)
    with _INGEST_LOCK:
        col = collection(embedder_key)
        files = source_files(knowledge_dir)
        indexed = _indexed(col)
        todo = []
        for doc, path in files.items():
            if only is not None and doc not in only:
                continue
            h = file_sha256(path)
            state = indexed.get(doc)
            if state and state["hashes"].get(h, 0) == state["n"].get(h, -1) and len(state["hashes"]) == 1:
                report.unchanged.append(doc)
                continue
            todo.append((doc, path, h, state is not None))
        for i, (doc, path, h, existed) in enumerate(todo):
            report_progress(i / max(1, len(todo)), f"Embedding {doc} ({i + 1}/{len(todo)})")
            try:
                chunks = chunk_document(doc, path)
            except InputError as exc:
                report.failed[doc] = str(exc)
                continue
            if not chunks:
                report.failed[doc] = "no text could be extracted"
                continue
            vecs = embed([embed_text(c) for c in chunks], progress, embedder_key)
            metas = [
                {"doc": c.doc, "title": c.title, "page": c.page, "section": c.section, "chunk": n,
                 "n_chunks": len(chunks), "doc_hash": h}
                for n, c in enumerate(chunks)
            ]
            upsert(col, chunk_ids(doc, h, len(chunks)), vecs, metas, [c.text for c in chunks])
            report.chunks_embedded += len(chunks)
            # Old versions of this document leave only after the new one is complete.
            stale = col.get(where={"$and": [{"doc": doc}, {"doc_hash": {"$ne": h}}]}, include=[])["ids"]
            if stale:
                col.delete(ids=stale)
                report.chunks_deleted += len(stale)
            (report.updated if existed else report.added).append(doc)
        if only is None:
            for doc in set(indexed) - set(files):
                gone = col.get(where={"doc": doc}, include=[])["ids"]
                if gone:
                    col.delete(ids=gone)
                    report.chunks_deleted += len(gone)
                report.removed.append(doc)
        report_progress(1.0, "Knowledge base ready")
    log.info("knowledge ingest (%s): %s", embedder_key, report.summary())
    return report


def ready_key(embedder_key: str = EMBEDDER) -> str:
    from medlab.retrieval.vectorstore import _client_key, model_fingerprint

    return "|".join(_client_key()) + "|" + embedder_key + "|" + model_fingerprint(embedder_key)


def ensure_ingested(progress: Progress | None = None, embedder_key: str = EMBEDDER) -> IngestReport | None:
    """Ingest once per process and store (lazily, at the assistant's first use)."""
    key = ready_key(embedder_key)
    if key in _READY:
        return None
    report = ingest(progress=progress, embedder_key=embedder_key)
    _READY.add(key)
    return report


def mark_ready(embedder_key: str = EMBEDDER) -> None:
    """Treat the store as ingested (benchmarks that ingest their own corpus)."""
    _READY.add(ready_key(embedder_key))


def reset_ready() -> None:
    _READY.clear()


def retrieve(question: str, k: int = 4, progress: Progress | None = None, qvec: Any = None,
             embedder_key: str = EMBEDDER) -> list[Passage]:
    """The k chunks closest to the question; `qvec` reuses an already computed question vector."""
    col = collection(embedder_key)
    q = embed([question], progress, embedder_key)[0] if qvec is None else qvec
    # no count() first: it scans the collection, and chroma returns fewer rows (or none) itself
    res = col.query(query_embeddings=[q.tolist()], n_results=max(int(k), 1),
                    include=["metadatas", "documents", "distances"])
    out = []
    for meta, text, dist in zip(res["metadatas"][0], res["documents"][0], res["distances"][0]):
        out.append(Passage(meta["doc"], meta.get("title", meta["doc"]), int(meta.get("page") or 0),
                           meta.get("section", "") or "", text, 1.0 - float(dist)))
    return out


def knowledge_summary() -> dict[str, Any]:
    """Documents on disk (no embedding, no model load)."""
    files = source_files()
    return {"documents": sorted(files), "uploads_dir": str(uploads_dir())}

