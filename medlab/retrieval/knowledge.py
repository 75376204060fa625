"""The grounded melanoma knowledge assistant: ingest documents into chromadb, answer only
from them, with citations.

Documents: knowledge/ in the project (Markdown, text, PDF) plus PDFs educators upload
(kept under <MEDLAB_DATA_DIR>/knowledge_uploads, so they survive a restart). Each document
is split into overlapping chunks that keep their document, page (PDF) or section
(Markdown), embedded with the `embedder` model (all-MiniLM-L6-v2) and stored in one cosine
collection per embedder. Ingest is incremental by content hash: an unchanged corpus embeds
nothing, a changed file is re-embedded and its old chunks deleted, a deleted file leaves.

Answers: the best passages with (document, page/section) citations and an extractive
answer made of the passages' sentences closest to the question. When the best passage is
below a similarity floor the assistant says the knowledge base does not cover the question;
it never answers from a model's own memory."""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medlab.core.config import PROJECT_ROOT, load_settings
from medlab.core.errors import CorruptFileError, InputError, MedlabError, UnsupportedFileError
from medlab.retrieval.vectorstore import file_sha256

log = logging.getLogger(__name__)

from medlab.core.progress import Progress  # noqa: E402

KNOWLEDGE_DIR = PROJECT_ROOT / "knowledge"
SUFFIXES = (".md", ".markdown", ".txt", ".pdf")
# Cosine similarity (all-MiniLM-L6-v2, normalised) below which the best passage counts as
# "not about this". Calibrated on the shipped corpus with the real model: 11 on-topic
# questions scored 0.34-0.74 on their best passage; 10 off-topic ones scored 0.03-0.23
# ("best pizza in Naples" 0.03, "how do I treat a broken leg" 0.23). See README.
SIMILARITY_FLOOR = 0.30
CHUNK_CHARS = 700
OVERLAP_CHARS = 150
MIN_PDF_TEXT_CHARS = 20
SKIP_SECTIONS = {"sources", "references", "source"}
# Optional generated answer: the registry key of a seq2seq model (e.g. "impression", FLAN-T5)
# that rewrites the retrieved passages into an answer. Off by default: the extractive answer
# cannot invent anything; a generator can, so its output is shown only when most of its words
# occur in the cited passages (GROUNDING_MIN).
GENERATOR_ENV = "MEDLAB_ASSISTANT_GENERATOR"
GROUNDING_MIN = 0.7
GENERATE_MAX_NEW_TOKENS = 96

_INGEST_LOCK = threading.Lock()
_READY: set[str] = set()  # collection identities ingested in this process


class NotCoveredError(InputError):
    """Kept for callers that prefer an exception to a declined Answer."""


class UploadRejectedError(InputError):
    """An uploaded document cannot be added (not a PDF, encrypted, no text, ...)."""


# -- data -----------------------------------------------------------------------------------
@dataclass
class Chunk:
    doc: str
    title: str
    text: str
    page: int = 0  # 1-based PDF page; 0 when the document has no pages
    section: str = ""

    @property
    def citation(self) -> str:
        where = f"p. {self.page}" if self.page else (f"§ {self.section}" if self.section else "")
        return f"{self.title} ({self.doc}{', ' + where if where else ''})"


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
        return Chunk(self.doc, self.title, self.text, self.page, self.section).citation


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


# -- sources --------------------------------------------------------------------------------
def uploads_dir() -> Path:
    return load_settings().data_dir / "knowledge_uploads"


def source_files(knowledge_dir: Path | None = None) -> dict[str, Path]:
    """doc id -> path for every document the assistant should know."""
    out: dict[str, Path] = {}
    roots = (("knowledge", knowledge_dir or KNOWLEDGE_DIR), ("uploads", uploads_dir()))
    for prefix, root in roots:
        if not root.is_dir():
            continue
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith("."):
                if p.name.lower() == "readme.md" and prefix == "knowledge":
                    continue
                out[f"{prefix}/{p.relative_to(root).as_posix()}"] = p
    return out


# -- text extraction and chunking -------------------------------------------------------------
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences, treating list items and lines of a table as sentences of their own."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n|\n(?=\s*(?:[-*+]|\d+[.)])\s)|\n(?=\|)", text):
        para = re.sub(r"\s+", " ", para).strip()
        para = re.sub(r"^(?:[-*+]|\d+[.)])\s+", "", para)
        if not para or set(para) <= set("|-: "):
            continue
        out.extend(s.strip() for s in _SENT_SPLIT.split(para) if s.strip())
    return out


