"""Loaders: turn a resolved source into a LoadedModel (model + its preprocessing).

Each loader is named in the registry as "module:function" and imported on first use, so
importing medlab never imports torch. All loaders share the same rules: safetensors only
unless MEDLAB_ALLOW_PICKLE=1, never trust_remote_code, and Hub/IO failures become a
ModelUnavailableError that says why and how to fix it."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlab.core.cache import ModelCache, Progress
from medlab.core.config import cuda_expected, load_settings, resolve_device
from medlab.core.errors import InsufficientMemoryError, MedlabError, ModelUnavailableError
from medlab.core.registry import ModelSource, ModelSpec, get_spec, resolve_source

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


@dataclass
class LoadedModel:
    """A model bundled with everything needed to use it."""

    key: str
    model: Any
    device: str = "cpu"
    source: ModelSource | None = None
    # Each preprocessing piece has its own field, so a caller never has to guess what it holds.
    tokenizer: Any = None  # text -> token ids (seq2seq tokenizer, CLIP tokenizer, open_clip tokenizer)
    image_processor: Any = None  # transformers image processor (classifiers, CLIP's image side)
    transform: Any = None  # torchvision transform (open_clip's preprocess)
    processor: Any = None  # multimodal processor with a chat template (captioners) only
    extras: dict[str, Any] = field(default_factory=dict)


# -- helpers shared by loaders ------------------------------------------------------------
def hub_kwargs(source: ModelSource) -> dict[str, Any]:
    """from_pretrained kwargs that apply our safety rules."""
    settings = load_settings()
    kwargs: dict[str, Any] = {"trust_remote_code": False}
    if not settings.allow_pickle:
        kwargs["use_safetensors"] = True
    if source.revision and not source.is_local:
        kwargs["revision"] = source.revision
    return kwargs


def fix_hint(source: ModelSource) -> str:
    return (
        f"run `python -m medlab download {source.key}` on a machine with internet access "
        f"(weights go to the Hugging Face cache), or set {source.env_var} to a local model "
        "directory in the standard Hugging Face format."
    )


def check_local_dir(source: ModelSource) -> None:
    """Fail early and clearly when a local directory cannot hold a loadable model."""
    path = Path(source.location)
    if not path.is_dir():
        raise ModelUnavailableError(
            source.key, f"the directory {path} does not exist.", f"fix {source.env_var}."
        )
    files = [p for p in path.rglob("*") if p.is_file()]
    has_safe = any(p.suffix in WEIGHT_SUFFIXES for p in files)
    has_pickle = any(p.suffix in PICKLE_SUFFIXES for p in files)
    if not has_safe and has_pickle and not load_settings().allow_pickle:
        raise ModelUnavailableError(
            source.key,
            f"{path} only has pickle weights (.bin/.pt), which can run code when loaded.",
            "convert them to safetensors, or set MEDLAB_ALLOW_PICKLE=1 if you trust the files.",
        )


@contextlib.contextmanager
def translate_load_errors(source: ModelSource) -> Iterator[None]:
    """Turn the many ways a download/load can fail into one clear ModelUnavailableError."""
    try:
        yield
    except MedlabError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure is reported with its cause
        name = type(exc).__name__
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else name
        if source.is_local:
            reason = f"loading {source.location} failed ({name}: {text})."
            fix = f"check that {source.env_var} points at a complete model directory."
        elif "Gated" in name or "gated" in text.lower():
            reason = f"{source.location} is gated on the Hugging Face Hub."
            fix = "accept its licence on the Hub and set HF_TOKEN, or " + fix_hint(source)
        elif "RepositoryNotFound" in name or "404" in text:
            reason = f"{source.location} was not found on the Hugging Face Hub."
            fix = f"check the repo id, or set {source.env_var}."
        else:
            offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
            why = "offline mode is on (HF_HUB_OFFLINE)" if offline else "the Hub could not be reached"
            reason = (
                f"{source.location} is not in the local Hugging Face cache and {why} "
                f"({name}: {text})."
            )
            fix = fix_hint(source)
        raise ModelUnavailableError(source.key, reason, fix) from exc


def _prepare(spec: ModelSpec, source: ModelSource) -> None:
    if source.is_local:
        check_local_dir(source)


def _place(model: Any, device: str) -> Any:
    model = model.to(device)
    model.eval()
    return model


# -- the standard loaders ---------------------------------------------------------------
def _load_pretrained(
    spec: ModelSpec,
    source: ModelSource,
    device: str,
    progress: Progress,
    model_class: str,
    processor_class: str,
) -> LoadedModel:
    """from_pretrained a transformers model class and its preprocessing class by name, with
    the safety rules of hub_kwargs and errors translated for the user. The preprocessing
    lands in the LoadedModel field that names what it is (PREPROCESSING_FIELDS)."""
    _prepare(spec, source)
    with translate_load_errors(source):
        import transformers

        kwargs = hub_kwargs(source)
        progress(0.2, f"Reading {spec.key} preprocessing ({processor_class})")
        processor = getattr(transformers, processor_class).from_pretrained(
            source.location, **{k: v for k, v in kwargs.items() if k != "use_safetensors"}
        )
        progress(0.4, f"Reading {spec.key} weights")
        model = getattr(transformers, model_class).from_pretrained(source.location, **kwargs)
    return LoadedModel(spec.key, _place(model, device), device, source, **PREPROCESSING_FIELDS[processor_class](processor))


# What each transformers preprocessing class provides, as LoadedModel fields.
PREPROCESSING_FIELDS: dict[str, Any] = {
    "AutoImageProcessor": lambda p: {"image_processor": p},
    "AutoTokenizer": lambda p: {"tokenizer": p},
    "CLIPProcessor": lambda p: {"tokenizer": p.tokenizer, "image_processor": p.image_processor},
}


def load_image_classifier(
    spec: ModelSpec, source: ModelSource, device: str, progress: Progress
) -> LoadedModel:
    """Any AutoModelForImageClassification dir/repo (incl. timm via TimmWrapper)."""
    return _load_pretrained(spec, source, device, progress, "AutoModelForImageClassification", "AutoImageProcessor")


def load_seq2seq(spec: ModelSpec, source: ModelSource, device: str, progress: Progress) -> LoadedModel:
    """AutoModelForSeq2SeqLM + its tokenizer (FLAN-T5 and friends)."""
    return _load_pretrained(spec, source, device, progress, "AutoModelForSeq2SeqLM", "AutoTokenizer")


def load_clip(spec: ModelSpec, source: ModelSource, device: str, progress: Progress) -> LoadedModel:
    """transformers CLIPModel + CLIPProcessor (PLIP's format)."""
    return _load_pretrained(spec, source, device, progress, "CLIPModel", "CLIPProcessor")


def load_open_clip(spec: ModelSpec, source: ModelSource, device: str, progress: Progress) -> LoadedModel:
    """open_clip model in open_clip's "local-dir" format: open_clip_config.json (with
    model_cfg) + open_clip_model.safetensors, either a local dir or a Hub repo holding those
    files (e.g. timm/vit_base_patch32_clip_224.openai).

    Checked against open_clip 3.3.0 factory.py: "hf-hub:<repo>" silently falls back to
    RANDOM weights when the weight download fails (it only logs a warning) and may pick a
    pickle .bin, so for a Hub source we fetch the two files ourselves (safetensors only,
    pinned revision, errors surface) and load the snapshot folder through "local-dir:"."""
    _prepare(spec, source)
    with translate_load_errors(source):
        import open_clip

        progress(0.2, f"Reading {spec.key} config")
        if source.is_local:
            folder = Path(source.location)
            if not (folder / "open_clip_config.json").is_file():
                raise ModelUnavailableError(
                    spec.key, f"{folder} has no open_clip_config.json (open_clip's local-dir format).",
                    f"point {source.env_var} at a folder with open_clip_config.json and open_clip_model.safetensors.",
                )
            weights = sorted(folder.glob("*.safetensors"))
            if not weights and not load_settings().allow_pickle:
                raise ModelUnavailableError(
                    spec.key, f"{folder} has no .safetensors weights.",
                    "convert the checkpoint to open_clip_model.safetensors, or set MEDLAB_ALLOW_PICKLE=1 if you trust it.",
                )
        else:
            from huggingface_hub import hf_hub_download

            revision = source.revision
            config_path = hf_hub_download(source.location, "open_clip_config.json", revision=revision)
            progress(0.3, f"Reading {spec.key} weights")
            weights_path = hf_hub_download(source.location, "open_clip_model.safetensors", revision=revision)
            folder = Path(weights_path).parent
            if Path(config_path).parent != folder:  # both come from the same snapshot folder
                raise RuntimeError(f"config and weights of {source.location} resolved to different snapshots")
        name = f"local-dir:{folder}"
        progress(0.5, f"Building {spec.key}")
        model, _, preprocess = open_clip.create_model_and_transforms(name, device=device)
        tokenizer = open_clip.get_tokenizer(name)
    return LoadedModel(spec.key, _place(model, device), device, source, tokenizer=tokenizer, transform=preprocess)


def load_sentence_transformer(
    spec: ModelSpec, source: ModelSource, device: str, progress: Progress
) -> LoadedModel:
    _prepare(spec, source)
    with translate_load_errors(source):
        from sentence_transformers import SentenceTransformer

        progress(0.3, f"Reading {spec.key} weights")
        kwargs: dict[str, Any] = {"device": device, "trust_remote_code": False}
        if source.revision and not source.is_local:
            kwargs["revision"] = source.revision
        model = SentenceTransformer(source.location, **kwargs)
    model.eval()
    return LoadedModel(spec.key, model, device, source)


# -- memory estimates and the process-wide cache ------------------------------------------
def _dir_weight_bytes(path: Path) -> int:
    return sum(
        p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES + PICKLE_SUFFIXES
    )


def estimate_bytes(key: str) -> int:
    """Bytes a load of `key` will take, known before loading: the weight files for a local
    dir, else the spec's estimate for its default checkpoint."""
    spec = get_spec(key)
    try:
        source = resolve_source(key)
    except ModelUnavailableError:
        return 0
    if source.is_local and Path(source.location).is_dir():
        return _dir_weight_bytes(Path(source.location))
    return int(spec.memory_gb * 1024**3)


def check_hardware(key: str) -> None:
    """Refuse fast when a model obviously cannot run here (no GPU for an 11B, too little RAM)."""
    spec = get_spec(key)
    source = resolve_source(key)
    needed = estimate_bytes(key)
    if spec.needs_gpu and source.is_default:
        if not cuda_expected() and not os.environ.get("MEDLAB_ALLOW_CPU_LARGE"):
            import psutil

            avail = psutil.virtual_memory().available
            raise InsufficientMemoryError(
                key,
                f"{spec.title} needs a GPU: about {needed / 2**30:.0f} GB of weights in "
                f"{spec.dtype}, and this machine has no CUDA device "
                f"({avail / 2**30:.0f} GB RAM free; generation on CPU would take many minutes).",
                f"run the Space on GPU hardware, set {source.env_var} to a smaller Mllama checkpoint "
                "(or a local directory), or set MEDLAB_CAPTIONER_ENDPOINT to a remote server.",
            )


def load_model(key: str, progress: Progress) -> LoadedModel:
    """The cache's load function: resolve the source and call the spec's loader."""
    spec = get_spec(key)
    check_hardware(key)
    source = resolve_source(key)
    device = resolve_device()
    log.info("loading %s from %s (%s) on %s", key, source.location, "local" if source.is_local else "hub", device)
    return spec.resolve_loader()(spec, source, device, progress)


_CACHE: ModelCache | None = None
_CACHE_LOCK = threading.Lock()


def get_cache() -> ModelCache:
    """The one process-wide cache (created on first use, never at import)."""
    global _CACHE
    with _CACHE_LOCK:
        if _CACHE is None:
            _CACHE = ModelCache(
                load_fn=load_model,
                budget_bytes=lambda: load_settings().memory_budget_bytes(),
                estimate_fn=estimate_bytes,
            )
        return _CACHE


def reset_cache() -> None:
    """Drop the process-wide cache (tests, or after changing MEDLAB_MODEL_* at run time)."""
    global _CACHE
    with _CACHE_LOCK:
        if _CACHE is not None:
            _CACHE.clear()
        _CACHE = None


def get_model(key: str, progress: Progress | None = None) -> LoadedModel:
    return get_cache().get(key, progress)
