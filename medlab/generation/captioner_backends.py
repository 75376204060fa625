"""Load back-ends of the local captioner, small classes behind one interface.

LOAD_BACKENDS lists them in order of preference; `load_captioner` (the registry loader of
`captioner`) uses the first one that is usable on the device and falls back to the next
when a load fails:
- UnslothBackend: unsloth's `FastVisionModel` in 4-bit (CUDA only; unsloth raises on import
  without a GPU, so it is probed before use);
- TransformersBackend: `AutoModelForImageTextToText` + `AutoProcessor` (bitsandbytes 4-bit on
  CUDA when installed), any checkpoint with a chat template.
The remote OpenAI-compatible server is not a load back-end: see medlab.generation.captioner."""

from __future__ import annotations

import importlib.util
import logging
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from medlab.core.progress import Progress
from medlab.core.registry import ModelSource, ModelSpec
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


class UnslothBackend:
    name = "unsloth"

    def usable(self, device: str) -> bool:
        return device.startswith("cuda") and importlib.util.find_spec("unsloth") is not None

    def load(self, source: ModelSource, device: str, progress: Progress) -> LoadedWeights:
        from unsloth import (
            FastVisionModel,  # raises without a GPU, or on version mismatch
        )

        progress(0.2, "Loading the captioner with unsloth (4-bit)")
        model, processor = FastVisionModel.from_pretrained(source.location, load_in_4bit=True, revision=source.revision)
        return LoadedWeights(model, processor, True)

    def for_inference(self, model: Any) -> Any:
        from unsloth import FastVisionModel

        FastVisionModel.for_inference(model)
        model.eval()
        return model


def cpu_dtype(source: ModelSource) -> Any:  # noqa: ARG001 - the source is resolved again by key
    """float32 (fastest on a CPU) for small checkpoints, bfloat16 (half the memory) for big
    ones: the same rule the cache's memory estimate uses (medlab.core.loaders.planned_dtype)."""
    import torch

    from medlab.core.loaders import planned_dtype

    return getattr(torch, planned_dtype(CAPTIONER_KEY, "cpu") or "float32")


class TransformersBackend:
    name = "transformers"

    def usable(self, device: str) -> bool:
        return True

    def load(self, source: ModelSource, device: str, progress: Progress) -> LoadedWeights:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from medlab.core.loaders import hub_kwargs

        kwargs = hub_kwargs(source)
        progress(0.1, "Reading the captioner processor (tokenizer + image preprocessing)")
        processor = AutoProcessor.from_pretrained(
            source.location, **{k: v for k, v in kwargs.items() if k != "use_safetensors"}
        )
        quantized = False
        if device.startswith("cuda"):
            kwargs["dtype"] = torch.bfloat16
            kwargs["device_map"] = {"": device}
            if importlib.util.find_spec("bitsandbytes") is not None:
                from transformers import BitsAndBytesConfig

                kwargs["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
                )
                quantized = True
        else:
            kwargs["dtype"] = cpu_dtype(source)
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
            log.warning("%s could not load %s (%s: %s); trying %s", backend.name, source.location,
                        type(exc).__name__, exc, candidates[-1].name)
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
        model = attach_adapter(model, adapter, adapter_config, progress)
    model = backend.for_inference(model)
    return LoadedModel(
        spec.key, model, device, source, processor=weights.processor,
        extras={
            "adapter": adapter.location if adapter is not None else None,
            "backend": backend.name,
            "quantized_4bit": weights.quantized_4bit,
            "lock": threading.Lock(),
        },
    )

