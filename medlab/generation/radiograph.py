"""Radiograph captioning (document 003): Llama-3.2-Vision + a radiology LoRA adapter.

Load paths (chosen in `load_captioner`):
- unsloth `FastVisionModel` in 4-bit when a CUDA device is used and unsloth imports
  (unsloth raises on import without a GPU, so the import is guarded);
- otherwise transformers `AutoModelForImageTextToText` + `AutoProcessor` (bitsandbytes 4-bit
  on CUDA when installed), with the adapter attached by peft `PeftModel` - NOT merged, so
  `disable_adapter()` can run the base model for the before/after comparison without a
  second copy of the weights.

Generation streams through `TextIteratorStreamer` in a worker thread; a stopping criterion
watches an Event so a closed consumer (the user pressed Stop, the browser went away)
ends the generation at the next token. One lock per loaded model serialises generation:
the adapter toggle is model-wide state, and one 11B model cannot serve two requests at once.

When MEDLAB_CAPTIONER_ENDPOINT is set, requests go to that OpenAI-compatible server instead
(medlab.generation.remote) and no local weights are loaded."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from medlab.core.progress import Progress
from medlab.core.config import load_settings
from medlab.core.errors import InputError, MedlabError, ModelUnavailableError
from medlab.core.registry import ModelSource, ModelSpec, resolve_source

log = logging.getLogger(__name__)

CAPTIONER_KEY = "captioner"
ADAPTER_KEY = "captioner_adapter"
# Document 003's instruction, used for training the adapter: keep it as the default.
DEFAULT_INSTRUCTION = "You are an expert radiographer. Describe accurately what you see in this image."
MAX_INSTRUCTION_CHARS = 2000
MAX_NEW_TOKENS_LIMIT = 1024
# Document 003 sampled with temperature 1.5 and min_p 0.1: very creative, fine for a demo of
# style but it invents findings. A low temperature keeps clinical text closer to the image.
DEFAULT_TEMPERATURE = 0.3
DEFAULT_MIN_P = 0.1
DEFAULT_MAX_NEW_TOKENS = 128
STREAM_TIMEOUT_S = 600.0  # no new text for this long: the worker is stuck
ADAPTER_OFF_VALUES = {"none", "off", "no", "0", "false"}


class InstructionError(InputError):
    """The instruction text cannot be used."""


@dataclass(frozen=True)
class CaptionSettings:
    """Generation settings exposed in the tab (document 003: 128 tokens, T=1.5, min_p=0.1)."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = DEFAULT_TEMPERATURE  # 0 = greedy (deterministic)
    min_p: float = DEFAULT_MIN_P
    use_adapter: bool = True

    def validated(self) -> CaptionSettings:
        try:
            tokens = int(self.max_new_tokens)
            temperature = float(self.temperature)
            min_p = float(self.min_p)
        except (TypeError, ValueError):
            raise InputError("Generation settings must be numbers.") from None
        if not 1 <= tokens <= MAX_NEW_TOKENS_LIMIT:
            raise InputError(f"max new tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT} (got {tokens}).")
        if not 0.0 <= temperature <= 2.0 or temperature != temperature:
            raise InputError(f"temperature must be between 0 and 2 (got {temperature}); 0 means greedy.")
        if not 0.0 <= min_p < 1.0 or min_p != min_p:
            raise InputError(f"min_p must be in [0, 1) (got {min_p}).")
        return replace(self, max_new_tokens=tokens, temperature=temperature, min_p=min_p,
                       use_adapter=bool(self.use_adapter))

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature)
            if self.min_p > 0:
                kwargs["min_p"] = self.min_p
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs


# -- sources ------------------------------------------------------------------------------
def adapter_source() -> ModelSource | None:
    """Where the LoRA adapter comes from, or None when MEDLAB_MODEL_CAPTIONER_ADAPTER=none
    (a plain Mllama, e.g. merged weights, without an adapter)."""
    raw = os.environ.get("MEDLAB_MODEL_CAPTIONER_ADAPTER", "").strip().lower()
    if raw in ADAPTER_OFF_VALUES:
        return None
    return resolve_source(ADAPTER_KEY)


