"""The "Second explanation" panel shared by the skin and lung-CT tabs: Grad-CAM beside Captum
occlusion sensitivity (optionally Integrated Gradients), one line on what each measures, and
how far the maps agree. A separate button on the tab's uploaded input, so a plain classify
stays as fast as before. API: /skin_explain and /lung_ct_explain (engine:
medlab.vision.attribution)."""

from __future__ import annotations

import time
from typing import Any

import gradio as gr

from tabs.common import model_event, progress_callback, ui_errors
from tabs.i18n import translate

GRID_LABELS = {2: "2 x 2 windows (default, about 3-5x a forward)", 3: "3 x 3 windows (about 7-13x)",
               4: "4 x 4 windows (about 13-20x)"}  # bench section 12, two runs
HEADING = ("### Two explanations: Grad-CAM beside occlusion\nGrad-CAM and occlusion sensitivity answer different questions, "
           "so they can disagree; when they do, neither map is a safe account of the decision.")


def methods_markdown() -> str:
    """One line per method on what it measures, from the engine's table."""
    from medlab.vision.attribution import METHODS

    return "\n".join(f"- **{m.name}** measures {m.measures}" for m in METHODS.values())


def _verdict_text(verdict: str) -> str:
    return translate({"agree": "runtime.explain_verdict_agree", "partly agree": "runtime.explain_verdict_partly",
                      "disagree": "runtime.explain_verdict_disagree"}.get(verdict, "runtime.explain_verdict_flat"))


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _render(result: Any, seconds: float) -> tuple[Any, ...]:
    from medlab.vision.attribution import AGREE_OVERLAP, AGREE_RHO, DISAGREE_OVERLAP, DISAGREE_RHO, METHODS

    lines = []
    for a in result.agreements:
        lines.append(translate("runtime.explain_agreement", first=translate(METHODS[a.first].name),
                               second=translate(METHODS[a.second].name),  # the image labels' text
                               rho=_number(a.rho), overlap=_number(a.overlap), verdict=_verdict_text(a.verdict)))
    lines.append(translate("runtime.explain_thresholds", agree_rho=AGREE_RHO, agree_overlap=AGREE_OVERLAP,
                           disagree_rho=DISAGREE_RHO, disagree_overlap=DISAGREE_OVERLAP))
    occ = result.occlusion
    status = translate("runtime.explain_done", cls=result.explained_class, p=f"{result.probability:.1%}",
                       copies=occ.images, batches=len(occ.batches), seconds=f"{seconds:.1f}")
    if result.gate is not None and result.gate.flagged:  # same headline and verdict as the classify button's
        status = translate("runtime.off_domain_headline") + "\n\n" + status + "\n\n" + result.gate.markdown()
    return (result.gradcam_overlay, result.occlusion_overlay, result.ig_overlay, "\n\n".join(lines), status,
            result.summary())


