"""The knowledge base's vector store: embed chunks, keep one chroma collection per embedder
in line with the documents on disk (incremental ingest), and retrieve the closest passages.

Which documents exist is recorded in the store itself (medlab.retrieval.doc_records), not
read from a folder, so replicas with separate data dirs share one list. Ingest is incremental
by content hash: an unchanged corpus embeds nothing, a changed file is re-embedded and its old
chunks deleted. A document counts as indexed only when all its chunks are stored (its record
is written after them), so an interrupted ingest resumes cleanly; chunk ids are deterministic
in (document, content hash, chunk), so two replicas ingesting the same file write it once."""

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
    skipped: dict[str, str] = field(default_factory=dict)  # local files the store's records overrule
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
    from medlab.retrieval.vectorstore import store_errors

    with store_errors("reading the knowledge base's chunks"):
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


def _stored_chunks(doc: str, doc_hash: str, n_chunks: int) -> list[Chunk] | None:
    """The chunks of one version of `doc` as the default embedder's collection stores them
    (their text and citation fields), when complete: a replica without the file (another
    replica's upload) embeds them for another embedder from there."""
    from medlab.retrieval.vectorstore import store_errors

    with store_errors(f"reading the stored chunks of {doc}"):
        got = collection(EMBEDDER).get(where={"$and": [{"doc": doc}, {"doc_hash": doc_hash}]},
                                       include=["metadatas", "documents"])
    rows = sorted(zip(got["metadatas"] or [], got["documents"] or [], strict=False), key=lambda r: int(r[0]["chunk"]))
    if n_chunks <= 0 or [int(m["chunk"]) for m, _ in rows] != list(range(n_chunks)):
        return None
    return [Chunk(m["doc"], m.get("title", doc), t, int(m.get("page") or 0), m.get("section", "") or "")
            for m, t in rows]


def _complete(state: dict[str, Any] | None, h: str, alone: bool = True) -> bool:
    """Version `h` has all its chunks (and, when `alone`, no other version has any)."""
    return (bool(state) and state["hashes"].get(h, 0) == state["n"].get(h, -1)
            and (len(state["hashes"]) == 1 or not alone))


def _plan(files: dict[str, Path], records: dict[str, dict[str, Any]], only: set[str] | None,
          revive: bool, report: IngestReport) -> tuple[dict[str, tuple[str, Path | None]], list[str]]:
    """doc -> (content hash to store, local file or None), and the bundled documents this
    release no longer ships (to remove). The rules (README "Scale out"):
    - a tombstone wins over a local file, except for an explicit upload (`revive`);
    - an upload in the store is never replaced by a different local file of the same name;
    - a bundled document of a newer release is neither replaced nor removed by an older one;
    - an active record whose file this replica lacks stays (another replica's document)."""
    from medlab.retrieval import doc_records as recs

    want: dict[str, tuple[str, Path | None]] = {}
    for doc, path in files.items():
        if only is not None and doc not in only:
            continue
        h = file_sha256(path)
        r = records.get(doc)
        if r and r.get("status") == recs.REMOVED:
            if r.get("kind") == recs.UPLOAD:
                blocked = not revive  # only an explicit new upload brings an upload back
            else:  # a release that dropped a note does not stop a release that ships it again
                blocked = r.get("reason") == "explicit" or recs.newer_release(r.get("release", ""), recs.release())
            if blocked:
                report.skipped[doc] = f"removed from the knowledge base by {r.get('replica')}"
                continue
        if r and r.get("status") == recs.ACTIVE and r.get("sha256") != h:
            if r.get("kind") == recs.UPLOAD:
                report.skipped[doc] = f"the store holds another file under this name (from {r.get('replica')})"
                want[doc] = (r["sha256"], None)
                continue
            if recs.newer_release(r.get("release", ""), recs.release()):
                report.skipped[doc] = f"release {r.get('release')} holds a newer version"
                want[doc] = (r["sha256"], None)
                continue
        want[doc] = (h, path)
    gone: list[str] = []
    for doc, r in records.items():
        if doc in want or r.get("status") != recs.ACTIVE or (only is not None and doc not in only):
            continue
        if r.get("kind") == recs.BUNDLED and doc not in files and only is None \
                and not recs.newer_release(r.get("release", ""), recs.release()):
            gone.append(doc)  # this release no longer ships it
        else:
            want[doc] = (r["sha256"], None)
    return want, gone


def _migrate(indexed: dict[str, dict[str, Any]], records: dict[str, dict[str, Any]], rec_col: Any) -> None:
    """A store written before document records: one record per completely stored document."""
    from medlab.retrieval import doc_records as recs

    for doc, state in indexed.items():
        if doc in records or len(state["hashes"]) != 1:
            continue
        (h,) = state["hashes"]
        if _complete(state, h):
            records[doc] = recs.write(doc, h, state["n"][h], None, col=rec_col)
            log.info("knowledge store: record created for %s (a store from before document records)", doc)


def _delete_doc_chunks(col: Any, doc: str, keep_hash: str | None = None) -> int:
    from medlab.retrieval.vectorstore import store_errors

    where: dict[str, Any] = {"doc": doc} if keep_hash is None else {"$and": [{"doc": doc}, {"doc_hash": {"$ne": keep_hash}}]}
    with store_errors(f"removing old chunks of {doc}"):
        ids = col.get(where=where, include=[])["ids"]
        if ids:
            col.delete(ids=ids)
    return len(ids)


