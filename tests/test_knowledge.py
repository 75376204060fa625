"""The melanoma knowledge assistant with the REAL offline all-MiniLM-L6-v2 embedder.

Every test gets its own data dir and a copy of (part of) the shipped knowledge/ folder, so
ingest counts are exact."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest

from medlab.core.config import PROJECT_ROOT
from medlab.core.errors import InputError
from medlab.retrieval import assistant, documents, uploads
from medlab.retrieval import knowledge_store as store

PLANTED = (
    "The Okavango mole protocol recommends photographing each changing mole beside a "
    "green calibration card every forty days."
)
FILLER = [
    "Melanoma education for students covers sun protection, shade, hats and sunscreen.",
    "Dermatology clinics record the history of each lesion and examine the whole skin.",
    "Histopathology confirms the diagnosis after an excisional biopsy of the lesion.",
    "Follow-up visits after treatment include examination of lymph nodes and scars.",
    "Teaching cases show benign nevi, seborrhoeic keratoses and haemangiomas.",
]


def make_pdf(path: Path, pages: list[str], *, encrypt: bool = False, text: bool = True) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for body in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 8, body)
        else:
            pdf.rect(20, 20, 100, 60, style="F")  # a drawing, no text at all
    if encrypt:
        pdf.set_encryption(owner_password="owner-secret", user_password="user-secret")
    pdf.output(str(path))
    return path


@pytest.fixture
def kb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private data dir + a knowledge dir holding three of the shipped notes."""
    from medlab.retrieval.vectorstore import reset_clients

    data = tmp_path / "data"
    kdir = tmp_path / "knowledge"
    kdir.mkdir()
    for name in ("02-abcde-rule.md", "03-risk-factors.md", "07-prevention-early-detection.md"):
        shutil.copy(PROJECT_ROOT / "knowledge" / name, kdir / name)
    monkeypatch.setenv("MEDLAB_DATA_DIR", str(data))
    monkeypatch.setattr(documents, "KNOWLEDGE_DIR", kdir)
    reset_clients()
    store.reset_ready()
    yield kdir
    reset_clients()
    store.reset_ready()


def _restart() -> None:
    """What a process restart drops: model cache, chroma clients, the 'ingested' memo."""
    from medlab.core.loaders import reset_cache
    from medlab.retrieval.vectorstore import reset_clients

    reset_cache()
    reset_clients()
    store.reset_ready()


def test_shipped_knowledge_notes_chunk_with_sections_and_cite_sources() -> None:
    files = documents.source_files(PROJECT_ROOT / "knowledge")
    notes = [d for d in files if d.startswith("knowledge/")]
    assert 6 <= len(notes) <= 10
    for doc in notes:
        text = files[doc].read_text()
        assert "## Sources" in text or "about-the-app" in doc, doc
        chunks = documents.chunk_document(doc, files[doc])
        assert chunks and all(c.section for c in chunks)
        assert not any(c.section.lower() == "sources" for c in chunks)  # citations list is not content


def test_planted_pdf_fact_comes_first_with_its_page_and_offtopic_is_declined(kb: Path, tmp_path: Path) -> None:
    pages = [FILLER[0], FILLER[1], FILLER[2] + " " + PLANTED, FILLER[3], FILLER[4]]
    pdf = make_pdf(tmp_path / "teaching notes.pdf", pages)
    doc, report = uploads.add_document(pdf)
    assert doc == "uploads/teaching_notes.pdf"
    assert report.added == [doc] and report.chunks_embedded == 5  # one chunk per page

    answer = assistant.ask("What does the Okavango mole protocol recommend?")
    assert answer.covered
    top = answer.passages[0]
    assert (top.doc, top.page) == (doc, 3)
    assert "green calibration card" in top.text
    assert "green calibration card" in answer.answer and "[1]" in answer.answer
    assert answer.to_dict()["citations"][0]["page"] == 3

    on_topic = assistant.ask("What does the E in the ABCDE rule stand for?")
    assert on_topic.covered and on_topic.passages[0].doc == "knowledge/02-abcde-rule.md"
    assert "Evolving" in on_topic.answer

    pizza = assistant.ask("Where can I get the best pizza in Naples?")
    assert not pizza.covered and pizza.passages == []
    assert pizza.best_score < assistant.SIMILARITY_FLOOR
    assert "does not cover" in pizza.answer