@ui_errors
def skin_explain(image: str | None, grid: int = 2, integrated_gradients: bool = False, opacity: float = 0.4,
                 progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
    """Explain the skin classifier's top class twice: Grad-CAM and occlusion sensitivity, with how far they agree.

    Occlusion covers each window of a grid in turn with the image's mean colour and records how much the
    class probability drops; the agreement is the Spearman rank correlation of the two maps and the overlap
    of their top-10% regions, with a verdict (agree / partly agree / disagree).
    Educational use only: not a medical device; not for diagnosis or treatment.

    Args:
        image: a dermoscopic or close-up photo of one skin lesion, PNG or JPEG (over MCP: a URL).
        grid: occlusion windows per side: 2 (default, 4 covered copies), 3 or 4 (finer, dearer).
        integrated_gradients: also compute Integrated Gradients (8 steps through the whole model; slower).
        opacity: heat-map opacity over the photo, 0 to 1 (default 0.4).

    Returns:
        gradcam: Grad-CAM overlay, the size of the input
        occlusion: occlusion-sensitivity overlay, same colour map
        integrated_gradients: Integrated Gradients overlay, or nothing when not asked for
        agreement: Markdown with Spearman rho, top-10% overlap and the verdict for each pair of maps
        status: Markdown: explained class, number of covered copies and batches, seconds
        summary: JSON summary of all of the above
    """
    return _explain("skin", image, grid, integrated_gradients, opacity, "lung", progress)


@ui_errors
def lung_ct_explain(file: str | None, grid: int = 2, integrated_gradients: bool = False, opacity: float = 0.4,
                    window: str = "lung", progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
    """Explain the lung-CT classifier's top class twice: Grad-CAM and occlusion sensitivity, with how far they agree.

    Occlusion covers each window of a grid in turn with the slice's mean colour and records how much the
    class probability drops; the agreement is the Spearman rank correlation of the two maps and the overlap
    of their top-10% regions, with a verdict (agree / partly agree / disagree).
    Educational use only: not a medical device; not for diagnosis or treatment.

    Args:
        file: one CT slice: PNG, JPEG or DICOM .dcm (over MCP: a URL).
        grid: occlusion windows per side: 2 (default, 4 covered copies), 3 or 4 (finer, dearer).
        integrated_gradients: also compute Integrated Gradients (8 steps through the whole model; slower).
        opacity: heat-map opacity over the slice, 0 to 1 (default 0.4).
        window: DICOM window (HU): "lung" (default), "mediastinal", "bone" or "auto"; PNG/JPEG: ignored.

    Returns:
        gradcam: Grad-CAM overlay, the size of the input
        occlusion: occlusion-sensitivity overlay, same colour map
        integrated_gradients: Integrated Gradients overlay, or nothing when not asked for
        agreement: Markdown with Spearman rho, top-10% overlap and the verdict for each pair of maps
        status: Markdown: explained class, number of covered copies and batches, seconds
        summary: JSON summary of all of the above
    """
    return _explain("lung_ct", file, grid, integrated_gradients, opacity, window, progress)


def _explain(key: str, path: str | None, grid: Any, with_ig: bool, opacity: float, window: str,
             progress: gr.Progress | None) -> tuple[Any, ...]:
    from medlab.core.errors import InputError
    from medlab.vision.attribution import explain

    try:
        grid = int(grid)
    except (TypeError, ValueError):
        raise InputError(f"Occlusion grid must be a number of windows per side (2, 3 or 4), not {grid!r}.") from None
    started = time.perf_counter()
    result = explain(key, path, grid=grid, with_ig=bool(with_ig), opacity=float(opacity), window=window or "lung",
                     progress=progress_callback(progress))
    return _render(result, time.perf_counter() - started)


HANDLERS = {"skin": (skin_explain, "skin_explain", 30), "lung_ct": (lung_ct_explain, "lung_ct_explain", 30)}


def explain_panel(tab: str, input_component: gr.components.Component, *extra_inputs: gr.components.Component) -> None:
    """The panel, on the tab's own input component (`tab`: "skin" or "lung_ct"); `extra_inputs`
    follow the handler's own parameters (the lung tab passes its DICOM window)."""
    handler, api_name, gpu_seconds = HANDLERS[tab]
    from medlab.vision.attribution import DEFAULT_GRID, GRIDS

    with gr.Group(elem_id=f"{tab}-explain"):
        gr.Markdown(HEADING)
        gr.Markdown(methods_markdown())
        with gr.Row():
            grid = gr.Radio([(GRID_LABELS[g], g) for g in GRIDS], value=DEFAULT_GRID, label="Occlusion grid")
            with gr.Column():
                with_ig = gr.Checkbox(False, label="Also Integrated Gradients (slower)")
                opacity = gr.Slider(0.0, 1.0, value=0.4, step=0.05, label="Heat-map opacity")
        run = gr.Button("Second explanation (occlusion)", variant="secondary", elem_id=f"{tab}-explain-run")
        status = gr.Markdown("", elem_id=f"{tab}-explain-status")
        with gr.Row():
            cam = gr.Image(label="Grad-CAM", type="pil", format="png", interactive=False, height=300,
                           elem_id=f"{tab}-explain-gradcam")
            occ = gr.Image(label="Occlusion sensitivity", type="pil", format="png", interactive=False, height=300,
                           elem_id=f"{tab}-explain-occlusion")
            ig = gr.Image(label="Integrated Gradients", type="pil", format="png", interactive=False, height=300,
                          visible=False, elem_id=f"{tab}-explain-ig")
        agreement = gr.Markdown("", elem_id=f"{tab}-explain-agreement")
        with gr.Accordion("Explanation summary (JSON)", open=False):
            summary = gr.JSON(label="summary")

    def running() -> str:
        return translate("runtime.explain_running")

    with_ig.change(lambda on: gr.update(visible=bool(on)), with_ig, ig, queue=False, api_visibility="private",
                   show_progress="hidden")  # the IG image shows only when asked for
    shown = run.click(running, None, status, queue=False, api_visibility="private", show_progress="hidden")
    model_event(shown.then, handler, inputs=[input_component, grid, with_ig, opacity, *extra_inputs],
                outputs=[cam, occ, ig, agreement, status, summary], api_name=api_name, gpu_duration=gpu_seconds,
                show_progress_on=[cam, occ, ig])  # the status line stays readable while it runs
