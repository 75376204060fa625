"""Teach-a-classifier tab: class folders in a .zip (or a server folder / Hub dataset id) ->
a frozen ImageNet backbone + a logistic head, evaluated on held-out images (accuracy,
per-class recall, confusion matrix, ROC, calibration, defer table, Grad-CAM), then used as the
Lung CT (or skin) tab's model. API: /teach_train (archive first), /teach_use (model id, tab)."""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import gradio as gr

from tabs.common import GpuDuration, Lane, disclaimer, files_in_upload, model_event, on_page_load, progress_callback, ui_errors
from tabs.i18n import translate

TITLE = "Teach a classifier"
TAB_ID = "teach"

_CANCEL: dict[str, threading.Event] = {}  # session -> the cancel flag of its running run
_CANCEL_LOCK = threading.Lock()

INTRO = """### Teach a classifier on your own images — in the browser
Upload a **.zip with one folder per class** (e.g. the IQ-OTH/NCCD archive as downloaded: *Bengin cases*,
*Malignant cases*, *Normal cases*). PNG/JPEG and DICOM slices are read. A frozen ImageNet network turns every
image into features once; a class-weighted logistic regression learns the classes; held-out images you never
trained on show how good it really is. Then make it the Lung CT tab's model with one click.

**Groups matter.** Neighbouring CT slices of one patient are near copies. If they land on both sides of the
split, the "held-out" images are not new and accuracy looks like 99%. Give a CSV with columns `file,group`
(patient or lesion id) and every patient stays on one side."""


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "api"


def _public_copy(path: Path) -> str:
    """Gradio serves files from its temp dir; the data dir may be elsewhere."""
    target = Path(tempfile.mkdtemp(prefix="medlab-teach-")) / path.name
    shutil.copy2(path, target)
    return str(target)


@ui_errors
def teach_train(
    archive: str | None,
    groups_csv: str | None = None,
    folder: str = "",
    backbone: str = "efficientnet_lite0",
    test_fraction: float = 0.2,
    request: gr.Request | None = None,
    progress: gr.Progress = gr.Progress(),
) -> tuple[Any, ...]:
    """Teach an image classifier from labelled class folders (a frozen backbone plus a trained head) and evaluate it.

    Images of one patient (groups) never land on both sides of the held-out split. The result is not validated.
    Educational use only: not a medical device; not for diagnosis or treatment.

    Args:
        archive: a .zip, one folder of PNG/JPEG images per class (over MCP: a URL); if empty, `folder` is used.
        groups_csv: optional CSV file,group (patient or lesion id) (over MCP: a URL); default none.
        folder: without archive: a server folder (data dir, MEDLAB_INDEX_ROOTS) or a Hub dataset id; default "".
        backbone: frozen feature extractor: "efficientnet_lite0" (default), "resnet18" or "mobilenetv3_large_100".
        test_fraction: share of images (by group) held out for evaluation, 0.1 to 0.5 (default 0.2).

    Returns:
        summary: JSON with classes, n_train, n_test, held_out_accuracy, per_class_recall and model_id
        evaluation: Markdown report of the held-out evaluation
        figure: confusion matrix, ROC and calibration plots of the held-out images
        gallery: Grad-CAM on held-out images, wrong ones first
        model_id: the taught model's id (for teach_use)
    """
    from PIL import Image

    from medlab.vision.teach.service import teach

    source = archive or (folder or "").strip()
    cancel = threading.Event()
    key = _session(request)
    with _CANCEL_LOCK:
        _CANCEL[key] = cancel
    try:
        result = teach(source, groups_csv or None, backbone=backbone or "efficientnet_lite0",
                       test_fraction=float(test_fraction), progress=progress_callback(progress), cancel=cancel)
    finally:
        with _CANCEL_LOCK:
            if _CANCEL.get(key) is cancel:
                _CANCEL.pop(key, None)
    with Image.open(result.figure) as img:
        figure = img.convert("RGB")
    return result.summary, result.markdown, figure, result.gallery, result.model_id


def teach_cancel(request: gr.Request | None = None) -> str:
    with _CANCEL_LOCK:
        flag = _CANCEL.get(_session(request))
    if flag is None:
        return translate("runtime.teach_nothing_running", request)
    flag.set()
    return translate("runtime.teach_cancelling", request)


@ui_errors
def teach_use(model_id: str, tab: str = "lung_ct") -> tuple[str, dict[str, Any]]:
    """Make a model taught with teach_train the model that a tab (lung CT or skin) uses, also after a restart.

    Educational use only: not a medical device; not for diagnosis or treatment.

    Args:
        model_id: the id returned by teach_train.
        tab: "lung_ct" (default) or "skin" (the skin tab needs a benign / malignant model).

    Returns:
        message: Markdown confirming which tab now uses the model and its classes
        details: JSON with the model id, tab and classes
    """
    from medlab.vision.teach import taught

    done = taught.use(model_id, tab)
    name = translate(f"runtime.teach_tab_{tab}") if tab in ("lung_ct", "skin") else tab
    return translate("runtime.teach_model_in_use", model_id=done["model_id"], tab=name,
                     classes=", ".join(done["classes"])), \
        {k: v for k, v in done.items() if k != "path"}  # no server paths in the API


