"""PDFs educators add to the knowledge base: validated first, then kept under the data dir
(<MEDLAB_DATA_DIR>/knowledge_uploads, so they survive a restart) and ingested."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from medlab.core.config import load_settings
from medlab.core.errors import InputError, UnsupportedFileError
from medlab.io.files import file_sha256
from medlab.retrieval.documents import UploadRejectedError, pdf_pages, uploads_dir
from medlab.retrieval.knowledge_store import (
    IngestReport,
    Progress,
    ensure_ingested,
    ingest,
    reset_ready,
)

MIN_PDF_TEXT_CHARS = 20


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
            return doc, _ingest_upload(doc, progress)
    target = target_dir / _safe_name(name)
    if target.exists():
        target = target.with_name(f"{target.stem}-{digest[:8]}.pdf")
    tmp = target.with_suffix(".pdf.part")
    shutil.copyfile(src, tmp)
    tmp.replace(target)  # atomic: a crash never leaves a half-written PDF that ingest would read
    doc = f"uploads/{target.name}"
    return doc, _ingest_upload(doc, progress)


def _ingest_upload(doc: str, progress: Progress | None) -> IngestReport:
    report = ingest(progress=progress, only={doc})
    # Stores of other embedders (the multilingual one) catch up at their next use.
    reset_ready()
    return report