def _pack(sentences: list[str], size: int = CHUNK_CHARS, overlap: int = OVERLAP_CHARS) -> list[str]:
    """Greedy packing of sentences into ~size-char chunks; each chunk repeats the last
    sentences of the previous one (up to `overlap` chars) so no fact is cut in half."""
    chunks: list[str] = []
    cur: list[str] = []
    cur_len = 0
    for s in sentences:
        if cur and cur_len + len(s) + 1 > size:
            chunks.append(" ".join(cur))
            tail: list[str] = []
            tail_len = 0
            for prev in reversed(cur):
                if tail_len + len(prev) > overlap:
                    break
                tail.insert(0, prev)
                tail_len += len(prev) + 1
            cur, cur_len = tail, tail_len
        cur.append(s)
        cur_len += len(s) + 1
    if cur:
        chunks.append(" ".join(cur))
    # Drop a trailing chunk that is only overlap already contained in the previous one.
    if len(chunks) > 1 and chunks[-1] in chunks[-2]:
        chunks.pop()
    return chunks


def _markdown_chunks(doc: str, text: str) -> list[Chunk]:
    title = Path(doc).stem.replace("-", " ").replace("_", " ")
    m = re.search(r"^#\s+(.+)$", text, re.M)
    if m:
        title = m.group(1).strip()
    chunks: list[Chunk] = []
    section = ""
    buf: list[str] = []

    def flush() -> None:
        body = "\n".join(buf).strip()
        if body and section.strip().lower() not in SKIP_SECTIONS:
            for piece in _pack(split_sentences(body)):
                chunks.append(Chunk(doc, title, piece, 0, section))

    for line in text.splitlines():
        h = re.match(r"^(#{1,6})\s+(.+)$", line)
        if h:
            flush()
            buf = []
            section = h.group(2).strip() if len(h.group(1)) > 1 else section
            continue
        buf.append(line)
    flush()
    return chunks


