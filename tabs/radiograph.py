"""Radiograph captioning tab (document 003): an image-text-to-text model (Llama-3.2-Vision +
radiology LoRA on a GPU, a small general model on a CPU), streamed, with a base-vs-fine-tuned
comparison when an adapter is attached. UI only; the engine is medlab.generation.captioner."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gradio as gr

from medlab.generation.caption_settings import (
    DEFAULT_INSTRUCTION,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MIN_P,
    DEFAULT_TEMPERATURE,
    DOC_003_TEMPERATURE,
    MAX_NEW_TOKENS_LIMIT,
    CaptionSettings,
)
from medlab.generation.captioner_adapter import ADAPTER_KEY, CAPTIONER_KEY
from tabs.common import (
    GpuDuration,
    TolerantImage,
    availability_banner,
    disclaimer,
    model_card,
    model_event,
    on_page_load,
    progress_callback,
    ui_errors,
)
from tabs.i18n import translate

TITLE = "Radiograph captioning"
TAB_ID = "radiograph"
ASSETS = Path(__file__).resolve().parent.parent / "assets" / "radiograph"

INTRO = """
### Describe a radiograph with a fine-tuned vision-language model
Document 003 fine-tunes **Llama-3.2-11B-Vision-Instruct** with a small LoRA adapter (r=16) on
~2,000 ROCO radiology images and their captions: that is the default on a GPU. Upload an
image, keep or edit the instruction, and watch the description being written. With an adapter
attached, untick *Use the radiology adapter* (or press **Compare**) to run the **same weights
without the adapter** and see what fine-tuning changed. The line below says which model
answers here.

