"""Lung-CT tab: benign / malignant / normal with a Grad-CAM overlay (opacity, class to
explain, colormap legend), document 001's defer-to-expert rule per scenario, and the input
gate. API: /lung_classify (first parameter: ONE file, PNG/JPEG or DICOM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from tabs import deep_links
from tabs.common import (
    availability_banner,
    disclaimer,
    model_card,
    model_event,
    progress_callback,
    ui_errors,
)
from tabs.explain import explain_panel
from tabs.i18n import translate
from tabs.stress import stress_panel

TITLE = "Lung CT"
TAB_ID = "lung_ct"

ROOT = Path(__file__).resolve().parent.parent / "assets"


def legend_html() -> str:
    """Colour legend of the overlay, in the engine's colormap."""
    from medlab.vision.gradcam import COLOURMAP_HEX

    return (
        "<div style='display:flex;align-items:center;gap:8px;font-size:0.85em'>"
        "<span>low</span><div style='flex:1;height:14px;border-radius:3px;"
        f"background:linear-gradient(to right,{','.join(COLOURMAP_HEX)})'></div><span>high</span></div>"
        "<div style='font-size:0.8em;opacity:0.8'>Grad-CAM: how much each region raised the score of the "
        "explained class (normalised per image, so colours compare regions within one image, not across "
        "images). Regions the model never saw (cropped by its preprocessing) are left uncoloured.</div>"
    )


def _choices() -> dict[str, Any]:
    """Everything the tab offers, read from the engine (windows, scenarios, classes)."""
    from medlab.vision import lung_ct

    windows = lung_ct.windows()
    window_info = "; ".join(f"{name}: C {c:g} / W {w:g} HU" for name, cw in windows.items() if cw
                            for c, w in [cw]) + "; auto: the file's own window. Ignored for PNG/JPEG"
    table = lung_ct.scenarios()
    return {
        "windows": list(windows),
        "window_info": window_info,
        "scenarios": list(table),
        "default_scenario": lung_ct.default_scenario(),
        "scenario_info": " · ".join(f"{k} {v:g}" for k, v in table.items()) + " (document 001)",
        "explain": lung_ct.explain_choices(),
        "classes": lung_ct.classes(),
    }


@ui_errors
def lung_classify(
    file: str | None,
    window: str = "lung",
    scenario: str = "routine",
    explain: str = "predicted",
    opacity: float = 0.4,
    progress: gr.Progress = gr.Progress(),
) -> tuple[Any, ...]:
    """Classify one lung CT slice into the model's classes with a Grad-CAM heat map, deferring when unsure.

    If the top probability is below the scenario's threshold the result is "recommend further examination"
    instead of a class; an input gate flags images that do not look like a CT slice.
    Educational use only: not a medical device; not for diagnosis or treatment.

    Args:
        file: one CT slice: PNG, JPEG or DICOM .dcm (over MCP: a URL).
        window: DICOM window (HU): "lung" (default), "mediastinal", "bone" or "auto" (the file's); PNG/JPEG: ignored.
        scenario: defer threshold: "screening", "routine" (default) or "high-risk confirmation".
        explain: class the heat map explains: "predicted" (default) or one of the model's class names.
        opacity: heat-map opacity over the slice, 0 to 1 (default 0.4).

    Returns:
        probabilities: the model's class probabilities
        overlay: Grad-CAM overlay image, the size of the input
        verdict: Markdown with the class or the defer advice, the Grad-CAM note and the input gate's verdict
        summary: JSON summary of all of the above
    """
    from medlab.vision.lung_ct import classify_lung

    result = classify_lung(file, window=window, scenario=scenario, explain=explain, opacity=float(opacity),
                           progress=progress_callback(progress))
    head = translate("runtime.off_domain_headline") + "\n\n" if result.gate.flagged else ""
    notes = [translate("runtime.lung_gradcam_of", cls=result.explained_class, layer=result.info.get("cam_layer"))]
    if not result.info.get("model_saw_whole_image"):
        notes.append(translate("runtime.lung_centre_crop"))
    if result.info.get("window"):
        notes.append(translate("runtime.lung_dicom_window", window=result.info["window"]))
    text = head + result.defer.text + "\n\n" + " ".join(notes) + "\n\n" + result.gate.markdown()
    return result.probabilities, result.overlay, text, result.summary()


