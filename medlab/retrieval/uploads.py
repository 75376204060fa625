"""PDFs educators add to the knowledge base: validated first, then kept under the data dir
(<MEDLAB_DATA_DIR>/knowledge_uploads, so they survive a restart) and ingested."""

from __future__ import annotations

import os
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
    from medlab.io.diskspace import disk_errors

    with disk_errors(load_settings().data_dir, f"adding {Path(name).name}"):
        return _add(src, name, progress)


def _add(src: Path, name: str, progress: Progress | None) -> tuple[str, IngestReport]:
    ensure_ingested(progress)  # the existing corpus first, so the report below is about this file
    from medlab.retrieval import doc_records as recs

    records = recs.read_all()
    digest = file_sha256(src)
    for doc, r in sorted(records.items()):  # the same bytes, uploaded here or on another replica
        if r.get("kind") == recs.UPLOAD and r.get("status") == recs.ACTIVE and r.get("sha256") == digest:
            return doc, _ingest_upload(doc, progress)
    target_dir = uploads_dir()
    target_dir.mkdir(parents=True, exist_ok=True)
    for existing in target_dir.glob("*.pdf"):
        if file_sha256(existing) == digest:  # the same bytes are already in this replica's folder
            doc = f"uploads/{existing.name}"
            return doc, _ingest_upload(doc, progress)
    target = target_dir / _safe_name(name)

    def taken(path: Path) -> bool:  # a file here, or another replica's document of that name
        r = records.get(f"uploads/{path.name}")
        return path.exists() or bool(r and r.get("status") == recs.ACTIVE and r.get("sha256") != digest)

    if taken(target):
        target = target.with_name(f"{target.stem}-{digest[:8]}.pdf")
    write_atomically(src, target)
    doc = f"uploads/{target.name}"
    return doc, _ingest_upload(doc, progress)


def write_atomically(src: Path, target: Path) -> None:
    """Copy under a temporary name, then rename: a crash or a full disk never leaves a
    half-written PDF that an ingest would read (the partial copy is removed)."""
    from medlab.io.diskspace import ensure_space

    ensure_space(target.parent, src.stat().st_size, f"adding {target.name}")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _ingest_upload(doc: str, progress: Progress | None) -> IngestReport:
    report = ingest(progress=progress, only={doc}, revive=True)  # an explicit upload overrides a removal
    # Stores of other embedders (the multilingual one) catch up at their next use.
    reset_ready()
    return report