def _pdf_reader(path: Path) -> Any:
    """A pypdf reader, with every failure turned into a clear UploadRejectedError."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    with open(path, "rb") as f:
        head = f.read(1024)
    if b"%PDF-" not in head:
        raise UploadRejectedError(f"{path.name} is not a PDF (its contents do not start with %PDF-), whatever its name says.")
    try:
        reader = PdfReader(str(path))
        encrypted = reader.is_encrypted
    except PdfReadError as exc:
        raise UploadRejectedError(f"{path.name} is a damaged PDF that cannot be read ({exc}).") from None
    except Exception as exc:  # noqa: BLE001 - pypdf raises many kinds on broken files
        raise UploadRejectedError(f"{path.name} could not be read as a PDF ({type(exc).__name__}).") from None
    if encrypted:
        raise UploadRejectedError(
            f"{path.name} is encrypted (password-protected). Save an unprotected copy and upload that."
        )
    return reader


def pdf_pages(path: Path) -> list[str]:
    reader = _pdf_reader(path)
    pages = []
    for i, page in enumerate(reader.pages):
        try:
            pages.append(page.extract_text() or "")
        except Exception as exc:  # noqa: BLE001
            log.warning("page %d of %s: text extraction failed (%s)", i + 1, path.name, exc)
            pages.append("")
    return pages


def _pdf_title(path: Path) -> str:
    try:
        meta = _pdf_reader(path).metadata
        if meta and meta.title and meta.title.strip():
            return str(meta.title).strip()
    except Exception:  # noqa: BLE001
        pass
    return path.stem.replace("_", " ").replace("-", " ")


def chunk_document(doc: str, path: Path) -> list[Chunk]:
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        title = _pdf_title(path)
        chunks = []
        for n, text in enumerate(pdf_pages(path), 1):
            for piece in _pack(split_sentences(text)):  # chunks never cross pages: exact citations
                chunks.append(Chunk(doc, title, piece, n, ""))
        return chunks
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CorruptFileError(f"{path.name} is not UTF-8 text.") from None
    if suffix in (".md", ".markdown"):
        return _markdown_chunks(doc, text)
    title = path.stem.replace("_", " ").replace("-", " ")
    return [Chunk(doc, title, piece) for piece in _pack(split_sentences(text))]


# -- embedding + store ----------------------------------------------------------------------
def _embedder(progress: Progress | None = None) -> Any:
    from medlab.core.loaders import get_model

    return get_model("embedder", progress).model


def embed(texts: list[str], progress: Progress | None = None) -> Any:
    import numpy as np

    if not texts:
        return np.zeros((0, 384), dtype="float32")
    model = _embedder(progress)
    import torch

    with torch.inference_mode():
        vecs = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)
    return vecs.astype("float32")


KNOWLEDGE_EF_SEARCH = 400


def collection() -> Any:
    from medlab.retrieval.vectorstore import collection_name, get_collection, model_fingerprint

    # A knowledge base is small (thousands of chunks), so a wide HNSW beam costs little and
    # keeps the approximate top-1 equal to the exact one (ef 100 missed 1 of 24: bench/results.md).
    return get_collection(collection_name("knowledge", "embedder", model_fingerprint("embedder")),
                          metadata={"medlab:kind": "knowledge"}, ef_search=KNOWLEDGE_EF_SEARCH)


def _embed_text(c: Chunk) -> str:
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


def ingest(
    knowledge_dir: Path | None = None,
    progress: Progress | None = None,
    only: set[str] | None = None,
) -> IngestReport:
    """Bring the collection in line with the documents on disk. Returns what changed.

    Incremental by content hash; safe to interrupt: chunk ids are derived from the file hash,
    and a document counts as indexed only when all its chunks are stored."""
    from medlab.retrieval.vectorstore import upsert

    report = IngestReport()
    report_progress = progress or (lambda f, m: None)
    with _INGEST_LOCK:
        col = collection()
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
            vecs = embed([_embed_text(c) for c in chunks], progress)
            ids = [f"{h[:24]}-{n}" for n in range(len(chunks))]
            metas = [
                {"doc": c.doc, "title": c.title, "page": c.page, "section": c.section, "chunk": n,
                 "n_chunks": len(chunks), "doc_hash": h}
                for n, c in enumerate(chunks)
            ]
            upsert(col, ids, vecs, metas, [c.text for c in chunks])
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
    log.info("knowledge ingest: %s", report.summary())
    return report


def _ready_key() -> str:
    from medlab.retrieval.vectorstore import _client_key, model_fingerprint

    return "|".join(_client_key()) + "|" + model_fingerprint("embedder")


def ensure_ingested(progress: Progress | None = None) -> IngestReport | None:
    """Ingest once per process and store (lazily, at the assistant's first use)."""
    key = _ready_key()
    if key in _READY:
        return None
    report = ingest(progress=progress)
    _READY.add(key)
    return report


def reset_ready() -> None:
    _READY.clear()


# -- answering -------------------------------------------------------------------------------
def retrieve(question: str, k: int = 4, progress: Progress | None = None, qvec: Any = None) -> list[Passage]:
    """The k chunks closest to the question; `qvec` reuses an already computed question vector."""
    col = collection()
    q = embed([question], progress)[0] if qvec is None else qvec
    # no count() first: it scans the collection, and chroma returns fewer rows (or none) itself
    res = col.query(query_embeddings=[q.tolist()], n_results=max(int(k), 1),
                    include=["metadatas", "documents", "distances"])
    out = []
    for meta, text, dist in zip(res["metadatas"][0], res["documents"][0], res["distances"][0]):
        out.append(Passage(meta["doc"], meta.get("title", meta["doc"]), int(meta.get("page") or 0),
                           meta.get("section", "") or "", text, 1.0 - float(dist)))
    return out


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


# -- uploads ---------------------------------------------------------------------------------
def _safe_name(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or "document"
    return stem[:80] + ".pdf"


def validate_pdf(path: Path) -> int:
    """Check an uploaded PDF without changing anything; returns its page count."""
    if path.stat().st_size > load_settings().max_upload_bytes:
        raise UploadRejectedError(f"{path.name} is larger than the upload limit (MEDLAB_MAX_UPLOAD_MB).")
    pages = pdf_pages(path)
    text_chars = sum(len(t.strip()) for t in pages)
    if text_chars < MIN_PDF_TEXT_CHARS:
        raise UploadRejectedError(
            f"{path.name} has no extractable text (is it a scanned image?). Run OCR on it first, "
            "or upload a PDF whose text can be selected."
        )
    return len(pages)


def add_document(path: str | Path, original_name: str | None = None,
                 progress: Progress | None = None) -> tuple[str, IngestReport]:
    """Validate an uploaded PDF, keep it under the data dir and ingest it. Nothing changes
    when validation fails."""
    src = Path(path)
    name = original_name or src.name
    if not src.is_file():
        raise InputError("No file was uploaded.")
    if Path(name).suffix.lower() != ".pdf":
        raise UnsupportedFileError(f"{Path(name).name}: only PDF documents can be added here.")
    validate_pdf(src)
    ensure_ingested(progress)  # the existing corpus first, so the report below is about this file
    target_dir = uploads_dir()
    target_dir.mkdir(parents=True, exist_ok=True)
    digest = file_sha256(src)
    for existing in target_dir.glob("*.pdf"):
        if file_sha256(existing) == digest:  # the same bytes are already in the knowledge base
            doc = f"uploads/{existing.name}"
            return doc, ingest(progress=progress, only={doc})
    target = target_dir / _safe_name(name)
    if target.exists():
        target = target.with_name(f"{target.stem}-{digest[:8]}.pdf")
    tmp = target.with_suffix(".pdf.part")
    shutil.copyfile(src, tmp)
    tmp.replace(target)  # atomic: a crash never leaves a half-written PDF that ingest would read
    doc = f"uploads/{target.name}"
    return doc, ingest(progress=progress, only={doc})


def knowledge_summary() -> dict[str, Any]:
    """Documents on disk (no embedding, no model load)."""
    files = source_files()
    return {"documents": sorted(files), "uploads_dir": str(uploads_dir())}
