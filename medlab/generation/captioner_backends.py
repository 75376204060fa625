"""Load back-ends of the local captioner, small classes behind one interface.

LOAD_BACKENDS lists them in order of preference; `load_captioner` (the registry loader of
`captioner`) uses the first one that is usable on the device and falls back to the next
when a load fails:
- UnslothBackend: unsloth's `FastVisionModel` in 4-bit (CUDA only; unsloth raises on import
  without a GPU, so it is probed before use). unsloth patches transformers when it is imported,
  so it must be imported BEFORE transformers: `import_unsloth_first()` does that at start-up
  where unsloth will be used. It loads with the same rules as every loader (the device
  MEDLAB_DEVICE names, safetensors only, no remote code, the exact repo and revision asked for);
- TransformersBackend: `AutoModelForImageTextToText` + `AutoProcessor` (bitsandbytes 4-bit on
  CUDA when installed), any checkpoint with a chat template.
The remote OpenAI-compatible server is not a load back-end: see medlab.generation.captioner."""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
import traceback
from dataclasses import dataclass
from typing import Any, Protocol

from medlab.core.memory import free_memory
from medlab.core.progress import Progress
from medlab.core.registry import ModelSource
from medlab.core.specs import ModelSpec
from medlab.generation.captioner_adapter import (
    CAPTIONER_KEY,
    adapter_source,
    attach_adapter,
    check_lora_config,
    read_adapter_config,
)

log = logging.getLogger(__name__)


@dataclass
class LoadedWeights:
    model: Any
    processor: Any
    quantized_4bit: bool


class LoadBackend(Protocol):
    name: str

    def usable(self, device: str) -> bool:
        """Whether this back-end can run on `device` here (cheap: no weights are read)."""

    def load(self, source: ModelSource, device: str, progress: Progress) -> LoadedWeights:
        """The base model and its processor; raises on failure."""

    def for_inference(self, model: Any) -> Any:
        """The model switched to inference mode."""


_UNSLOTH_IMPORT_FAILED: list[str] = []  # the reason, once an import of unsloth has failed


def _unsloth_installed() -> bool:
    try:
        return importlib.util.find_spec("unsloth") is not None
    except ValueError:  # a module object without __spec__ in sys.modules
        return "unsloth" in sys.modules


def unsloth_wanted() -> bool:
    """Whether the local captioner will try unsloth here: a CUDA device is expected and
    unsloth is installed (cheap: reads the driver's device list, imports nothing heavy)."""
    from medlab.core.config import cuda_expected, load_settings

    return (not load_settings().captioner_endpoint and cuda_expected() and _unsloth_installed()
            and not _UNSLOTH_IMPORT_FAILED)


def import_unsloth_first() -> bool:
    """Import unsloth now if it will be used, so that it comes before transformers (it patches
    transformers' classes on import). Call at start-up, before any model loads. True when
    unsloth is imported."""
    if "unsloth" in sys.modules:
        return True
    if not unsloth_wanted():
        return False
    if "transformers" in sys.modules:
        log.warning("transformers was imported before unsloth; unsloth's patches may be incomplete. "
                    "Call medlab.generation.captioner_backends.import_unsloth_first() at start-up.")
    try:
        import unsloth  # noqa: F401 - imported for its patches
    except Exception as exc:  # noqa: BLE001 - raises without a usable GPU or on version mismatch
        _UNSLOTH_IMPORT_FAILED.append(f"{type(exc).__name__}: {exc}")
        log.warning("unsloth is installed but could not be imported (%s); the captioner uses transformers + peft", exc)
        return False
    return True


class UnslothBackend:
    name = "unsloth"

    def usable(self, device: str) -> bool:
        return device.startswith("cuda") and _unsloth_installed() and not _UNSLOTH_IMPORT_FAILED

    def load(self, source: ModelSource, device: str, progress: Progress) -> LoadedWeights:
        from medlab.core.loaders import hub_kwargs

        if not import_unsloth_first() and "unsloth" not in sys.modules:
            raise RuntimeError(f"unsloth cannot be imported here ({'; '.join(_UNSLOTH_IMPORT_FAILED) or 'unknown'})")
        from unsloth import FastVisionModel

        progress(0.2, "Loading the captioner with unsloth (4-bit)")
        model, processor = FastVisionModel.from_pretrained(
            source.location, load_in_4bit=True,
            device_map={"": device},  # MEDLAB_DEVICE, not unsloth's "sequential" spread over every GPU
            use_exact_model_name=True,  # the repo named, not unsloth's pre-quantised look-alike
            **hub_kwargs(source),  # safetensors only unless allowed, never remote code, pinned revision
        )
        return LoadedWeights(model, processor, True)

    def for_inference(self, model: Any) -> Any:
        from unsloth import FastVisionModel

        FastVisionModel.for_inference(model)
        model.eval()
        return model


