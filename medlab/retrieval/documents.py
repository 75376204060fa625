"""The assistant's documents: where they are, and how each is read and cut into chunks.

Documents: knowledge/ in the project (Markdown, text, PDF) plus PDFs educators upload (kept
under <MEDLAB_DATA_DIR>/knowledge_uploads, so they survive a restart). Each document is split
into overlapping chunks that keep their document, page (PDF) or section (Markdown), so an
answer can cite exactly where a sentence came from."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlab.core.config import PROJECT_ROOT, load_settings
from medlab.core.errors import CorruptFileError, InputError

log = logging.getLogger(__name__)

KNOWLEDGE_DIR = PROJECT_ROOT / "knowledge"
SUFFIXES = (".md", ".markdown", ".txt", ".pdf")
CHUNK_CHARS = 700
OVERLAP_CHARS = 150
SKIP_SECTIONS = {"sources", "references", "source"}
SKIP_DIRS = {"eval"}  # knowledge/eval holds the assistant's evaluation set, not teaching notes


class UploadRejectedError(InputError):
    """An uploaded document cannot be added (not a PDF, encrypted, no text, ...)."""


@dataclass
class Chunk:
    doc: str
    title: str
    text: str
    page: int = 0  # 1-based PDF page; 0 when the document has no pages
    section: str = ""

    @property
    def citation(self) -> str:
        return citation(self.doc, self.title, self.page, self.section)


def citation(doc: str, title: str, page: int, section: str) -> str:
    where = f"p. {page}" if page else (f"§ {section}" if section else "")
    return f"{title} ({doc}{', ' + where if where else ''})"


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
            if not p.is_file() or p.suffix.lower() not in SUFFIXES or p.name.startswith("."):
                continue
            rel = p.relative_to(root)
            if prefix == "knowledge" and (p.name.lower() == "readme.md" or rel.parts[0] in SKIP_DIRS):
                continue
            out[f"{prefix}/{rel.as_posix()}"] = p
    return out


# -- sentences and chunks ---------------------------------------------------------------------
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


def pack(sentences: list[str], size: int = CHUNK_CHARS, overlap: int = OVERLAP_CHARS) -> list[str]:
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
            for piece in pack(split_sentences(body)):
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


# -- PDF -------------------------------------------------------------------------------------
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
    except Exception:  # noqa: BLE001 - a title is cosmetic; the file name will do
        pass
    return path.stem.replace("_", " ").replace("-", " ")


def chunk_document(doc: str, path: Path) -> list[Chunk]:
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        title = _pdf_title(path)
        chunks = []
        for n, text in enumerate(pdf_pages(path), 1):
            for piece in pack(split_sentences(text)):  # chunks never cross pages: exact citations
                chunks.append(Chunk(doc, title, piece, n, ""))
        return chunks
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CorruptFileError(f"{path.name} is not UTF-8 text.") from None
    if suffix in (".md", ".markdown"):
        return _markdown_chunks(doc, text)
    title = path.stem.replace("_", " ").replace("-", " ")
    return [Chunk(doc, title, piece) for piece in pack(split_sentences(text))]
