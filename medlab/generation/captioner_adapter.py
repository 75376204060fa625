"""The captioner's optional PEFT LoRA adapter: where it comes from, its configuration, and
attaching it to a loaded base model (NOT merged, so `disable_adapter()` can run the base
model for the before/after comparison without a second copy of the weights)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from medlab.core.config import model_env_var
from medlab.core.errors import MedlabError, ModelUnavailableError
from medlab.core.progress import Progress
from medlab.core.registry import ModelSource, get_spec, resolve_source
from medlab.core.specs import ModelSpec

log = logging.getLogger(__name__)

CAPTIONER_KEY = "captioner"
ADAPTER_KEY = "captioner_adapter"
ADAPTER_OFF_VALUES = {"none", "off", "no", "0", "false"}


def adapter_source() -> ModelSource | None:
    """Where the LoRA adapter comes from, or None for the base model alone.

    MEDLAB_MODEL_CAPTIONER_ADAPTER names one (a PEFT LoRA dir or Hub repo) or turns it off
    ('none'). Unset, the registry's default adapter is attached only to the default base model
    it was trained for (a captioner spec with params["default_adapter"]): switching the base
    with MEDLAB_MODEL_CAPTIONER alone never pairs it with another model's adapter."""
    raw = os.environ.get(model_env_var(ADAPTER_KEY), "").strip()
    if raw.lower() in ADAPTER_OFF_VALUES:
        return None
    if not raw:
        spec = get_spec(CAPTIONER_KEY)
        if not spec.params.get("default_adapter") or not resolve_source(CAPTIONER_KEY).is_default:
            return None
    return resolve_source(ADAPTER_KEY)


def read_adapter_config(source: ModelSource) -> dict[str, Any]:
    """adapter_config.json of a local dir or a Hub repo (one small file)."""
    from medlab.core.load_errors import translate_load_errors

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


def check_lora_config(config: dict[str, Any], source: ModelSource) -> None:
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise ModelUnavailableError(
            ADAPTER_KEY, f"{source.location} is a {config.get('peft_type')!r} adapter, not LoRA.",
            f"set {source.env_var} to a LoRA adapter directory.",
        )


def load_adapter_config(spec: ModelSpec, source: ModelSource, device: str, progress: Progress) -> Any:
    """Registry loader of `captioner_adapter`: the adapter is attached by the captioner's
    loader, so loading this key on its own only reads and checks its configuration."""
    from medlab.core.loaders import LoadedModel

    progress(0.5, "Reading the adapter configuration")
    config = read_adapter_config(source)
    check_lora_config(config, source)
    return LoadedModel(spec.key, None, device, source, extras={"config": config})


def attach_adapter(model: Any, adapter: ModelSource, config: dict[str, Any], progress: Progress) -> Any:
    """The base model wrapped in peft's PeftModel with the adapter loaded (not merged), after
    checking that it really took: LoRA layers were injected and every weight in the file found
    its module (peft only warns about missing keys and ignores unexpected ones, which would
    leave a silently partial or no-op adapter)."""
    from medlab.core.load_errors import translate_load_errors

    progress(0.8, "Attaching the LoRA adapter")
    with translate_load_errors(adapter):
        from peft import LoraConfig, PeftModel
        from peft.auto import MODEL_TYPE_TO_PEFT_MODEL_MAPPING

        hub: dict[str, Any] = {"revision": adapter.revision} if adapter.revision and not adapter.is_local else {}
        lora = LoraConfig.from_pretrained(adapter.location, **hub)
        lora.inference_mode = True
        # What PeftModel.from_pretrained does, keeping load_adapter's result to check it.
        wrapper = MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(lora.task_type, PeftModel)
        model = wrapper(model, lora, ADAPTER_NAME)
        result = model.load_adapter(adapter.location, ADAPTER_NAME, is_trainable=False, **hub)
    verify_adapter(model, result, adapter)
    log.info("attached LoRA adapter %s (r=%s, alpha=%s)", adapter.location, config.get("r"), config.get("lora_alpha"))
    return model


ADAPTER_NAME = "default"


def verify_adapter(model: Any, result: Any, adapter: ModelSource) -> None:
    """Raise ModelUnavailableError unless LoRA layers are attached and the file's keys matched."""
    from peft.tuners.lora import LoraLayer

    layers = sum(1 for m in model.modules() if isinstance(m, LoraLayer) and ADAPTER_NAME in m.lora_A)
    missing = [k for k in result.missing_keys if "lora_" in k]
    unexpected = list(result.unexpected_keys)
    problems = []
    if layers == 0:
        problems.append("no LoRA layer was attached (its target_modules match no module of the base model)")
    if missing:
        problems.append(f"{len(missing)} LoRA weight(s) of the attached layers are missing from the file "
                        f"(e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} weight(s) in the file match no module of the base model "
                        f"(e.g. {unexpected[0]})")
    if problems:
        raise ModelUnavailableError(
            ADAPTER_KEY,
            f"the adapter {adapter.location} does not fit the base model: " + "; ".join(problems) + ".",
            f"point {adapter.env_var} at an adapter trained for this base model (its adapter_config.json names "
            "base_model_name_or_path), or set it to 'none'.",
        )


def uses_adapter() -> bool:
    """Whether an adapter is configured for the captioner (True when its setting is broken,
    so the UI shows why)."""
    try:
        return adapter_source() is not None
    except MedlabError:
        return True


def adapter_info() -> dict[str, Any]:
    """What the adapter is (for the tab): source, rank, alpha, targets - read without loading
    the base model. Empty when no adapter is configured; {"source", "error"} when the setting
    or the adapter's configuration cannot be used, with the reason."""
    source: ModelSource | None = None
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
        config = read_adapter_config(source)
        check_lora_config(config, source)
    except MedlabError as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        fix = getattr(exc, "fix", "")
        return {"source": source.location if source else None, "error": reason + (f" Fix: {fix}" if fix else "")}
    return {
        "source": source.location,
        "r": config.get("r"),
        "lora_alpha": config.get("lora_alpha"),
        "target_modules": config.get("target_modules"),
        "base_model": config.get("base_model_name_or_path"),
    }
