"""Radiograph captioning (document 003): the caption API.

Two generation back-ends, chosen by configuration through GENERATION_BACKENDS:
- "local": weights loaded through the model cache (medlab.generation.captioner_backends),
  generation streamed by medlab.generation.streaming; one lock per loaded model serialises
  generation, because the adapter toggle is model-wide state and one model serves one
  request at a time;
- "remote": an OpenAI-compatible server (MEDLAB_CAPTIONER_ENDPOINT, medlab.generation.remote);
  no local weights are loaded."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from medlab.core.config import load_settings
from medlab.core.errors import InputError
from medlab.core.progress import Progress
from medlab.generation.caption_settings import (
    CaptionSettings,
    chat_messages,
    check_instruction,
)
from medlab.generation.captioner_adapter import ADAPTER_KEY, CAPTIONER_KEY

log = logging.getLogger(__name__)

__all__ = ["ADAPTER_KEY", "CAPTIONER_KEY", "caption", "caption_stream", "captioner_backend", "captioner_lease",
           "load_radiograph", "next_token_logits", "prepare_inputs"]


def load_radiograph(image: Any) -> Any:
    """A PIL RGB image from a PIL image or a path (image file or DICOM, auto window)."""
    from PIL import Image

    if image is None:
        raise InputError("Please upload a radiograph image first.")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    from medlab.io.imaging import load_any

    return load_any(str(image), window="auto").image


def prepare_inputs(loaded: Any, image: Any, instruction: str) -> dict[str, Any]:
    """Model inputs for [image, instruction] through the processor's own chat template, for
    any image-text-to-text processor: transformers' apply_chat_template collects the image
    from the message, nests it per prompt as every processor accepts, and skips a second BOS
    when the template already writes one."""
    inputs = loaded.processor.apply_chat_template(
        chat_messages(instruction, image), add_generation_prompt=True, tokenize=True, return_dict=True,
        return_tensors="pt", processor_kwargs=dict(loaded.extras.get("processor_kwargs") or {}),
    )
    out = {k: v.to(loaded.device) if hasattr(v, "to") else v for k, v in inputs.items()}
    dtype = getattr(loaded.model, "dtype", None)
    if "pixel_values" in out and dtype is not None and out["pixel_values"].is_floating_point():
        out["pixel_values"] = out["pixel_values"].to(dtype)  # bfloat16 models want bfloat16 pixels
    return out


def _adapter_context(loaded: Any, use_adapter: bool) -> Callable[[], contextlib.AbstractContextManager[Any]] | None:
    if use_adapter:
        return None
    if loaded.extras.get("adapter") is None:
        raise InputError("No LoRA adapter is attached to this captioner, so it already runs as the base "
                         "model. To compare, set MEDLAB_MODEL_CAPTIONER_ADAPTER to a PEFT LoRA adapter trained "
                         "for it (python -m training.finetune_captioner writes one).")
    return loaded.model.disable_adapter


@contextlib.contextmanager
def captioner_lease(progress: Progress | None = None) -> Iterator[Any]:
    """The loaded captioner held through a cache lease (never evicted while a description
    streams), refusing fast (with the memory reason) where it cannot run."""
    from medlab.core.loaders import check_hardware, use_model

    check_hardware(CAPTIONER_KEY)  # before the cache's budget check: it names the GPU as the fix
    with use_model(CAPTIONER_KEY, progress) as loaded:
        yield loaded


class GenerationBackend(Protocol):
    def stream(self, image: Any, instruction: str, settings: CaptionSettings,
               cancel: threading.Event | None, progress: Progress | None) -> Iterator[str]:
        """The growing description."""


class LocalGeneration:
    def stream(self, image: Any, instruction: str, settings: CaptionSettings,
               cancel: threading.Event | None, progress: Progress | None) -> Iterator[str]:
        from medlab.core.loaders import check_hardware
        from medlab.generation.streaming import stream_generate

        check_hardware(CAPTIONER_KEY)  # refuse an impossible model before anything else
        pil = load_radiograph(image)  # bad input fails before a (slow) model load
        with captioner_lease(progress) as loaded:  # held until the stream ends or is closed
            context = _adapter_context(loaded, settings.use_adapter)
            inputs = prepare_inputs(loaded, pil, instruction)
            started = time.perf_counter()
            yield from stream_generate(
                loaded.model, loaded.processor.tokenizer, inputs, settings.generate_kwargs(),
                lock=loaded.extras.get("lock"), cancel=cancel, context=context,
            )
        log.info("caption (adapter=%s) took %.2fs", settings.use_adapter, time.perf_counter() - started)


class RemoteGeneration:
    def stream(self, image: Any, instruction: str, settings: CaptionSettings,
               cancel: threading.Event | None, progress: Progress | None) -> Iterator[str]:
        from medlab.generation.remote import stream_chat

        if not settings.use_adapter:
            raise InputError(
                "The remote server serves one (merged) model, so the base-model toggle only works with "
                "local weights. Unset MEDLAB_CAPTIONER_ENDPOINT to compare base and fine-tuned."
            )
        yield from stream_chat(load_radiograph(image), instruction, settings, cancel=cancel)


GENERATION_BACKENDS: dict[str, GenerationBackend] = {"local": LocalGeneration(), "remote": RemoteGeneration()}


def captioner_backend() -> str:
    """'remote' when MEDLAB_CAPTIONER_ENDPOINT is set, else 'local' (a GENERATION_BACKENDS key)."""
    return "remote" if load_settings().captioner_endpoint else "local"


def caption_stream(
    image: Any,
    instruction: str | None = None,
    settings: CaptionSettings | None = None,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
) -> Iterator[str]:
    """Describe a radiograph; yields the growing description (streamed)."""
    settings = (settings or CaptionSettings()).validated()
    text = check_instruction(instruction)
    yield from GENERATION_BACKENDS[captioner_backend()].stream(image, text, settings, cancel, progress)


def caption(image: Any, instruction: str | None = None, settings: CaptionSettings | None = None) -> str:
    """The whole description (non-streamed convenience wrapper)."""
    text = ""
    for text in caption_stream(image, instruction, settings):  # noqa: B007 - the last value is the whole text
        pass
    return text


def next_token_logits(image: Any, instruction: str | None = None, use_adapter: bool = True) -> Any:
    """Logits of the first generated token, with or without the adapter (a 1-D CPU tensor).

    Shows students, below the level of sampled text, that the adapter changes the computation."""
    import torch

    with captioner_lease() as loaded:
        inputs = prepare_inputs(loaded, load_radiograph(image), check_instruction(instruction))
        context = _adapter_context(loaded, use_adapter)
        lock = loaded.extras.get("lock") or contextlib.nullcontext()
        with lock, torch.inference_mode(), (context() if context else contextlib.nullcontext()):
            logits = loaded.model(**inputs).logits[0, -1]
    return logits.float().cpu()


def captioner_summary() -> dict[str, Any]:
    """What will answer a caption request, for the tab (settings and small files only: no
    torch, no weights): backend, and the endpoint or the base model and adapter."""
    from medlab.core.registry import get_spec, resolve_source
    from medlab.core.specs import DEFAULT_BY_DEVICE, KNOWN_CHECKPOINTS
    from medlab.generation.captioner_adapter import adapter_info
    from medlab.generation.remote import DEFAULT_SERVED_MODEL

    settings = load_settings()
    backend = captioner_backend()
    if backend == "remote":
        return {"backend": backend, "endpoint": settings.captioner_endpoint,
                "served_model": settings.captioner_endpoint_model or DEFAULT_SERVED_MODEL}
    spec = get_spec(CAPTIONER_KEY)
    gpu_default = DEFAULT_BY_DEVICE[CAPTIONER_KEY]["cuda"]
    source = resolve_source(CAPTIONER_KEY)
    return {
        "backend": backend, "base": source.location, "title": spec.title, "is_default": source.is_default,
        "radiology_trained": bool(spec.params.get("radiology_trained")), "adapter": adapter_info(),
        "gpu_default": gpu_default.title, "alternatives": [s.default_source for s in KNOWN_CHECKPOINTS[CAPTIONER_KEY]],
    }
