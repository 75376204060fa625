"""Pathology tab (document 004): PLIP text->image and image->image search over a chromadb
image index, and zero-shot classification with PLIP beside a general CLIP. UI only; the
engine is medlab.retrieval (encoders, zero_shot, image_index, image_search, default_index)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gradio as gr

from medlab.retrieval.encoders import DEFAULT_MODEL, MODEL_NAMES, MODELS, model_choices
from medlab.retrieval.image_index import EXAMPLES_DIR
from medlab.retrieval.zero_shot import DEFAULT_LABELS, DEFAULT_TEMPLATE
from tabs import deep_links
from tabs.common import (
    GpuDuration,
    Lane,
    TolerantImage,
    availability_banner,
    disclaimer,
    files_in_upload,
    model_card,
    model_event,
    on_page_load,
    progress_callback,
    ui_errors,
)
from tabs.i18n import translate
from tabs.stress import stress_panel

log = logging.getLogger(__name__)

TITLE = "Pathology search"
TAB_ID = "pathology"
DEFAULT_LABELS_TEXT = ", ".join(DEFAULT_LABELS)
MODEL_CHOICES = model_choices()

INTRO = """
### Search H&E tiles with words, find similar tiles, and classify a tile zero-shot
**PLIP** is CLIP fine-tuned on ~208k pathology image-text pairs from medical Twitter
(document 004). Both models map images and text into one space; similarity is the cosine of
the two embeddings. **Zero-shot**: every label becomes a sentence through the template, and
the probabilities are the softmax of the model's own `logit_scale` × cosine similarity — the
same head CLIP was trained with. Compare PLIP with a **general CLIP** on the same tile: document
004 reports PLIP ahead on Kather colon tissue (9 classes, the default labels here). Probabilities
always sum to 1 over the labels you give, even when none of them fits.
"""


def _model_name(key: str) -> str:
    return translate(MODEL_NAMES.get(key, key))  # the Radio choices' names, so en.json holds them


def _gallery(hits: list[Any]) -> list[tuple[Any, str]]:
    """Stored JPEG thumbnails by path (Gradio copies the file, cheaper than re-encoding a PIL
    image per hit: bench/README.md); a grey tile when one went missing."""
    from pathlib import Path

    from medlab.retrieval.image_search import load_thumbnail

    return [(h.thumb if h.thumb and Path(h.thumb).is_file() else load_thumbnail(h), h.title) for h in hits]


def _status(hits: list[Any], what: str, key: str) -> str:
    if not hits:
        return translate("runtime.pathology_no_results", what=what)
    return translate("runtime.pathology_matches", n=len(hits), what=what, model=_model_name(key))


@ui_errors
def pathology_search(query: str, k: int = 8, model: str = DEFAULT_MODEL,
                     progress: gr.Progress = gr.Progress()) -> tuple[list[tuple[Any, str]], list[str], str]:
    """Search the indexed histopathology images with a text description; returns the k most similar tiles.

    Similarity is the cosine between a text and an image embedding of PLIP or general CLIP; it is not a diagnosis.
    Educational use only: not a medical device; not for diagnosis or treatment.

    Args:
        query: a description of the tissue, e.g. "tumor epithelium with irregular glands".
        k: number of results, 1 to 32; default 8.
        model: embedding model: "plip" (default, pathology-trained) or "clip_baseline" (general CLIP).

    Returns:
        gallery: the best-matching images with similarity and caption
        ids: the ids of those images, best first
        status: Markdown line saying how many matches were found and with which model
    """
    from medlab.retrieval.image_search import search_text

    hits = search_text(query, k=int(k), key=model, progress=progress_callback(progress))
    return _gallery(hits), [h.id for h in hits], _status(hits, f'"{query.strip()}"', model)


@ui_errors
def pathology_similar(image: str | None, k: int = 8, model: str = DEFAULT_MODEL,
                      progress: gr.Progress = gr.Progress()) -> tuple[list[tuple[Any, str]], list[str], str]:
    """Find the indexed histopathology images most similar to an uploaded tile ("more like this").

    An image that is itself in the index comes back first. Similarity is not a diagnosis.
    Educational use only: not a medical device; not for diagnosis or treatment.

    Args:
        image: a tile, PNG, JPEG or TIFF (over MCP: a URL).
        k: number of results, 1 to 32; default 8.
        model: embedding model: "plip" (default, pathology-trained) or "clip_baseline" (general CLIP).

    Returns:
        gallery: the most similar images with similarity and caption
        ids: the ids of those images, best first
        status: Markdown line saying how many matches were found and with which model
    """
    from medlab.core.errors import InputError
    from medlab.retrieval.image_search import search_image

    if not image:
        raise InputError("Upload a tile to search with.")
    hits = search_image(image, k=int(k), key=model, progress=progress_callback(progress))
    return _gallery(hits), [h.id for h in hits], _status(hits, translate("runtime.pathology_what_uploaded"), model)


@ui_errors
def more_like_this(selected: str | None, k: int = 8, model: str = DEFAULT_MODEL) -> tuple[list[tuple[Any, str]], list[str], str]:
    from medlab.core.errors import InputError
    from medlab.retrieval.image_search import search_image

    if not selected:
        raise InputError("Click a result in the gallery first, then 'More like this'.")
    hits = search_image(item_id=selected, k=int(k), key=model)
    return _gallery(hits), [h.id for h in hits], _status(hits, translate("runtime.pathology_what_selected"), model)


def _select(ids: list[str] | None, evt: gr.SelectData) -> tuple[str | None, str]:
    if not ids or evt.index is None or not 0 <= int(evt.index) < len(ids):
        return None, ""
    return ids[int(evt.index)], translate("runtime.pathology_selected", n=int(evt.index) + 1)


def _label(result: dict[str, Any]) -> dict[str, float] | None:
    return result["probs"] if result and result.get("probs") else None


@ui_errors
def pathology_zero_shot(
    image: str | None,
    labels: str = DEFAULT_LABELS_TEXT,
    template: str = DEFAULT_TEMPLATE,
    progress: gr.Progress = gr.Progress(),
) -> tuple[dict[str, float] | None, dict[str, float] | None, str]:
    """Zero-shot classification of one histopathology tile over the given labels, PLIP beside general CLIP.

    Probabilities are relative to the labels given (they always sum to 1); they are not a diagnosis.
    Educational use only: not a medical device; not for diagnosis or treatment.

    Args:
        image: an H&E tile, PNG or JPEG (over MCP: a URL).
        labels: comma-separated labels; default: the 9 Kather colon tissue classes (NCT-CRC-HE).
        template: prompt for each label, {label} replaced by it; default "An H&E image of {label}.".

    Returns:
        plip: label probabilities from PLIP (null if it could not run)
        clip: label probabilities from general CLIP (null if it could not run)
        notes: Markdown with each model's top label, or why it could not run
    """
    from medlab.retrieval.zero_shot import zero_shot

    out = zero_shot(image, labels, template, progress=progress_callback(progress))
    notes = []
    for key in MODELS:
        res = out[key]
        if res["probs"] is None:
            notes.append(translate("runtime.pathology_zero_shot_failed", model=_model_name(key), error=res["error"]))
        else:
            top = max(res["probs"], key=res["probs"].get)
            notes.append(translate("runtime.pathology_zero_shot_top", model=_model_name(key), label=top,
                                   p=f"{res['probs'][top]:.1%}"))
    notes.append(translate("runtime.pathology_zero_shot_note"))
    return _label(out.get(MODELS[0])), _label(out.get(MODELS[1])), "\n\n".join(notes)


@ui_errors
def pathology_index(
    zip_file: str | None,
    folder: str = "",
    models: list[str] | None = None,
    progress: gr.Progress = gr.Progress(),
) -> str:
    """Add images to the searchable pathology index from a .zip (or an allowed server folder).

    Images are identified by content (SHA-256), so adding one again adds nothing; unsafe archives are refused.
    Educational use only: not a medical device; not for diagnosis or treatment.

    Args:
        zip_file: a .zip of PNG/JPEG/TIFF tiles, optional file,label,caption CSV inside (over MCP: a URL).
        folder: used when no zip is given: a folder inside the data dir, assets/pathology or MEDLAB_INDEX_ROOTS.
        models: indexes to add to, any of "plip" and "clip_baseline"; default ["plip"].

    Returns:
        report: Markdown summary per model: images added, already indexed, skipped (with why), total
    """
    from medlab.core.errors import InputError
    from medlab.retrieval.image_index import check_index_root, index_folder, index_zip

    keys = [m for m in (models or [DEFAULT_MODEL]) if m in MODELS] or [DEFAULT_MODEL]
    report = progress_callback(progress)
    if not zip_file and not (folder or "").strip():
        raise InputError("Upload a .zip of images or give a folder on the server.")
    lines = []
    for n, key in enumerate(keys):
        def sub(fraction: float, message: str, n: int = n, key: str = key) -> None:
            report((n + fraction) / len(keys), f"[{_model_name(key)}] {message}")

        if zip_file:
            result = index_zip(zip_file, key=key, name=Path(zip_file).name, progress=sub)
        else:
            result = index_folder(check_index_root(folder.strip()), key=key, progress=sub)
        lines.append("- " + result.summary())
    return translate("runtime.pathology_index_updated") + "\n" + "\n".join(lines)


@ui_errors
def index_examples(models: list[str] | None = None, progress: gr.Progress = gr.Progress()) -> str:
    from medlab.retrieval.image_index import index_examples as engine_index

    keys = [m for m in (models or [DEFAULT_MODEL]) if m in MODELS] or [DEFAULT_MODEL]
    return translate("runtime.pathology_examples_indexed") + "\n" + "\n".join(
        "- " + engine_index(key, progress=progress_callback(progress)).summary() for key in keys
    )


def index_status() -> str:
    """Size of each model's index (no model load; chromadb only)."""
    try:
        from medlab.retrieval.image_index import index_info

        lines = []
        for key in MODELS:
            info = index_info(key)
            if info["error"]:
                lines.append(translate("runtime.pathology_index_model_unavailable", model=_model_name(key), error=info["error"]))
            else:
                lines.append(translate("runtime.pathology_index_model_count", model=_model_name(key), count=info["count"],
                                       collection=info["collection"]))
        text = translate("runtime.pathology_index_heading") + "\n" + "\n".join(lines)
        if index_info(DEFAULT_MODEL)["count"] == 0:
            # en.json holds EMPTY_INDEX_HELP word for word (tests/test_i18n.py checks it)
            text += "\n\n" + translate("runtime.pathology_empty_index", model=_model_name(DEFAULT_MODEL))
        return text
    except Exception as exc:  # noqa: BLE001 - a status line must never break the page
        log.warning("index status unavailable: %s", exc)
        return translate("runtime.pathology_index_status_failed", kind=type(exc).__name__, error=exc)