def build() -> None:
    disclaimer()
    availability_banner("lung_ct")
    choices = _choices()
    class_text = " / ".join(choices["classes"])
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            gr.Markdown("### Lung-CT classifier with Grad-CAM\nUpload **one** CT slice: PNG/JPEG or a DICOM "
                        "file (windowed in HU; lung window by default). The model says "
                        f"{class_text}, shows where it looked, and **defers to an expert** when it is not sure enough "
                        "for the chosen scenario.")
            file = gr.File(label="CT slice (PNG, JPEG or DICOM .dcm)", type="filepath", file_count="single",
                           elem_id="lung-file")
            with gr.Row():
                window = gr.Dropdown(choices["windows"], value="lung", label="DICOM window",
                                     info=choices["window_info"])
                scenario = gr.Radio(choices["scenarios"], value=choices["default_scenario"],
                                    label="Scenario (defer threshold)", info=choices["scenario_info"])
            with gr.Row():
                explain = gr.Dropdown(choices["explain"], value=choices["explain"][0], label="Class to explain",
                                      allow_custom_value=True)  # a taught model brings its own classes
                opacity = gr.Slider(0.0, 1.0, value=0.4, step=0.05, label="Heat-map opacity")
            run = gr.Button("Classify", variant="primary", elem_id="lung-run")
            examples = [p for p in (ROOT / "lung" / "CT_small.dcm", ROOT / "lung" / "ct_small_lung_window.png",
                                    ROOT / "skin" / "offdomain_cat_chelsea.jpg") if p.is_file()]
            labels = ["chest CT slice (DICOM, pydicom test data)", "same slice as PNG (lung window)",
                      "a cat photo (off-domain: the gate should flag it)"][: len(examples)]
            if examples:
                gr.Examples([[str(p)] for p in examples], inputs=[file], cache_examples=False,
                            example_labels=labels, label="Examples (see assets/ATTRIBUTION.md)")
            deep_links.example_target(TAB_ID, file, [str(p) for p in examples], labels)  # ?tab=lung_ct&example=N
        with gr.Column(scale=1):
            probs = gr.Label(label=class_text.capitalize(), num_top_classes=len(choices["classes"]) or 3,
                             show_heading=False)  # the verdict (class or defer) is in the text below
            overlay = gr.Image(label="Grad-CAM overlay (same size as the input)", type="pil", format="png",
                               interactive=False, height=360, elem_id="lung-overlay")
            gr.HTML(legend_html())
            verdict = gr.Markdown(elem_id="lung-verdict")
            explain_panel("lung_ct", file, window)
            with gr.Accordion("Summary (JSON, as returned by /lung_classify)", open=False):
                summary = gr.JSON(label="summary")
            stress_panel("lung_ct", file, window, scenario)
    gr.Markdown(
        "**Defer rule (document 001).** If the highest class probability is below the scenario's threshold, "
        "the result is *recommend further examination* instead of a class. A stricter scenario defers more cases "
        "and is right more often on the rest (document 001: at 0.7, 7.3% deferred, accuracy 0.953 on the rest). "
        "Note: with three classes the top probability is always at least 33%, so the screening threshold (0.3) "
        "never defers; it only matters for models with four or more classes."
    )
    model_card("lung_ct")
    model_event(run.click, lung_classify, inputs=[file, window, scenario, explain, opacity],
                outputs=[probs, overlay, verdict, summary], api_name="lung_classify", gpu_duration=30)