def test_ingest_is_incremental_by_content_hash(kb: Path) -> None:
    first = store.ingest()
    assert sorted(first.added) == sorted(f"knowledge/{p.name}" for p in kb.glob("*.md"))
    assert first.chunks_embedded > 0

    again = store.ingest()
    assert again.chunks_embedded == 0 and again.added == again.updated == again.removed == []
    assert len(again.unchanged) == 3

    col = store.collection()
    doc = "knowledge/03-risk-factors.md"
    old_ids = set(col.get(where={"doc": doc}, include=[])["ids"])
    path = kb / "03-risk-factors.md"
    path.write_text(path.read_text().replace(
        "## Moles", "## Occupation\nAirline pilots and cabin crew have a higher melanoma incidence "
        "than the general population in several cohort studies.\n\n## Moles"))
    edited = store.ingest()
    assert edited.updated == [doc] and edited.added == [] and len(edited.unchanged) == 2
    assert edited.chunks_deleted == len(old_ids)
    new = col.get(where={"doc": doc}, include=["metadatas", "documents"])
    assert not old_ids & set(new["ids"])  # old chunks are gone
    assert {m["doc_hash"] for m in new["metadatas"]} == {hashlib.sha256(path.read_bytes()).hexdigest()}
    assert any("Airline pilots" in d for d in new["documents"])
    hit = store.retrieve("Do airline pilots have more melanoma?", k=1)[0]
    assert hit.doc == doc and "Airline pilots" in hit.text

    (kb / "07-prevention-early-detection.md").unlink()
    removed = store.ingest()
    assert removed.removed == ["knowledge/07-prevention-early-detection.md"] and removed.chunks_embedded == 0
    assert col.get(where={"doc": "knowledge/07-prevention-early-detection.md"}, include=[])["ids"] == []


def test_uploaded_pdf_survives_a_restart(kb: Path, tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "upload.pdf", [FILLER[0], PLANTED])
    doc, _ = uploads.add_document(pdf)
    assert (documents.uploads_dir() / "upload.pdf").is_file()

    _restart()  # new chroma client, new collection object, new model instance
    answer = assistant.ask("What does the Okavango mole protocol recommend?")
    assert answer.covered and (answer.passages[0].doc, answer.passages[0].page) == (doc, 2)
    # The restart's lazy ingest found everything already embedded.
    assert store.ingest().chunks_embedded == 0


def _bad_upload(kind: str, tmp_path: Path) -> tuple[Path, str]:
    if kind == "not_pdf":
        bad = tmp_path / "notes.pdf"
        bad.write_text("This is plain text pretending to be a PDF.")
        return bad, "not a PDF"
    if kind == "encrypted":
        return make_pdf(tmp_path / "secret.pdf", [PLANTED], encrypt=True), "encrypted"
    if kind == "no_text":
        return make_pdf(tmp_path / "scan.pdf", ["", ""], text=False), "no extractable text"
    return make_pdf(tmp_path / "notes.docx", [PLANTED]), "only PDF"


def test_bad_uploads_are_rejected_and_change_nothing(kb: Path, tmp_path: Path) -> None:
    store.ingest()
    col = store.collection()
    before = sorted(col.get(include=[])["ids"])
    for kind in ("not_pdf", "encrypted", "no_text", "wrong_suffix"):
        bad, expect = _bad_upload(kind, tmp_path)
        with pytest.raises(InputError, match=expect):
            uploads.add_document(bad)
        assert sorted(col.get(include=[])["ids"]) == before, kind
        assert not documents.uploads_dir().exists() or list(documents.uploads_dir().iterdir()) == [], kind


def test_chroma_host_switches_to_a_server_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """MEDLAB_CHROMA_HOST/PORT select chromadb.HttpClient; an unreachable server is a clear error."""
    from medlab.retrieval import vectorstore
    from tests.conftest import free_port

    port = free_port()  # nothing listens there
    monkeypatch.setenv("MEDLAB_CHROMA_HOST", "127.0.0.1")
    monkeypatch.setenv("MEDLAB_CHROMA_PORT", str(port))
    vectorstore.reset_clients()
    assert vectorstore._client_key() == ("http", "127.0.0.1", str(port))
    with pytest.raises(vectorstore.VectorStoreError, match=f"chroma server 127.0.0.1:{port}.*MEDLAB_CHROMA_HOST"):
        vectorstore.get_client()
    vectorstore.reset_clients()


