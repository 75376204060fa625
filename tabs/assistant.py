"""The grounded melanoma assistant, rendered inside the skin tab (its build() is called in
the skin tab's right column). UI only; the engine is medlab.retrieval.assistant
(answers), .knowledge_store (documents listing) and .uploads (PDF upload).

Answers come only from the knowledge base (knowledge/ + uploaded PDFs), with citations; a
question the documents do not cover is declined. The knowledge base is ingested at the
assistant's first use, not at app start."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gradio as gr

from tabs.common import (
    GpuDuration,
    Lane,
    megabytes,
    model_event,
    on_page_load,
    progress_callback,
    ui_errors,
)
from tabs.i18n import translate

log = logging.getLogger(__name__)

EXAMPLE_QUESTIONS = [
    "What does the ABCDE rule stand for?",
    "Is indoor tanning safe?",
    "How is Breslow thickness used in staging?",
    "Which drugs are used for BRAF-mutant melanoma?",
    "What is a blue-white veil in dermoscopy?",
    "Can the skin classifier in this app diagnose melanoma?",
    "What causes lung cancer?",  # declined: the notes are about melanoma
    "黑色素瘤的ABCDE规则是什么？",  # needs the multilingual embedder
]

# What the user is told first when the assistant declines (Answer.reason -> heading).
DECLINE_HEADINGS = {
    "not_covered": "🚫 **Declined — not covered by the notes.**",
    "needs_multilingual": "🌐 **Declined — non-English question: this needs the multilingual model.**",
}


def _passages_markdown(answer: Any) -> str:
    if not answer.passages:
        return ""
    parts = []
    for i, p in enumerate(answer.passages, 1):
        quote = p.text if len(p.text) <= 600 else p.text[:600].rsplit(" ", 1)[0] + " …"
        parts.append(translate("runtime.assistant_passage", i=i, citation=p.citation, score=f"{p.score:.2f}")
                     + f"\n\n> {quote}")
    return "\n\n".join(parts)


@ui_errors
def assistant_ask(question: str, progress: gr.Progress = gr.Progress()) -> tuple[str, str, dict[str, Any]]:
    """Answer a question about melanoma from the app's knowledge base only, citing each source passage.

    Retrieval-grounded: it answers only from the bundled teaching notes and uploaded PDFs (document, page or
    section cited) and says so when they do not cover the question instead of guessing.
    Educational use only: not a medical device; not for diagnosis or treatment.

    Args:
        question: a question in plain text, e.g. "What does the E in ABCDE mean?".

    Returns:
        answer: Markdown answer with numbered citations (or a note that the documents do not cover it)
        passages: Markdown of the retrieved passages, each with its citation and similarity score
        details: JSON with the answer, citations and retrieval scores
    """
    from medlab.retrieval.assistant import ask

    answer = ask(question, progress=progress_callback(progress))
    return _answer_markdown(answer), _passages_markdown(answer), answer.to_dict()


def _answer_markdown(answer: Any) -> str:
    heading = translate(DECLINE_HEADINGS.get(answer.reason, ""))  # en.json holds both headings
    return f"{heading}\n\n{answer.markdown()}" if heading else answer.markdown()


@ui_errors
def assistant_add_document(file: str | None, progress: gr.Progress = gr.Progress()) -> str:
    """Add a PDF to the melanoma knowledge base so the assistant can cite it (kept under the data dir).

    The PDF must contain selectable text (no scans) and no password; the same content added again changes nothing.
    Educational use only: not a medical device; not for diagnosis or treatment.

    Args:
        file: the PDF to add (over MCP: a URL), at most MEDLAB_MAX_UPLOAD_MB (50 MB by default).

    Returns:
        status: Markdown saying what was added (passages embedded) or that the document was already there
    """
    from medlab.core.errors import InputError
    from medlab.retrieval.uploads import add_document

    if not file:
        raise InputError("Choose a PDF to upload first.")
    doc, report = add_document(file, original_name=Path(file).name, progress=progress_callback(progress))
    if report.unchanged and not (report.added or report.updated):
        return translate("runtime.assistant_document_unchanged", doc=doc)
    return translate("runtime.assistant_document_added", doc=doc, n=report.chunks_embedded)


def _documents_markdown() -> str:
    try:
        from medlab.retrieval.knowledge_store import knowledge_summary

        docs = knowledge_summary()["documents"]
    except Exception as exc:  # noqa: BLE001 - a status line must never break the page
        return translate("runtime.assistant_listing_failed", kind=type(exc).__name__)
    uploads = [d for d in docs if d.startswith("uploads/")]
    return (translate("runtime.assistant_documents", n=len(docs), uploaded=len(uploads)) + "\n\n"
            + "\n".join(f"- `{d}`" for d in docs))


def build() -> None:
    """Self-contained: a question box with cited answers and an upload accordion."""
    gr.Markdown(
        "### 🔎 Melanoma knowledge assistant\n"
        "Answers **only** from the app's teaching notes and uploaded PDFs, with citations "
        "(document, page or section). If the documents do not cover your question (another disease, "
        "another organ, animals) it declines and says why instead of guessing; questions in other "
        "languages need the multilingual model. Educational use only."
    )
    question = gr.Textbox(label="Your question", placeholder="What does the E in ABCDE mean?", lines=2)
    ask_btn = gr.Button("Ask", variant="primary")
    gr.Examples([[q] for q in EXAMPLE_QUESTIONS], inputs=[question], label="Try", cache_examples=False)
    answer_md = gr.Markdown(label="Answer")
    with gr.Accordion("Retrieved passages", open=False):
        passages_md = gr.Markdown()
        details = gr.JSON(label="Details (scores, citations)")
    outputs = [answer_md, passages_md, details]
    model_event(ask_btn.click, assistant_ask, inputs=[question], outputs=outputs, api_name="assistant_ask",
                gpu_duration=20)
    model_event(question.submit, assistant_ask, inputs=[question], outputs=outputs, api_visibility="private",
                gpu_duration=20)

    with gr.Accordion("Knowledge base: documents and PDF upload (educators)", open=False):
        docs_md = gr.Markdown("Listing the documents…")
        on_page_load(docs_md, _documents_markdown, "")
        upload = gr.File(label="Add a PDF", file_types=[".pdf"], type="filepath")
        add_btn = gr.Button("Add to knowledge base")
        add_status = gr.Markdown()
        gr.Markdown("PDFs must contain selectable text (no scans) and no password. Uploaded files are kept "
                    "under the data dir (`knowledge_uploads/`) and are indexed incrementally.")
    model_event(add_btn.click, assistant_add_document, inputs=[upload], outputs=add_status,
                api_name="assistant_add_document", lane=Lane.BULK,
                gpu_duration=GpuDuration(base=30, per="file", seconds_each=20, count=megabytes)).then(
        _documents_markdown, outputs=docs_md, api_visibility="private")