def default_index_text() -> str:
    """The default index's build line (n of N, rate, time left) as Markdown, with a bar."""
    from medlab.retrieval.default_index import status as build_status

    st = build_status()
    # the builder's line is engine text (English); other languages frame it with a translated heading
    text = translate("runtime.default_index_line", line=st.line())
    if st.building and st.total:
        filled = int(20 * min(1.0, st.done / st.total))
        text = (f"`[{'#' * filled}{'.' * (20 - filled)}]` " + text + " "
                + translate("runtime.default_index_search_works"))
    elif st.state == "error":
        text = "⚠️ " + text
    return text


def poll_default_index() -> tuple[str, str, Any]:
    """gr.Timer tick: refresh the build line and the index size; stop ticking once it ends."""
    from medlab.retrieval.default_index import status as build_status

    st = build_status()
    return default_index_text(), index_status(), gr.Timer(active=st.building)


def _example_tiles() -> list[str]:
    return sorted(str(p) for p in EXAMPLES_DIR.glob("*.jpg"))


def build() -> None:
    disclaimer()
    availability_banner(*MODELS)
    gr.Markdown(INTRO)
    # Filled on each page load, not at build time: opening chromadb would slow the start-up.
    status = gr.Markdown("**Image index**: checking…")
    on_page_load(status, index_status, "**Image index**: status unavailable.")
    # The default tile set builds in the background (medlab.retrieval.default_index): poll it.
    build_line = gr.Markdown("Default pathology index: checking…")
    on_page_load(build_line, default_index_text, "Default pathology index: status unavailable.")
    build_timer = gr.Timer(2.0)
    build_timer.tick(poll_default_index, outputs=[build_line, status, build_timer], api_visibility="private",
                     show_progress="hidden")
    hits_state = gr.State([])
    selected = gr.State(None)

    with gr.Row():
        with gr.Column(scale=1):
            gr.Markdown("#### Text → image")
            query = gr.Textbox(label="Describe the tissue", placeholder="tumor epithelium with irregular glands")
            with gr.Row():
                k = gr.Slider(1, 32, value=8, step=1, label="Results (k)")
                model = gr.Radio(MODEL_CHOICES, value=DEFAULT_MODEL, label="Search with")
            search = gr.Button("Search", variant="primary")
            gr.Examples([["colorectal adenocarcinoma epithelium"], ["lymphocytes"], ["adipose tissue"],
                         ["mucus"], ["glands stained brown by immunohistochemistry"]],
                        inputs=[query], label="Example queries", cache_examples=False)
            gr.Markdown("#### Image → image")
            query_image = TolerantImage(type="filepath", image_mode=None, label="Find tiles like this one", height=220)
            similar = gr.Button("Search with this image")
            examples = _example_tiles()
            if examples:
                gr.Examples([[p] for p in examples], inputs=[query_image],
                            label="Example tiles (scikit-image IHC, see assets/ATTRIBUTION.md)", cache_examples=False)
            # ?tab=pathology&example=N loads the N-th tile into the image search
            deep_links.example_target(TAB_ID, query_image, examples, [Path(p).stem.replace("_", " ") for p in examples])
        with gr.Column(scale=2):
            gallery = gr.Gallery(label="Best matches (similarity · caption)", columns=4, height=520,
                                 object_fit="contain", allow_preview=True)
            result_note = gr.Markdown()
            with gr.Row():
                selection = gr.Markdown()
                more = gr.Button("More like this", variant="secondary")

    search_outputs = [gallery, hits_state, result_note]
    model_event(search.click, pathology_search, inputs=[query, k, model], outputs=search_outputs,
                api_name="pathology_search", gpu_duration=20)
    model_event(query.submit, pathology_search, inputs=[query, k, model], outputs=search_outputs,
                api_visibility="private", gpu_duration=20)
    model_event(similar.click, pathology_similar, inputs=[query_image, k, model], outputs=search_outputs,
                api_name="pathology_similar", gpu_duration=20)
    gallery.select(_select, inputs=[hits_state], outputs=[selected, selection], api_visibility="private")
    model_event(more.click, more_like_this, inputs=[selected, k, model], outputs=search_outputs,
                api_visibility="private", gpu_duration=20)

    gr.Markdown("---\n#### Zero-shot classification: PLIP beside general CLIP")
    with gr.Row():
        with gr.Column(scale=1):
            zs_image = TolerantImage(type="filepath", image_mode=None, label="H&E tile", height=260)
            labels = gr.Textbox(value=DEFAULT_LABELS_TEXT, label="Labels (comma-separated)", lines=3,
                                info="Default: the 9 Kather colon tissue classes (NCT-CRC-HE).")
            template = gr.Textbox(value=DEFAULT_TEMPLATE, label="Prompt template",
                                  info="{label} is replaced by each label; try other wordings and watch the probabilities move.")
            classify = gr.Button("Classify", variant="primary")
            if examples:
                gr.Examples([[p] for p in examples[:2]], inputs=[zs_image], label="Example tiles", cache_examples=False)
        with gr.Column(scale=1):
            plip_out = gr.Label(label="PLIP", num_top_classes=9)
        with gr.Column(scale=1):
            clip_out = gr.Label(label="General CLIP", num_top_classes=9)
    zs_notes = gr.Markdown()
    stress_panel("pathology", zs_image, labels, template)
    model_event(classify.click, pathology_zero_shot, inputs=[zs_image, labels, template],
                outputs=[plip_out, clip_out, zs_notes], api_name="pathology_zero_shot", gpu_duration=30)

    with gr.Accordion("Build the index (add images)", open=False):
        from medlab.retrieval.default_index import SOURCE_CARD

        gr.Markdown(SOURCE_CARD)
        gr.Markdown(
            "Upload a **.zip** of PNG/JPEG/TIFF tiles. Optional: a CSV beside the images with columns "
            "`file,label,caption` — the caption shows under each result. Images are identified by "
            "their content (SHA-256): adding the same image again adds nothing; re-uploading a zip "
            "with the same name replaces what it added before. Unsafe archives (paths with `..`, "
            "absolute paths, links, zip bombs) are refused as a whole; non-image files are skipped "
            "and listed. Each model has its own index: PLIP and CLIP embeddings never mix."
        )
        with gr.Row():
            zip_file = gr.File(label="Images (.zip)", file_types=[".zip"], type="filepath")
            with gr.Column():
                folder = gr.Textbox(value="", label="…or a folder on the server",
                                    info="Only inside the data dir, assets/pathology or MEDLAB_INDEX_ROOTS.")
                models = gr.CheckboxGroup(MODEL_CHOICES, value=[DEFAULT_MODEL], label="Index for")
        with gr.Row():
            build_btn = gr.Button("Add to index", variant="primary")
            examples_btn = gr.Button("Index the example tiles")
            refresh = gr.Button("Refresh status")
        index_report = gr.Markdown()
    model_event(build_btn.click, pathology_index, inputs=[zip_file, folder, models], outputs=index_report,
                api_name="pathology_index", lane=Lane.BULK,
                gpu_duration=GpuDuration(base=60, per="zip_file", seconds_each=0.25, count=files_in_upload)).then(
        index_status, outputs=status, api_visibility="private")
    model_event(examples_btn.click, index_examples, inputs=[models], outputs=index_report,
                api_visibility="private", lane=Lane.BULK, gpu_duration=120).then(
        index_status, outputs=status, api_visibility="private")
    refresh.click(index_status, outputs=status, api_visibility="private")

    for key in MODELS:
        model_card(key, f"Model card: {_model_name(key)}")