def test_optional_generator_is_shown_only_when_every_sentence_is_grounded(
        kb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MEDLAB_ASSISTANT_GENERATOR=assistant_generator runs a tiny chat model whose every logit is
    0, so greedy decoding repeats its token 0: "Evolving." (a word of the cited ABCDE passage:
    shown) or "Pizza." (in no passage: withheld). Off-topic questions never reach it."""
    from medlab.core.loaders import reset_cache
    from tests.tiny_assistant import tiny_instruct_lm

    question = "What does the E in the ABCDE rule stand for?"
    real_generate = assistant.generate
    monkeypatch.setenv(assistant.GENERATOR_ENV, "assistant_generator")
    monkeypatch.setattr(assistant, "GENERATE_MAX_NEW_TOKENS", 4)
    monkeypatch.setenv("MEDLAB_MODEL_ASSISTANT_GENERATOR", str(tiny_instruct_lm(tmp_path / "lm-ok", "Evolving.")))
    shown = assistant.ask(question)
    assert shown.covered and shown.generator == "assistant_generator" and "Evolving" in shown.answer
    assert re.findall(r"[a-z]+", shown.generated.lower()) == ["evolving"] * 4
    assert "**Generated answer** (assistant_generator" in shown.markdown()

    monkeypatch.setenv("MEDLAB_MODEL_ASSISTANT_GENERATOR", str(tiny_instruct_lm(tmp_path / "lm-bad", "Pizza.")))
    reset_cache()
    withheld = assistant.ask(question)
    assert withheld.generated is None and re.findall(r"[a-z]+", withheld.withheld.lower()) == ["pizza"] * 4
    assert "withheld" in withheld.generator_note and "only 0% of its words" in withheld.generator_note

    # One unsupported sentence is enough to withhold an answer (every sentence must be supported).
    calls: list[str] = []
    monkeypatch.setattr(assistant, "generate", lambda key, q, ps, progress=None: calls.append(q) or
                        "E is for Evolving: the mole is changing in size, shape or colour. "
                        "Pizza margherita was invented in Naples in 1889.")
    mixed = assistant.ask(question)
    assert mixed.generated is None and "Pizza" in mixed.withheld
    declined = assistant.ask("Where can I get the best pizza in Naples?")
    assert not declined.covered and declined.generator is None and len(calls) == 1

    monkeypatch.setenv(assistant.GENERATOR_ENV, "impression")  # a seq2seq summariser, not a chat model
    monkeypatch.setattr(assistant, "generate", real_generate)
    assert "not a chat model" in assistant.ask(question).generator_note


def test_identical_documents_both_stay_and_a_second_ingest_embeds_nothing(kb: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Two files with the same bytes are two documents: both keep their chunks, and ingesting
    again embeds nothing. Embedding is counted at the model itself (its encode method)."""
    from medlab.core.loaders import get_model

    shutil.copy(kb / "02-abcde-rule.md", kb / "02-abcde-rule-copy.md")
    model = get_model("embedder").model
    encoded: list[int] = []
    real_encode = model.encode
    monkeypatch.setattr(model, "encode", lambda texts, **kw: encoded.append(len(texts)) or real_encode(texts, **kw))

    first = store.ingest()
    assert len(first.added) == 4 and sum(encoded) == first.chunks_embedded > 0
    col = store.collection()
    per_doc = {}
    for meta in col.get(include=["metadatas"])["metadatas"]:
        per_doc.setdefault(meta["doc"], set()).add(meta["chunk"])
    original, copy = per_doc["knowledge/02-abcde-rule.md"], per_doc["knowledge/02-abcde-rule-copy.md"]
    assert original and original == copy  # the copy has every chunk too, under its own ids
    assert col.count() == sum(len(chunks) for chunks in per_doc.values())

    encoded.clear()
    second = store.ingest()
    assert encoded == [] and second.chunks_embedded == 0 and len(second.unchanged) == 4