def ingest(
    knowledge_dir: Path | None = None,
    progress: Progress | None = None,
    only: set[str] | None = None,
    embedder_key: str = EMBEDDER,
    revive: bool = False,
) -> IngestReport:
    """Bring the collection in line with the store's document records and this replica's
    files (bundled knowledge/ + its own uploads). Returns what changed. Nothing is removed
    because this replica's folder lacks it: only remove_document() removes an upload, and a
    bundled document leaves when this (or a newer) release no longer ships it."""
    from medlab.core.config import load_settings
    from medlab.io.diskspace import disk_errors
    from medlab.retrieval import doc_records as recs
    from medlab.retrieval.vectorstore import upsert

    report = IngestReport()
    report_progress = progress or (lambda f, m: None)
    primary = embedder_key == EMBEDDER
    with _INGEST_LOCK, disk_errors(load_settings().data_dir, "adding documents to the knowledge base"):
        col = collection(embedder_key)
        rec_col = recs.records_collection()
        records = recs.read_all(rec_col)
        indexed = _indexed(col)
        if primary:
            _migrate(indexed, records, rec_col)
        files = source_files(knowledge_dir)
        want, gone = _plan(files, records, only, revive, report)
        todo = []
        for doc, (h, path) in want.items():
            r = records.get(doc)
            # Another replica's document may be mid-update by its uploader: its complete version
            # counts, and the other version's chunks are the uploader's to finish or remove.
            if _complete(indexed.get(doc), h, alone=path is not None):
                if primary and (not r or r.get("sha256") != h or r.get("status") != recs.ACTIVE):
                    records[doc] = recs.write(doc, h, indexed[doc]["n"][h], r, col=rec_col)
                if doc not in report.skipped:
                    report.unchanged.append(doc)
                continue
            todo.append((doc, path, h, doc in indexed))
        for i, (doc, path, h, existed) in enumerate(todo):
            report_progress(i / max(1, len(todo)), f"Embedding {doc} ({i + 1}/{len(todo)})")
            try:
                if path is not None:
                    chunks = chunk_document(doc, path)
                else:
                    r = records.get(doc) or {}
                    chunks = _stored_chunks(doc, h, int(r.get("n_chunks") or 0)) if not primary else None
                    if chunks is None:
                        report.failed[doc] = "incomplete in the store, and its file is on another replica"
                        continue
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
            if primary:
                now = recs.read(doc, rec_col)
                planned = records.get(doc) or {}
                if now and now.get("status") == recs.REMOVED and now.get("version") != planned.get("version"):
                    # removed by another replica while this one embedded it: the removal stands
                    report.chunks_deleted += _delete_doc_chunks(col, doc)
                    report.skipped[doc] = f"removed from the knowledge base by {now.get('replica')}"
                    continue
                records[doc] = recs.write(doc, h, len(chunks), now, col=rec_col)
            # Old versions of this document leave only after the new one is complete.
            report.chunks_deleted += _delete_doc_chunks(col, doc, keep_hash=h)
            (report.updated if existed else report.added).append(doc)
        for doc in gone:
            report.chunks_deleted += _remove(doc, records.get(doc), rec_col, reason="release")
            report.removed.append(doc)
        report_progress(1.0, "Knowledge base ready")
    log.info("knowledge ingest (%s): %s", embedder_key, report.summary())
    return report


def _knowledge_collections() -> list[Any]:
    """Every knowledge chunk collection in the store (one per embedder and model version)."""
    from medlab.retrieval.vectorstore import get_client, store_errors

    client = get_client()
    with store_errors("listing the knowledge collections"):
        cols = client.list_collections()
        return [c for c in cols if (c.metadata or {}).get("medlab:kind") == "knowledge"]


def _remove(doc: str, record: dict[str, Any] | None, rec_col: Any, reason: str) -> int:
    """Tombstone first (so no replica re-adds it), then the chunks in every collection."""
    from medlab.retrieval import doc_records as recs

    recs.write(doc, (record or {}).get("sha256", ""), 0, record, status=recs.REMOVED, col=rec_col, reason=reason)
    return sum(_delete_doc_chunks(c, doc) for c in _knowledge_collections())


def remove_document(doc: str) -> int:
    """Remove `doc` from the knowledge base for every replica (its chunks in every embedder's
    collection, a tombstone record, this replica's copy of an uploaded file). Returns the
    number of chunks deleted. Only an explicit new upload of it brings it back."""
    from medlab.retrieval import doc_records as recs

    with _INGEST_LOCK:
        rec_col = recs.records_collection()
        record = recs.read(doc, rec_col)
        if record is None or record.get("status") != recs.ACTIVE:
            raise InputError(f"{doc} is not in the knowledge base.")
        deleted = _remove(doc, record, rec_col, reason="explicit")
        if doc.startswith("uploads/"):
            (uploads_dir() / doc.removeprefix("uploads/")).unlink(missing_ok=True)
    log.info("knowledge store: %s removed (%d chunks)", doc, deleted)
    return deleted


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
    from medlab.retrieval.vectorstore import store_errors

    with store_errors("searching the knowledge base"):
        res = col.query(query_embeddings=[q.tolist()], n_results=max(int(k), 1),
                        include=["metadatas", "documents", "distances"])
    out = []
    for meta, text, dist in zip(res["metadatas"][0], res["documents"][0], res["distances"][0]):
        out.append(Passage(meta["doc"], meta.get("title", meta["doc"]), int(meta.get("page") or 0),
                           meta.get("section", "") or "", text, 1.0 - float(dist)))
    return out


def knowledge_summary() -> dict[str, Any]:
    """The knowledge base's documents as the store's records list them (every replica sees
    the same list), plus this replica's files not ingested yet. No embedding, no model load."""
    from medlab.retrieval import doc_records as recs

    records = recs.read_all()
    active = {d for d, r in records.items() if r.get("status") == recs.ACTIVE}
    pending = {d for d in source_files() if d not in records}
    return {"documents": sorted(active | pending), "pending": sorted(pending), "uploads_dir": str(uploads_dir())}