class TransformersBackend:
    name = "transformers"

    def usable(self, device: str) -> bool:
        return True

    def load(self, source: ModelSource, device: str, progress: Progress) -> LoadedWeights:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from medlab.core.loaders import hub_kwargs, planned_4bit, planned_dtype

        kwargs = hub_kwargs(source)
        progress(0.1, "Reading the captioner processor (tokenizer + image preprocessing)")
        processor = AutoProcessor.from_pretrained(
            source.location, **{k: v for k, v in kwargs.items() if k != "use_safetensors"}
        )
        # dtype and 4-bit follow the same rules as the cache's memory estimate
        kwargs["dtype"] = getattr(torch, planned_dtype(CAPTIONER_KEY, device) or "float32")
        quantized = planned_4bit(CAPTIONER_KEY, device)
        if device.startswith("cuda"):
            kwargs["device_map"] = {"": device}
        if quantized:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
            )
        progress(0.3, "Reading the captioner weights" + (" (4-bit)" if quantized else ""))
        model = AutoModelForImageTextToText.from_pretrained(source.location, **kwargs)
        if not device.startswith("cuda"):
            model = model.to(device)
        return LoadedWeights(model, processor, quantized)

    def for_inference(self, model: Any) -> Any:
        model.eval()
        return model


LOAD_BACKENDS: tuple[LoadBackend, ...] = (UnslothBackend(), TransformersBackend())


def _load_base(source: ModelSource, device: str, progress: Progress) -> tuple[LoadBackend, LoadedWeights]:
    """The base weights from the first usable back-end that loads them."""
    from medlab.core.load_errors import translate_load_errors

    candidates = [b for b in LOAD_BACKENDS if b.usable(device)]
    for backend in candidates[:-1]:
        try:
            return backend, backend.load(source, device, progress)
        except Exception as exc:  # noqa: BLE001 - any failure means: try the next back-end
            # Log text, not the exception: a handler that keeps records would keep its frames.
            log.warning("%s could not load %s (%s); trying %s", backend.name, source.location,
                        f"{type(exc).__name__}: {exc}", candidates[-1].name)
            traceback.clear_frames(exc.__traceback__)  # drop the locals that hold half-loaded weights
        # Outside the except block: the traceback, and the half-loaded weights its frames hold,
        # are gone, so the memory can really be released before the next back-end loads.
        free_memory()
    last = candidates[-1]
    with translate_load_errors(source):
        return last, last.load(source, device, progress)


def load_captioner(spec: ModelSpec, source: ModelSource, device: str, progress: Progress) -> Any:
    """Registry loader of `captioner`: the base model + (optionally) the LoRA adapter."""
    from medlab.core.loaders import LoadedModel, check_local_dir

    if source.is_local:
        check_local_dir(source)
    adapter = adapter_source()
    adapter_config: dict[str, Any] = {}
    if adapter is not None:
        adapter_config = read_adapter_config(adapter)  # fail before the slow base load
        check_lora_config(adapter_config, adapter)
        if adapter.is_local:
            check_local_dir(adapter)
    backend, weights = _load_base(source, device, progress)
    model = weights.model
    if adapter is not None:
        try:
            model = attach_adapter(model, adapter, adapter_config, progress)
        except BaseException as exc:
            # The base weights are useless without the adapter asked for: release them now
            # rather than when the error (and its frames) are finally dropped.
            traceback.clear_frames(exc.__traceback__)
            del model, weights
            free_memory()
            raise
    model = backend.for_inference(model)
    # The spec's preprocessing settings describe its own checkpoint only, not any other one
    # MEDLAB_MODEL_CAPTIONER may name.
    processor_kwargs = dict(spec.params.get("processor_kwargs", {})) if source.location == spec.default_source else {}
    return LoadedModel(
        spec.key, model, device, source, processor=weights.processor,
        extras={
            "adapter": adapter.location if adapter is not None else None,
            "backend": backend.name,
            "quantized_4bit": weights.quantized_4bit,
            "processor_kwargs": processor_kwargs,
            "lock": threading.Lock(),
        },
    )