def _read_adapter_config(source: ModelSource) -> dict[str, Any]:
    """adapter_config.json of a local dir or a Hub repo (one small file)."""
    from medlab.core.loaders import translate_load_errors

    with translate_load_errors(source):
        if source.is_local:
            path = Path(source.location) / "adapter_config.json"
            if not path.is_file():
                raise ModelUnavailableError(
                    ADAPTER_KEY,
                    f"{source.location} has no adapter_config.json, so it is not a PEFT adapter directory.",
                    f"point {source.env_var} at a directory written by peft's save_pretrained, or set it "
                    "to 'none' to run the base model alone.",
                )
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source.location, "adapter_config.json", revision=source.revision))
        return json.loads(path.read_text(encoding="utf-8"))


def load_adapter_config(spec: ModelSpec, source: ModelSource, device: str, progress: Progress) -> Any:
    """Registry loader of `captioner_adapter`: the adapter is attached by load_captioner, so
    loading this key on its own only reads and checks its configuration."""
    from medlab.core.loaders import LoadedModel

    progress(0.5, "Reading the adapter configuration")
    config = _read_adapter_config(source)
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise ModelUnavailableError(
            spec.key, f"{source.location} is a {config.get('peft_type')!r} adapter, not LoRA.",
            f"set {source.env_var} to a LoRA adapter directory.",
        )
    return LoadedModel(spec.key, None, device, source, extras={"config": config})


# -- loading ------------------------------------------------------------------------------
def _unsloth_importable(device: str) -> bool:
    return device.startswith("cuda") and importlib.util.find_spec("unsloth") is not None


def _bitsandbytes_usable(device: str) -> bool:
    return device.startswith("cuda") and importlib.util.find_spec("bitsandbytes") is not None


def _load_with_unsloth(source: ModelSource, progress: Progress) -> tuple[Any, Any] | None:
    """unsloth's 4-bit FastVisionModel, or None when unsloth cannot be used here."""
    try:
        from unsloth import FastVisionModel  # raises without a GPU, or on version mismatch
    except Exception as exc:  # noqa: BLE001 - any failure means: use the transformers path
        log.warning("unsloth is installed but could not be imported (%s); using transformers + peft", exc)
        return None
    progress(0.2, "Loading the captioner with unsloth (4-bit)")
    try:
        model, processor = FastVisionModel.from_pretrained(
            source.location, load_in_4bit=True, revision=source.revision
        )
    except Exception as exc:  # noqa: BLE001
        log.warning("unsloth could not load %s (%s); using transformers + peft", source.location, exc)
        return None
    return model, processor


def _load_with_transformers(source: ModelSource, device: str, progress: Progress) -> tuple[Any, Any, bool]:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from medlab.core.loaders import estimate_bytes, hub_kwargs

    kwargs = hub_kwargs(source)
    progress(0.1, "Reading the captioner processor (tokenizer + image tiling)")
    processor = AutoProcessor.from_pretrained(
        source.location, **{k: v for k, v in kwargs.items() if k != "use_safetensors"}
    )
    quantized = False
    if device.startswith("cuda"):
        kwargs["dtype"] = torch.bfloat16
        kwargs["device_map"] = {"": device}
        if _bitsandbytes_usable(device):
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
            )
            quantized = True
    else:
        # float32 is fastest on CPU for small checkpoints; halve the memory of big ones.
        kwargs["dtype"] = torch.bfloat16 if estimate_bytes(CAPTIONER_KEY) > 8 * 2**30 else torch.float32
    progress(0.3, "Reading the captioner weights" + (" (4-bit)" if quantized else ""))
    model = AutoModelForImageTextToText.from_pretrained(source.location, **kwargs)
    if not device.startswith("cuda"):
        model = model.to(device)
    return model, processor, quantized


