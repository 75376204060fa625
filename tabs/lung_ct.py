"""Lung-CT tab: benign / malignant / normal with a Grad-CAM overlay (opacity, class to
explain, colormap legend), document 001's defer-to-expert rule per scenario, and the input
gate. API: /lung_classify (first parameter: ONE file, PNG/JPEG or DICOM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from tabs.common import availability_banner, disclaimer, model_card, progress_callback, ui_errors
from tabs.common import model_event

TITLE = "Lung CT"
TAB_ID = "lung_ct"

ROOT = Path(__file__).resolve().parent.parent / "assets"
WINDOW_CHOICES = ["lung", "mediastinal", "bone", "auto"]  # medlab.io.imaging.WINDOWS
EXPLAIN_CHOICES = ["predicted", "benign", "malignant", "normal"]
# matplotlib/OpenCV "jet" from low to high (the overlay's colormap)
JET = ["#00007f", "#0000ff", "#007fff", "#00ffff", "#7fff7f", "#ffff00", "#ff7f00", "#ff0000", "#7f0000"]
LEGEND = (
    "<div style='display:flex;align-items:center;gap:8px;font-size:0.85em'>"
    "<span>low</span><div style='flex:1;height:14px;border-radius:3px;"
    f"background:linear-gradient(to right,{','.join(JET)})'></div><span>high</span></div>"
    "<div style='font-size:0.8em;opacity:0.8'>Grad-CAM: how much each region raised the score of the "
    "explained class (normalised per image, so colours compare regions within one image, not across "
    "images). Regions the model never saw (cropped by its preprocessing) are left uncoloured.</div>"
)


def _scenarios() -> tuple[list[str], str]:
    from medlab.vision.lung_ct import scenarios
    from medlab.core.registry import get_spec

    spec = get_spec("lung_ct")
    return list(scenarios(spec)), str(spec.params.get("default_scenario", "routine"))


@ui_errors
def lung_classify(
    file: str | None,
    window: str = "lung",
    scenario: str = "routine",
    explain: str = "predicted",
    opacity: float = 0.4,
    progress: gr.Progress = gr.Progress(),
) -> tuple[Any, ...]:
    """Classify one CT slice (PNG/JPEG or DICOM).

    Returns (3-class probabilities, Grad-CAM overlay the size of the input, defer/gate
    markdown, JSON summary)."""
    from medlab.vision.lung_ct import classify_lung

    result = classify_lung(file, window=window, scenario=scenario, explain=explain, opacity=float(opacity),
                           progress=progress_callback(progress))
    head = "### ⚠️ Off-domain input: prediction shown for illustration only\n\n" if result.gate.flagged else ""
    notes = [f"Grad-CAM of **{result.explained_class}** (layer `{result.info.get('cam_layer')}`)."]
    if not result.info.get("model_saw_whole_image"):
        notes.append("The model's preprocessing crops the centre of this image; the uncoloured border was not seen.")
    if result.info.get("window"):
        notes.append(f"DICOM window: {result.info['window']}.")
    text = head + result.defer.text + "\n\n" + " ".join(notes) + "\n\n" + result.gate.markdown()
    return result.probabilities, result.overlay, text, result.summary()


def build() -> None:
    disclaimer()
    availability_banner("lung_ct")
    names, default = _scenarios()
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            gr.Markdown("### Lung-CT classifier with Grad-CAM\nUpload **one** CT slice: PNG/JPEG or a DICOM "
                        "file (windowed in HU; lung window by default). The model says benign / malignant / "
                        "normal, shows where it looked, and **defers to an expert** when it is not sure enough "
                        "for the chosen scenario.")
            file = gr.File(label="CT slice (PNG, JPEG or DICOM .dcm)", type="filepath", file_count="single",
                           elem_id="lung-file")
            with gr.Row():
                window = gr.Dropdown(WINDOW_CHOICES, value="lung", label="DICOM window",
                                     info="lung: C −600 / W 1500 HU; ignored for PNG/JPEG")
                scenario = gr.Radio(names, value=default, label="Scenario (defer threshold)",
                                    info="screening 0.3 · routine 0.5 · high-risk confirmation 0.7 (document 001)")
            with gr.Row():
                explain = gr.Dropdown(EXPLAIN_CHOICES, value="predicted", label="Class to explain")
                opacity = gr.Slider(0.0, 1.0, value=0.4, step=0.05, label="Heat-map opacity")
            run = gr.Button("Classify", variant="primary", elem_id="lung-run")
            examples = [p for p in (ROOT / "lung" / "CT_small.dcm", ROOT / "lung" / "ct_small_lung_window.png",
                                    ROOT / "skin" / "offdomain_cat_chelsea.jpg") if p.is_file()]
            if examples:
                gr.Examples([[str(p)] for p in examples], inputs=[file], cache_examples=False,
                            example_labels=["chest CT slice (DICOM, pydicom test data)",
                                            "same slice as PNG (lung window)",
                                            "a cat photo (off-domain: the gate should flag it)"][: len(examples)],
                            label="Examples (see assets/ATTRIBUTION.md)")
        with gr.Column(scale=1):
            probs = gr.Label(label="Benign / malignant / normal", num_top_classes=3,
                             show_heading=False)  # the verdict (class or defer) is in the text below
            overlay = gr.Image(label="Grad-CAM overlay (same size as the input)", type="pil", format="png",
                               interactive=False, height=360, elem_id="lung-overlay")
            gr.HTML(LEGEND)
            verdict = gr.Markdown(elem_id="lung-verdict")
            with gr.Accordion("Summary (JSON, as returned by /lung_classify)", open=False):
                summary = gr.JSON(label="summary")
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
