"""The Failure lab panel ("Stress test"), shared by the skin, lung-CT and pathology tabs: pick
a perturbation family, run the tab's model over a sweep of strengths, see the probabilities
against the strength (where the decision flips, where the input gate refuses) and the
perturbed images. UI only: the engine is medlab.vision.stress / perturb / stress_plot.
API: /skin_stress, /lung_ct_stress, /pathology_stress."""

from __future__ import annotations

from typing import Any

import gradio as gr

from medlab.core.errors import InputError
from medlab.retrieval.zero_shot import DEFAULT_LABELS, DEFAULT_TEMPLATE
from medlab.vision import perturb
from tabs.common import model_event, progress_callback, ui_errors
from tabs.i18n import translate

DEFAULT_STEPS = 8
DEFAULT_LABELS_TEXT = ", ".join(DEFAULT_LABELS)
GPU_SECONDS = 30


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _report(result: Any) -> tuple[Any, list[tuple[Any, str]], str, dict[str, Any]]:
    """(plot, strip of perturbed images, Markdown summary, JSON summary) of a StressResult."""
    from medlab.vision.stress_plot import render

    fam = result.family
    unit = fam.unit
    strip = [(img, fam.caption(s)) for img, s in zip(result.images, result.strengths, strict=True)]
    lines = [translate("runtime.stress_family", title=translate(fam.title), description=translate(fam.description))]
    flip = result.flip_index
    if flip is None:
        lines.append(translate("runtime.stress_no_flip", decision=result.decisions[0], stop=_fmt(fam.stop), unit=unit))
    else:
        lines.append(translate("runtime.stress_flip", before=result.decisions[0], after=result.decisions[flip],
                               strength=_fmt(result.strengths[flip]), unit=unit, step=flip + 1, steps=len(result.strengths)))
    if result.gates is None:
        lines.append(translate("runtime.stress_no_gate"))
    elif result.gate_index is None:
        lines.append(translate("runtime.stress_gate_never", stop=_fmt(fam.stop), unit=unit))
    else:
        lines.append(translate("runtime.stress_gate_refuses", strength=_fmt(result.strengths[result.gate_index]),
                               unit=unit, reason=result.gates[result.gate_index].reasons[0]))
        if result.gates[0].flagged:
            lines.append(translate("runtime.stress_gate_original"))
    lines.append(translate("runtime.stress_note"))
    return render(result), strip, "\n\n".join(lines), result.summary()