def load_captioner(spec: ModelSpec, source: ModelSource, device: str, progress: Progress) -> Any:
    """Registry loader of `captioner`: base Mllama + (optionally) the LoRA adapter."""
    from medlab.core.loaders import LoadedModel, check_local_dir, translate_load_errors

    if source.is_local:
        check_local_dir(source)
    adapter = adapter_source()
    if adapter is not None:
        adapter_config = _read_adapter_config(adapter)  # fail before the slow base load
        if adapter.is_local:
            check_local_dir(adapter)
    backend = "transformers"
    quantized = False
    with translate_load_errors(source):
        loaded = _load_with_unsloth(source, progress) if _unsloth_importable(device) else None
        if loaded is not None:
            model, processor = loaded
            backend, quantized = "unsloth", True
        else:
            model, processor, quantized = _load_with_transformers(source, device, progress)
    if adapter is not None:
        progress(0.8, "Attaching the LoRA adapter")
        with translate_load_errors(adapter):
            from peft import PeftModel

            kwargs: dict[str, Any] = {"is_trainable": False}
            if adapter.revision and not adapter.is_local:
                kwargs["revision"] = adapter.revision
            model = PeftModel.from_pretrained(model, adapter.location, **kwargs)
        log.info("attached LoRA adapter %s (r=%s, alpha=%s)", adapter.location,
                 adapter_config.get("r"), adapter_config.get("lora_alpha"))
    if backend == "unsloth":
        from unsloth import FastVisionModel

        FastVisionModel.for_inference(model)
    model.eval()
    return LoadedModel(
        spec.key, model, device, source, processor=processor,
        extras={
            "adapter": adapter.location if adapter is not None else None,
            "backend": backend,
            "quantized_4bit": quantized,
            "lock": threading.Lock(),
        },
    )


# -- streaming generation (shared with the impression task) -------------------------------
class _EventStop:
    """Stopping criterion: stop every sequence once `event` is set."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def stream_generate(
    model: Any,
    tokenizer: Any,
    inputs: dict[str, Any],
    generate_kwargs: dict[str, Any],
    *,
    lock: threading.Lock | None = None,
    cancel: threading.Event | None = None,
    context: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    timeout: float = STREAM_TIMEOUT_S,
) -> Iterator[str]:
    """Run model.generate in a worker thread and yield the accumulated text as it grows.

    Closing the generator (or setting `cancel`) stops generation at the next token. `lock`
    serialises use of one model object; `context` wraps the call (e.g. disable_adapter)."""
    from transformers import StoppingCriteriaList, TextIteratorStreamer

    cancel = cancel if cancel is not None else threading.Event()
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout)
    errors: list[BaseException] = []

    def work() -> None:
        import torch

        try:
            with lock if lock is not None else contextlib.nullcontext():
                if cancel.is_set():  # the consumer left while we waited for the lock
                    streamer.end()
                    return
                with torch.inference_mode(), (context() if context else contextlib.nullcontext()):
                    model.generate(
                        **inputs, **generate_kwargs, streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_EventStop(cancel)]),
                    )
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer's thread
            errors.append(exc)
            streamer.end()  # unblock the consumer

    worker = threading.Thread(target=work, name="medlab-generate", daemon=True)
    worker.start()
    text = ""
    yielded = False
    try:
        try:
            for piece in streamer:
                if piece:
                    text += piece
                    yielded = True
                    yield text
        except queue.Empty:
            raise ModelUnavailableError(
                getattr(model, "name_or_path", "model"),
                f"generation produced no text for {timeout:.0f} s.", "try again, or restart the app.",
            ) from None
        worker.join()
        if errors:
            exc = errors[0]
            if isinstance(exc, MedlabError):
                raise exc
            raise ModelUnavailableError(
                "generation", f"the model failed while generating ({type(exc).__name__}: {exc}).",
                "check the model files; report the error if it persists.",
            ) from exc
        if not yielded:
            yield text
    finally:
        cancel.set()  # no-op after normal completion; stops the worker if we were closed early
        worker.join(timeout=5.0)


# -- captioning ---------------------------------------------------------------------------
def load_radiograph(image: Any) -> Any:
    """A PIL RGB image from a PIL image or a path (image file or DICOM, auto window)."""
    from PIL import Image

    if image is None:
        raise InputError("Please upload a radiograph image first.")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    from medlab.io.imaging import load_any

    return load_any(str(image), window="auto").image


def check_instruction(instruction: str | None) -> str:
    text = (instruction or "").strip() or DEFAULT_INSTRUCTION
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise InstructionError(
            f"The instruction is {len(text)} characters long; keep it under {MAX_INSTRUCTION_CHARS}."
        )
    return text


def chat_messages(instruction: str) -> list[dict[str, Any]]:
    """Document 003's chat layout: one user turn holding [image, instruction]."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]


