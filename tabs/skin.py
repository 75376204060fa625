"""Skin-lesion tab: classifier (left) with the tuned threshold, its "uncertain" band and the
input gate; the melanoma assistant (tabs.assistant) on the right, as in document 000's
dashboard. API: /skin_classify."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from tabs import assistant, deep_links
from tabs.common import (
    TolerantImage,
    availability_banner,
    disclaimer,
    model_card,
    model_event,
    on_page_load,
    progress_callback,
    ui_errors,
)
from tabs.explain import explain_panel
from tabs.i18n import translate
from tabs.stress import stress_panel

TITLE = "Skin lesion"
TAB_ID = "skin"

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "skin"
REFERENCE = ASSETS / "reference"  # reference/benign/*.png|jpg, reference/malignant/*.png|jpg
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _explanation() -> str:
    from medlab.core.registry import get_spec
    from medlab.vision.skin import decision_threshold, explanation

    spec = get_spec("skin")
    threshold, source = decision_threshold(spec)
    return explanation(threshold, float(spec.params.get("uncertain_band", 0.1)), source)


@ui_errors
def skin_classify(image: str | None, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
    """Classify one skin-lesion photo as benign or malignant, with an uncertain band around a tuned threshold.

    An input gate flags photos that do not look like skin; the prediction is then shown for illustration only.
    Educational use only: not a medical device; not for diagnosis or treatment.

    Args:
        image: a dermoscopic or close-up photo of one skin lesion, PNG or JPEG (over MCP: a URL).

    Returns:
        probabilities: {"malignant": p, "benign": 1 - p}
        decision: Markdown with the decision (benign / malignant / uncertain) and the input gate's verdict
        class_probabilities: the checkpoint's own per-class probabilities
        threshold: Markdown explaining the decision threshold and where it comes from
        summary: JSON summary of all of the above
    """
    from medlab.vision.skin import classify_skin, explanation

    result = classify_skin(image, progress=progress_callback(progress))
    p = result.malignant_probability
    flagged = result.gate.flagged
    head = translate("runtime.off_domain_headline") + "\n\n" if flagged else ""
    decision_md = head + result.decision.text(p) + "\n\n" + result.gate.markdown()
    bars = {"malignant": p, "benign": 1.0 - p}
    lo, hi = result.decision.band
    expl = explanation(result.decision.threshold, (hi - lo) / 2.0, result.threshold_source)
    return bars, decision_md, result.class_probabilities, expl, result.summary()


def _reference_images() -> list[tuple[str, str]]:
    items = []
    for kind in ("benign", "malignant"):
        folder = REFERENCE / kind
        if folder.is_dir():
            items += [(str(p), kind) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    return items


def build() -> None:
    disclaimer()
    availability_banner("skin")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            gr.Markdown("### Skin-lesion classifier\nUpload a dermoscopic or close-up photo of a skin lesion. "
                        "The model gives a probability of *malignant*; the decision uses a tuned threshold "
                        "and says **uncertain** near it. An input gate warns when the photo does not look "
                        "like skin.")
            image = TolerantImage(type="filepath", image_mode=None, label="Skin-lesion photo", sources=["upload", "clipboard"],
                             height=300, elem_id="skin-image")
            run = gr.Button("Classify", variant="primary", elem_id="skin-run")
            examples = [p for p in (ASSETS / "synthetic_lesion.png", ASSETS / "offdomain_cat_chelsea.jpg") if p.is_file()]
            labels = ["synthetic lesion (drawn, not a patient)",
                      "a cat (off-domain: the gate should flag it)"][: len(examples)]
            if examples:
                gr.Examples([[str(p)] for p in examples], inputs=[image], cache_examples=False,
                            example_labels=labels, label="Examples (see assets/ATTRIBUTION.md)")
            deep_links.example_target(TAB_ID, image, [str(p) for p in examples], labels)  # ?tab=skin&example=N
            bars = gr.Label(label="Probability (benign / malignant)", num_top_classes=2,
                            show_heading=False)  # the decision (with its band) is in the text below
            decision = gr.Markdown(elem_id="skin-decision")
            explain_panel("skin", image)
            with gr.Accordion("The model's own classes", open=False):
                classes = gr.Label(label="Class probabilities (checkpoint labels)", num_top_classes=8)
            explanation = gr.Markdown("")
            on_page_load(explanation, _explanation, "")
            with gr.Accordion("Summary (JSON, as returned by /skin_classify)", open=False):
                summary = gr.JSON(label="summary")
            stress_panel("skin", image)
            with gr.Accordion("Reference images: benign vs malignant", open=False):
                refs = _reference_images()
                if refs:
                    gr.Gallery(refs, label="Reference images (licences in assets/ATTRIBUTION.md)", columns=4,
                               height="auto")
                else:
                    gr.Markdown("No licensed reference images ship with the app. Add benign and malignant "
                                "examples under `assets/skin/reference/benign/` and "
                                "`assets/skin/reference/malignant/` (PNG/JPEG, e.g. CC-licensed ISIC images) "
                                "and list their licences in `assets/ATTRIBUTION.md`; they appear here.")
            model_card("skin")
        with gr.Column(scale=1):
            assistant.build()
    model_event(run.click, skin_classify, inputs=[image], outputs=[bars, decision, classes, explanation, summary],
                api_name="skin_classify", gpu_duration=20)