@ui_errors
def teach_download(model_id: str) -> str:
    from medlab.vision.teach import taught

    return _public_copy(taught.download(model_id))


def _status() -> str:
    from medlab.vision.teach import service, taught

    lines = []
    for tab in ("lung_ct", "skin"):
        current = taught.current(tab)
        if current:
            lines.append(translate("runtime.teach_tab_uses", tab=translate(f"runtime.teach_tab_{tab}"), model_id=current))
    auto = service.autoteach_status()
    if auto["state"] != "idle":
        lines.append(f"- MEDLAB_LUNG_DATASET: {auto['state']} — {auto['message']}")
    models = taught.list_models()[:10]
    if models:
        lines.append("\n" + translate("runtime.teach_taught_heading"))
        lines += [translate("runtime.teach_taught_model", model_id=m["model_id"], classes=", ".join(m["classes"]),
                            n=m["n_images"], source=m["source"], accuracy=f"{m['held_out_accuracy']:.3f}")
                  for m in models]
    return "\n".join(lines) or "No model has been taught in this app yet."


def build() -> None:
    from medlab.vision.teach.features import BACKBONES, DEFAULT_BACKBONE
    from medlab.vision.teach.service import autoteach_lung_in_background

    autoteach_lung_in_background()  # MEDLAB_LUNG_DATASET, only when no lung model is configured
    disclaimer()
    gr.Markdown(INTRO)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            archive = gr.File(label="Class folders as a .zip", file_types=[".zip"], type="filepath",
                              elem_id="teach-archive")
            groups = gr.File(label="Optional CSV: file,group (patient or lesion id)", file_types=[".csv"],
                             type="filepath")
            with gr.Accordion("Other sources and settings", open=False):
                folder = gr.Textbox(label="…or a server folder (under the allowed roots) or a Hub dataset id",
                                    value="", placeholder="/data/IQ-OTHNCCD  or  user/dataset")
                backbone = gr.Dropdown([(b.title, b.key) for b in BACKBONES.values()], value=DEFAULT_BACKBONE,
                                       label="Frozen backbone")
                fraction = gr.Slider(0.1, 0.5, value=0.2, step=0.05, label="Held-out fraction")
            with gr.Row():
                run = gr.Button("Teach", variant="primary", elem_id="teach-run")
                stop = gr.Button("Cancel", variant="stop")
            stop_msg = gr.Markdown()
            status = gr.Markdown(elem_id="teach-status")
        with gr.Column(scale=2):
            result_md = gr.Markdown(elem_id="teach-result")
            figure = gr.Image(label="Confusion matrix · ROC · calibration (held-out images)", type="pil",
                              interactive=False)
            gallery = gr.Gallery(label="Grad-CAM on held-out images (✗ wrong first, then ✓ right)", columns=4,
                                 height="auto", object_fit="contain")
            with gr.Accordion("Summary (JSON, as returned by /teach_train)", open=False):
                summary = gr.JSON(label="summary")
            model_id = gr.Textbox(label="Taught model id", elem_id="teach-model-id")
            with gr.Row():
                use_lung = gr.Button("Use in the Lung CT tab", elem_id="teach-use-lung")
                use_skin = gr.Button("Use in the skin tab (benign / malignant sets)")
                download = gr.Button("Download the model folder (.zip)")
            use_md = gr.Markdown()
            use_json = gr.JSON(visible=False)
            tab_choice = gr.Textbox(value="lung_ct", visible=False)
            skin_choice = gr.Textbox(value="skin", visible=False)
            file_out = gr.File(label="Model folder", interactive=False)
    on_page_load(status, _status, "")
    # One teaching run at a time (it uses every core): the bulk lane. On ZeroGPU, features of a
    # few thousand images take about a minute; the cap keeps it inside ZeroGPU's limits.
    model_event(run.click, teach_train, inputs=[archive, groups, folder, backbone, fraction],
                outputs=[summary, result_md, figure, gallery, model_id], api_name="teach_train",
                lane=Lane.BULK, gpu_duration=GpuDuration(base=60, per="archive", seconds_each=0.05,
                                                         count=files_in_upload))
    stop.click(teach_cancel, inputs=None, outputs=[stop_msg], api_name=False)
    use_lung.click(teach_use, inputs=[model_id, tab_choice], outputs=[use_md, use_json], api_name="teach_use")
    use_skin.click(teach_use, inputs=[model_id, skin_choice], outputs=[use_md, use_json], api_name=False)
    download.click(teach_download, inputs=[model_id], outputs=[file_out], api_name=False)