def captioner_backend() -> str:
    """'remote' when MEDLAB_CAPTIONER_ENDPOINT is set, else 'local'."""
    return "remote" if load_settings().captioner_endpoint else "local"


def _preprocess(loaded: Any, image: Any, instruction: str) -> dict[str, Any]:
    processor = loaded.processor
    prompt = processor.apply_chat_template(chat_messages(instruction), add_generation_prompt=True)
    # The template already starts with <|begin_of_text|>: do not add it twice.
    inputs = processor(images=image, text=prompt, add_special_tokens=False, return_tensors="pt")
    return {k: v.to(loaded.device) if hasattr(v, "to") else v for k, v in inputs.items()}


def _adapter_context(loaded: Any, use_adapter: bool) -> Callable[[], contextlib.AbstractContextManager[Any]] | None:
    if use_adapter:
        return None
    if loaded.extras.get("adapter") is None:
        raise InputError("No LoRA adapter is attached (MEDLAB_MODEL_CAPTIONER_ADAPTER=none): the model "
                         "already runs as the base model.")
    return loaded.model.disable_adapter


def get_captioner(progress: Progress | None = None) -> Any:
    """The loaded captioner, refusing fast (with the memory reason) where it cannot run."""
    from medlab.core.loaders import check_hardware, get_model

    check_hardware(CAPTIONER_KEY)  # before the cache's budget check: it names the GPU as the fix
    return get_model(CAPTIONER_KEY, progress)


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
    if captioner_backend() == "remote":
        if not settings.use_adapter:
            raise InputError(
                "The remote server serves one (merged) model, so the base-model toggle only works with "
                "local weights. Unset MEDLAB_CAPTIONER_ENDPOINT to compare base and fine-tuned."
            )
        from medlab.generation.remote import stream_chat

        pil = load_radiograph(image)
        yield from stream_chat(pil, text, settings, cancel=cancel)
        return
    from medlab.core.loaders import check_hardware

    check_hardware(CAPTIONER_KEY)  # refuse an impossible model before anything else
    pil = load_radiograph(image)  # bad input fails before a (slow) model load
    loaded = get_captioner(progress)
    inputs = _preprocess(loaded, pil, text)
    started = time.perf_counter()
    yield from stream_generate(
        loaded.model, loaded.processor.tokenizer, inputs, settings.generate_kwargs(),
        lock=loaded.extras.get("lock"), cancel=cancel, context=_adapter_context(loaded, settings.use_adapter),
    )
    log.info("caption (adapter=%s) took %.2fs", settings.use_adapter, time.perf_counter() - started)


def caption(image: Any, instruction: str | None = None, settings: CaptionSettings | None = None) -> str:
    """The whole description (non-streamed convenience wrapper)."""
    text = ""
    for text in caption_stream(image, instruction, settings):
        pass
    return text


def next_token_logits(image: Any, instruction: str | None = None, use_adapter: bool = True) -> Any:
    """Logits of the first generated token, with or without the adapter (a 1-D CPU tensor).

    Shows students, below the level of sampled text, that the adapter changes the computation."""
    import torch

    loaded = get_captioner()
    inputs = _preprocess(loaded, load_radiograph(image), check_instruction(instruction))
    context = _adapter_context(loaded, use_adapter)
    lock = loaded.extras.get("lock") or contextlib.nullcontext()
    with lock, torch.inference_mode(), (context() if context else contextlib.nullcontext()):
        logits = loaded.model(**inputs).logits[0, -1]
    return logits.float().cpu()


def adapter_info() -> dict[str, Any]:
    """What the adapter is (for the tab): source, rank, alpha, targets - read without loading
    the base model. Empty when no adapter is configured or its config cannot be read."""
    try:
        source = adapter_source()
        if source is None:
            return {}
        if not source.is_local:
            from medlab.core.status import hub_cached_snapshot

            snap = hub_cached_snapshot(source.location, source.revision)
            if snap is None:
                return {"source": source.location}
            source = replace(source, location=str(snap), is_local=True)
        config = _read_adapter_config(source)
    except MedlabError:
        return {}
    return {
        "source": source.location,
        "r": config.get("r"),
        "lora_alpha": config.get("lora_alpha"),
        "target_modules": config.get("target_modules"),
        "base_model": config.get("base_model_name_or_path"),
    }