*Why the temperature default is low:* the document samples with temperature **{doc}** (min_p 0.1),
which is very creative: fluent text that may mention findings that are not in the image.
{default} keeps descriptions closer to the image; 0 is greedy (always the same text).
""".format(default=f"**{DEFAULT_TEMPERATURE}**", doc=DOC_003_TEMPERATURE)


def _backend_markdown() -> str:
    """Which backend will answer (evaluated on page load; reads settings only, no torch)."""
    from medlab.core.errors import MedlabError
    from medlab.generation.captioner import captioner_summary

    try:
        info = captioner_summary()
    except MedlabError as exc:
        return translate("runtime.radiograph_backend_unconfigured", error=exc)
    if info["backend"] == "remote":
        return translate("runtime.radiograph_backend_remote", endpoint=info["endpoint"], model=info["served_model"])
    adapter = info["adapter"]
    if adapter.get("error"):
        text = translate("runtime.radiograph_adapter_unusable", error=adapter["error"])
    elif adapter:
        text = (translate("runtime.radiograph_adapter_rank", source=adapter["source"], r=adapter["r"],
                          alpha=adapter["lora_alpha"]) if adapter.get("r")
                else translate("runtime.radiograph_adapter", source=adapter["source"]))
    else:
        text = translate("runtime.radiograph_no_adapter")
    line = translate("runtime.radiograph_backend_local", base=info["base"], adapter=text)
    if info["is_default"] and not info["radiology_trained"]:
        line += "\n\n" + translate("runtime.radiograph_cpu_default_warning", title=info["title"],
                                    gpu_default=info["gpu_default"])
    return line


@ui_errors
def radiograph_caption(
    image: str | None,
    instruction: str = DEFAULT_INSTRUCTION,
    temperature: float = DEFAULT_TEMPERATURE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    min_p: float = DEFAULT_MIN_P,
    use_adapter: bool = True,
    progress: gr.Progress = gr.Progress(),
) -> Iterator[str]:
    """Describe a radiograph in free text with a vision-language model (streamed as it is generated).

    Generated text can sound confident and still invent or miss findings; it is a description exercise, not a report.
    Educational use only: not a medical device; not for diagnosis or treatment.

    Args:
        image: a radiograph, PNG or JPEG (over MCP: a URL).
        instruction: the prompt given to the model; default: the expert-radiographer instruction of document 003.
        temperature: sampling temperature, 0 (greedy) to 2; default 0.3.
        max_new_tokens: longest description in tokens, 16 to 1024; default 128.
        min_p: drop tokens less likely than min_p times the top token (when temperature > 0), 0 to 0.5; default 0.1.
        use_adapter: true (default) to use the radiology LoRA adapter when one is configured, false for the base model.

    Returns:
        description: the generated description (the last streamed value is the whole text)
    """
    from medlab.generation.captioner import caption_stream

    settings = CaptionSettings(max_new_tokens, temperature, min_p, use_adapter)
    yield from caption_stream(image, instruction, settings, progress=progress_callback(progress))


@ui_errors
def compare_adapter(
    image: str | None,
    instruction: str = DEFAULT_INSTRUCTION,
    temperature: float = DEFAULT_TEMPERATURE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    min_p: float = DEFAULT_MIN_P,
    progress: gr.Progress = gr.Progress(),
) -> Iterator[tuple[str, str]]:
    """Fine-tuned (adapter on) first, then the base model (adapter off), same settings."""
    from medlab.generation.captioner import caption_stream

    report = progress_callback(progress)
    tuned = ""
    for tuned in caption_stream(image, instruction, CaptionSettings(max_new_tokens, temperature, min_p, True),
                                progress=report):
        yield tuned, ""
    for base in caption_stream(image, instruction, CaptionSettings(max_new_tokens, temperature, min_p, False)):
        yield tuned, base


def build() -> None:
    from medlab.generation.captioner import captioner_backend
    from medlab.generation.captioner_adapter import uses_adapter
    disclaimer()
    # With a remote server the local weights do not matter: no "cannot run here" banner.
    local = captioner_backend() == "local"
    with_adapter = local and uses_adapter()
    if local:
        availability_banner(CAPTIONER_KEY, *([ADAPTER_KEY] if with_adapter else []))
    gr.Markdown(INTRO)
    backend = gr.Markdown("")
    on_page_load(backend, _backend_markdown, "")
    with gr.Row():
        with gr.Column(scale=1):
            image = TolerantImage(type="filepath", image_mode=None, label="Radiograph (PNG / JPEG)", height=320)
            instruction = gr.Textbox(value=DEFAULT_INSTRUCTION, label="Instruction", lines=2,
                                     info="Document 003's training instruction; edit it to see how the model reacts.")
            temperature = gr.Slider(0.0, 2.0, value=DEFAULT_TEMPERATURE, step=0.05, label="Temperature",
                                    info=f"0 = greedy. Document 003 used {DOC_003_TEMPERATURE} "
                                         "(very creative; invents findings).")
            with gr.Accordion("More generation settings", open=False):
                max_new_tokens = gr.Slider(16, MAX_NEW_TOKENS_LIMIT, value=DEFAULT_MAX_NEW_TOKENS, step=16,
                                           label="Max new tokens",
                                           info="Document 003: 128.")
                min_p = gr.Slider(0.0, 0.5, value=DEFAULT_MIN_P, step=0.01, label="min_p",
                                  info="Drop tokens less likely than min_p x the top token's probability "
                                       "(used when temperature > 0; document 003: 0.1).")
                use_adapter = gr.Checkbox(value=True, label="Use the radiology adapter (untick: base model)")
            with gr.Row():
                run = gr.Button("Describe", variant="primary")
                compare = gr.Button("Compare base vs fine-tuned", variant="secondary")
                stop = gr.Button("Stop", variant="stop")
        with gr.Column(scale=1):
            output = gr.Textbox(label="Description", lines=8, buttons=["copy"])
            with gr.Accordion("Before / after fine-tuning", open=True):
                tuned_box = gr.Textbox(label="Fine-tuned (adapter on)", lines=5)
                base_box = gr.Textbox(label="Base model (adapter off, same weights)", lines=5)
            gr.Markdown("Generated text can sound confident and still be wrong. It is a description "
                        "exercise, not a report: never use it for a patient.")
    examples = sorted(p for p in ASSETS.glob("*.png"))
    if examples:
        gr.Examples([[str(p)] for p in examples], inputs=[image], label="Example images (see assets/ATTRIBUTION.md)",
                    cache_examples=False)
    # One model object serves one generation at a time (the adapter toggle is model-wide
    # state): these events share one queue slot.
    caption_event = model_event(
        run.click, radiograph_caption,
        inputs=[image, instruction, temperature, max_new_tokens, min_p, use_adapter],
        outputs=output, api_name="radiograph_caption",
        gpu_duration=GpuDuration(base=30, per="max_new_tokens", seconds_each=0.15),
    )
    compare_event = model_event(
        compare.click, compare_adapter,
        inputs=[image, instruction, temperature, max_new_tokens, min_p],
        outputs=[tuned_box, base_box], api_name="radiograph_compare", api_visibility="private",
        gpu_duration=GpuDuration(base=40, per="max_new_tokens", seconds_each=0.3),
    )
    stop.click(None, None, None, cancels=[caption_event, compare_event], api_visibility="private")
    model_card(CAPTIONER_KEY, "Model card: captioner")
    if with_adapter:
        model_card(ADAPTER_KEY, "Model card: LoRA adapter")