@ui_errors
def skin_stress(image: str | None, family: str = perturb.DEFAULT_FAMILY, steps: int = DEFAULT_STEPS,
                progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
    """Stress-test the skin-lesion classifier: perturb one photo at increasing strengths and plot its probabilities.

    Runs the model once over a batch of perturbed copies (step 0 = the original), reports where the decision
    (benign / malignant / uncertain at the tuned threshold) first changes and where the input gate starts to refuse.
    Educational use only: not a medical device; not for diagnosis or treatment.

    Args:
        image: a dermoscopic or close-up photo of one skin lesion, PNG or JPEG (over MCP: a URL).
        family: perturbation: "rotation" (default), "blur", "noise", "jpeg", "brightness", "contrast", "zoom" or "occlusion".
        steps: number of strengths in the sweep, 3 to 16 (default 8), from none to the family's strongest.

    Returns:
        plot: PNG of the class probabilities against the strength (flip marker, gate shading, threshold)
        strip: the perturbed images, each captioned with its strength
        report: Markdown: what the family does, where the decision flips, where the gate refuses
        summary: JSON with strengths, per-step probabilities, decisions, gate verdicts and the flip index
    """
    from medlab.vision.stress import stress_skin

    return _report(stress_skin(image, family, int(steps), progress=progress_callback(progress)))


@ui_errors
def lung_ct_stress(file: str | None, family: str = perturb.DEFAULT_FAMILY, steps: int = DEFAULT_STEPS,
                   window: str = "lung", scenario: str = "routine",
                   progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
    """Stress-test the lung-CT classifier: perturb one slice at increasing strengths and plot its class probabilities.

    Runs the model once over a batch of perturbed copies (step 0 = the original), reports where the answer (a class,
    or "defer" below the scenario's threshold) first changes and where the input gate starts to refuse.
    Educational use only: not a medical device; not for diagnosis or treatment.

    Args:
        file: one CT slice: PNG, JPEG or DICOM .dcm (over MCP: a URL).
        family: perturbation: "rotation" (default), "blur", "noise", "jpeg", "brightness", "contrast", "zoom" or "occlusion".
        steps: number of strengths in the sweep, 3 to 16 (default 8), from none to the family's strongest.
        window: DICOM window (HU): "lung" (default), "mediastinal", "bone" or "auto" (the file's); PNG/JPEG: ignored.
        scenario: defer threshold: "screening", "routine" (default) or "high-risk confirmation".

    Returns:
        plot: PNG of the class probabilities against the strength (flip marker, gate shading)
        strip: the perturbed images, each captioned with its strength
        report: Markdown: what the family does, where the answer flips, where the gate refuses
        summary: JSON with strengths, per-step probabilities, decisions, gate verdicts and the flip index
    """
    from medlab.vision.stress import stress_lung

    return _report(stress_lung(file, family, int(steps), window=window, scenario=scenario,
                               progress=progress_callback(progress)))


@ui_errors
def pathology_stress(image: str | None, family: str = perturb.DEFAULT_FAMILY, steps: int = DEFAULT_STEPS,
                     labels: str = DEFAULT_LABELS_TEXT, template: str = DEFAULT_TEMPLATE,
                     progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
    """Stress-test PLIP zero-shot classification: perturb one tile at increasing strengths and plot the label probabilities.

    The prompts are encoded once and the perturbed copies (step 0 = the original) in one batch; reports where the top
    label first changes. The pathology tab has no input gate. Probabilities are relative to the labels given.
    Educational use only: not a medical device; not for diagnosis or treatment.

    Args:
        image: an H&E tile, PNG or JPEG (over MCP: a URL).
        family: perturbation: "rotation" (default), "blur", "noise", "jpeg", "brightness", "contrast", "zoom" or "occlusion".
        steps: number of strengths in the sweep, 3 to 16 (default 8), from none to the family's strongest.
        labels: comma-separated labels; default: the 9 Kather colon tissue classes (NCT-CRC-HE).
        template: prompt for each label, {label} replaced by it; default "An H&E image of {label}.".

    Returns:
        plot: PNG of the label probabilities against the strength (flip marker)
        strip: the perturbed images, each captioned with its strength
        report: Markdown: what the family does and where the top label flips
        summary: JSON with strengths, per-step probabilities, top labels and the flip index
    """
    from medlab.retrieval.zero_shot import batch_predictor
    from medlab.vision.stress import stress_predictor

    if not image:
        raise InputError("Upload an H&E tile, then run the stress test.")
    predict = batch_predictor(labels, template, "plip", progress=progress_callback(progress))
    return _report(stress_predictor(image, predict, family, int(steps), tab="pathology", info=predict.info))


HANDLERS = {"skin": skin_stress, "lung_ct": lung_ct_stress, "pathology": pathology_stress}


def stress_panel(tab: str, image: gr.components.Component, *extra: gr.components.Component) -> None:
    """The "Stress test" accordion for `tab` ("skin", "lung_ct" or "pathology"). `image` is the
    tab's main input; `extra` are the tab's own components passed on after family and steps
    (lung: window, scenario; pathology: labels, template)."""
    handler = HANDLERS[tab]
    with gr.Accordion("Stress test: where does the model break?", open=False):
        gr.Markdown("Pick a perturbation; the model runs on the input perturbed at increasing strengths (the first "
                    "step is the original) in **one batch**. The plot shows the predicted probabilities against the "
                    "strength: a purple line marks where the decision first changes, red shading where the input "
                    "gate refuses the image. Uses the image above.")
        with gr.Row():
            family = gr.Dropdown(perturb.choices(), value=perturb.DEFAULT_FAMILY, label="Perturbation",
                                 elem_id=f"{tab}-stress-family")
            steps = gr.Slider(perturb.MIN_STEPS, perturb.MAX_STEPS, value=DEFAULT_STEPS, step=1, label="Steps")
        run = gr.Button("Run stress test", variant="secondary", elem_id=f"{tab}-stress-run")
        # no label badge over the plot: it would hide the plot's title
        plot = gr.Image(label="Probabilities against strength", show_label=False, type="pil", format="png",
                        interactive=False, elem_id=f"{tab}-stress-plot")
        strip = gr.Gallery(label="Perturbed inputs (strength under each)", columns=4, height=300,
                           object_fit="contain", allow_preview=True, elem_id=f"{tab}-stress-strip")
        report = gr.Markdown(elem_id=f"{tab}-stress-report")
        with gr.Accordion("Stress summary (JSON)", open=False):
            summary = gr.JSON(label="summary")
    model_event(run.click, handler, inputs=[image, family, steps, *extra], outputs=[plot, strip, report, summary],
                api_name=handler.__name__, gpu_duration=GPU_SECONDS)
