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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlab.core.cache import ModelCache, normalize_device
from medlab.core.config import cuda_expected, load_settings, resolve_device
from medlab.core.errors import InsufficientMemoryError, ModelUnavailableError
from medlab.core.load_errors import translate_load_errors
from medlab.core.progress import Progress
from medlab.core.registry import ModelSource, get_spec, resolve_source
from medlab.core.specs import ModelSpec
from medlab.core.weights import (
    check_state_dict_coverage,
    check_transformers_coverage,
    planned_bytes,
    safetensors_summary,
)

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


def _prepare(spec: ModelSpec, source: ModelSource) -> None:
    if source.is_local:
        check_local_dir(source)


def local_files(source: ModelSource, progress: Progress, wanted: str = "*.safetensors") -> str:
    """The folder to load from: the local dir itself, or the Hub snapshot fetched into the
    cache (inside translate_load_errors, so the Hub's typed errors explain a failure)."""
    from medlab.core.weights import check_safetensors_files

    if source.is_local:
        check_safetensors_files(source.key, Path(source.location), source.env_var)
        return source.location
    from medlab.core.hub import fetch_snapshot, require_weights

    folder = fetch_snapshot(source, progress)
    require_weights(source, folder, wanted)
    check_safetensors_files(source.key, folder)
    return str(folder)


def _place(model: Any, device: str) -> Any:
    model = model.to(device)
    model.eval()
    return model


# -- the standard loaders ---------------------------------------------------------------
def load_pretrained(
    spec: ModelSpec,
    source: ModelSource,
    device: str,
    progress: Progress,
    model_class: str,
    processor_class: str,
) -> LoadedModel:
    """from_pretrained a transformers model class and its preprocessing class by name, with
    the safety rules of hub_kwargs and errors translated for the user. The preprocessing
    lands in the LoadedModel field that names what it is (PREPROCESSING_FIELDS). A
    checkpoint that leaves parameters uninitialised is refused (no random weights)."""
    _prepare(spec, source)
    with translate_load_errors(source, device):
        folder = local_files(source, progress)
        import transformers

        kwargs = {k: v for k, v in hub_kwargs(source).items() if k != "revision"}  # a local folder now
        progress(0.4, f"Reading {spec.key} preprocessing ({processor_class})")
        processor = getattr(transformers, processor_class).from_pretrained(
            folder, **{k: v for k, v in kwargs.items() if k != "use_safetensors"}
        )
        progress(0.5, f"Reading {spec.key} weights")
        model, info = getattr(transformers, model_class).from_pretrained(folder, output_loading_info=True, **kwargs)
    check_transformers_coverage(spec.key, info, _coverage_fix(source))
    return LoadedModel(spec.key, _place(model, device), device, source, **PREPROCESSING_FIELDS[processor_class](processor))


def _coverage_fix(source: ModelSource) -> str:
    return (f"point {source.env_var} at a complete checkpoint of this architecture (every weight in "
            ".safetensors files).")


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
    return load_pretrained(spec, source, device, progress, "AutoModelForImageClassification", "AutoImageProcessor")


def load_seq2seq(spec: ModelSpec, source: ModelSource, device: str, progress: Progress) -> LoadedModel:
    """AutoModelForSeq2SeqLM + its tokenizer (FLAN-T5 and friends)."""
    return load_pretrained(spec, source, device, progress, "AutoModelForSeq2SeqLM", "AutoTokenizer")


def load_clip(spec: ModelSpec, source: ModelSource, device: str, progress: Progress) -> LoadedModel:
    """transformers CLIPModel + CLIPProcessor (PLIP's format)."""
    return load_pretrained(spec, source, device, progress, "CLIPModel", "CLIPProcessor")


def load_open_clip(spec: ModelSpec, source: ModelSource, device: str, progress: Progress) -> LoadedModel:
    """open_clip model in open_clip's "local-dir" format: open_clip_config.json (with
    model_cfg) + open_clip_model.safetensors, either a local dir or a Hub repo holding those
    files (e.g. timm/vit_base_patch32_clip_224.openai).

    Checked against open_clip 3.3.0 factory.py: "hf-hub:<repo>" silently falls back to
    RANDOM weights when the weight download fails (it only logs a warning) and may pick a
    pickle .bin, so for a Hub source we fetch the snapshot ourselves (safetensors only,
    pinned revision, errors surface) and load the folder through "local-dir:", with
    require_pretrained so a folder without loadable weights fails instead of serving random ones."""
    _prepare(spec, source)
    with translate_load_errors(source, device):
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
            pickled = [p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
            if not weights and not pickled:
                raise ModelUnavailableError(
                    spec.key, f"{folder} has no weights (no open_clip_model.safetensors).",
                    f"point {source.env_var} at a folder with open_clip_config.json and open_clip_model.safetensors.",
                )
            if not weights and not load_settings().allow_pickle:
                raise ModelUnavailableError(
                    spec.key, f"{folder} has no .safetensors weights.",
                    "convert the checkpoint to open_clip_model.safetensors, or set MEDLAB_ALLOW_PICKLE=1 if you trust it.",
                )
        else:
            folder = Path(local_files(source, progress, "open_clip_model.safetensors"))
        name = f"local-dir:{folder}"
        progress(0.5, f"Building {spec.key}")
        # require_pretrained: open_clip otherwise serves a randomly initialised model when the
        # folder has no loadable weights (it only logs a warning); its full load is strict.
        model, _, preprocess = open_clip.create_model_and_transforms(name, device=device, require_pretrained=True)
        tokenizer = open_clip.get_tokenizer(name)
    return LoadedModel(spec.key, _place(model, device), device, source, tokenizer=tokenizer, transform=preprocess)


def load_sentence_transformer(
    spec: ModelSpec, source: ModelSource, device: str, progress: Progress
) -> LoadedModel:
    """A sentence-transformers model (dir or Hub repo); safetensors only unless allowed, and
    every weight of its transformer module must come from the checkpoint."""
    _prepare(spec, source)
    with translate_load_errors(source, device):
        from sentence_transformers import SentenceTransformer

        progress(0.3, f"Reading {spec.key} weights")
        kwargs: dict[str, Any] = {"device": device, "trust_remote_code": False}
        if not load_settings().allow_pickle:
            kwargs["model_kwargs"] = {"use_safetensors": True}
        if source.revision and not source.is_local:
            kwargs["revision"] = source.revision
        folder = Path(local_files(source, progress))
        kwargs.pop("revision", None)
        model = SentenceTransformer(str(folder), **kwargs)
    _check_sentence_transformer(spec.key, model, folder, _coverage_fix(source))
    model.eval()
    return LoadedModel(spec.key, model, device, source)


def _check_sentence_transformer(key: str, model: Any, folder: Path, fix: str) -> None:
    """Each Transformer module's parameters must all be in the .safetensors files beside it
    (sentence-transformers only logs the weights it had to initialise randomly)."""
    files = sorted(folder.rglob("*.safetensors"))
    if not files:
        if load_settings().allow_pickle:
            return  # pickle weights allowed: sentence-transformers loaded them (strict-checked by torch below)
        raise ModelUnavailableError(key, f"{folder} has no .safetensors weights.", fix)
    names = safetensors_summary(files).names
    for module in model.modules():
        auto = getattr(module, "auto_model", None)
        if auto is None:
            continue
        prefix = getattr(auto, "base_model_prefix", "")
        have = set(names) | {n[len(prefix) + 1:] for n in names if prefix and n.startswith(prefix + ".")}
        check_state_dict_coverage(key, auto, have, fix)


# -- memory estimates and the process-wide cache ------------------------------------------
def _dir_weight_bytes(path: Path) -> int:
    return sum(
        p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES + PICKLE_SUFFIXES
    )


def planned_device() -> str:
    """The device models are placed on ('cpu', 'cuda:0', ...)."""
    return normalize_device(resolve_device())


def _bitsandbytes_4bit(spec: ModelSpec, device: str) -> bool:
    import importlib.util

    return (bool(spec.quantize_4bit_on_cuda) and device.startswith("cuda")
            and importlib.util.find_spec("bitsandbytes") is not None)


def _load_dtype(spec: ModelSpec, device: str, bf16_bytes: int) -> str | None:
    """The dtype the loader forces, None when it keeps the checkpoint's (transformers' "auto")."""
    if spec.key != "captioner":
        return None
    if device.startswith("cuda"):
        return "bfloat16"
    # float32 is fastest on a CPU; big checkpoints stay in bfloat16 (half the memory).
    return "bfloat16" if bf16_bytes > 8 * 2**30 else "float32"


def estimate_bytes(key: str, device: str | None = None) -> int:
    """Bytes a load of `key` will take on `device` (default: the planned device), known
    before loading: counted from the safetensors headers of a local dir (or the weight file
    sizes), else the spec's size for its default checkpoint; then converted to the dtype the
    loader uses there, and to 4-bit where the captioner is quantised."""
    spec = get_spec(key)
    try:
        source = resolve_source(key)
    except ModelUnavailableError:
        return 0
    device = device or planned_device()
    numel, stored = _numel_and_stored(spec, source)
    return planned_bytes(stored, numel, _load_dtype(spec, device, numel * 2), _bitsandbytes_4bit(spec, device))


def _numel_and_stored(spec: ModelSpec, source: ModelSource) -> tuple[int, int]:
    """(parameter count, stored bytes) of a source, from safetensors headers where it can."""
    numel, stored = 0, 0
    if source.is_local and Path(source.location).is_dir():
        files = sorted(Path(source.location).rglob("*.safetensors"))
        try:
            summary = safetensors_summary(files)
            numel, stored = summary.numel, summary.stored_bytes
        except (OSError, ValueError, KeyError):
            stored = 0
        stored = stored or _dir_weight_bytes(Path(source.location))
    else:
        stored = int(spec.memory_gb * 1024**3)
        from medlab.core.weights import DTYPE_BYTES

        numel = stored // DTYPE_BYTES.get(spec.dtype, 4)
    return numel, stored


def planned_4bit(key: str, device: str) -> bool:
    """Whether a load of `key` on `device` quantises to 4-bit (bitsandbytes): the loader and
    the memory estimate ask this one rule."""
    return _bitsandbytes_4bit(get_spec(key), device)


def planned_dtype(key: str, device: str) -> str | None:
    """The dtype a load of `key` on `device` uses (None: the checkpoint's own). One rule for
    the loader and for the memory estimate, so the estimate describes what is loaded."""
    spec = get_spec(key)
    numel, _ = _numel_and_stored(spec, resolve_source(key))
    return _load_dtype(spec, device, numel * 2)


def estimate_placement(key: str) -> tuple[str, int]:
    """(device, bytes) of the next load of `key`: what the cache reserves before loading."""
    device = planned_device()
    return device, estimate_bytes(key, device)


def check_hardware(key: str) -> None:
    """Refuse fast when a model obviously cannot run here (no GPU for an 11B, too little RAM)."""
    spec = get_spec(key)
    source = resolve_source(key)
    needed = estimate_bytes(key, "cpu")  # the no-GPU case: no torch import on status pages
    if spec.needs_gpu and source.is_default:
        if not cuda_expected() and not os.environ.get("MEDLAB_ALLOW_CPU_LARGE"):
            import psutil

            avail = psutil.virtual_memory().available
            raise InsufficientMemoryError(
                key,
                f"{spec.title} needs a GPU: about {needed / 2**30:.0f} GB of weights in "
                f"{spec.dtype}, and this machine has no CUDA device "
                f"({avail / 2**30:.0f} GB RAM free; generation on CPU would take many minutes).",
                f"run the Space on GPU hardware, set {source.env_var} to a smaller image-text-to-text checkpoint "
                "(e.g. HuggingFaceTB/SmolVLM-500M-Instruct) "
                "(or a local directory), or set MEDLAB_CAPTIONER_ENDPOINT to a remote server.",
            )


# transformers' from_pretrained is not thread-safe: two models loading at once in one process
# can come back with their tied weights untied (T5's embeddings left randomly initialised,
# reported as missing keys). The cache loads different keys in parallel, so the loads
# themselves take turns here; requests for loaded models never wait on it.
_LOAD_LOCK = threading.Lock()


def load_model(key: str, progress: Progress) -> LoadedModel:
    """The cache's load function: resolve the source and call the spec's loader."""
    spec = get_spec(key)
    check_hardware(key)
    source = resolve_source(key)
    device = resolve_device()
    if not _LOAD_LOCK.acquire(blocking=False):
        progress(0.01, f"Waiting for another model to finish loading before {key}")
        _LOAD_LOCK.acquire()
    try:
        log.info("loading %s from %s (%s) on %s", key, source.location, "local" if source.is_local else "hub", device)
        return spec.resolve_loader()(spec, source, device, progress)
    finally:
        _LOAD_LOCK.release()


_CACHE: ModelCache | None = None
_CACHE_LOCK = threading.Lock()


def device_budget(device: str) -> int | None:
    """The cache's budget for one device: CPU RAM (MEDLAB_MEMORY_BUDGET_GB or 60% of RAM),
    each CUDA device (MEDLAB_GPU_MEMORY_BUDGET_GB or what is free on it at start)."""
    settings = load_settings()
    if device.startswith("cuda"):
        budget = settings.gpu_memory_budget_bytes(device)
        if budget is None and settings.zero_gpu:  # no GPU attached yet: ZeroGPU's documented size
            from medlab.core.config import GPU_WEIGHT_FRACTION, ZERO_GPU_MEMORY_GB

            budget = int(ZERO_GPU_MEMORY_GB * GPU_WEIGHT_FRACTION * 2**30)
        return budget
    return settings.memory_budget_bytes()


def get_cache() -> ModelCache:
    """The one process-wide cache (created on first use, never at import)."""
    global _CACHE
    with _CACHE_LOCK:
        if _CACHE is None:
            devices = ("cpu", "cuda:0") if cuda_expected() else ("cpu",)
            _CACHE = ModelCache(
                load_fn=load_model, budget=device_budget, estimate_fn=estimate_placement, devices=devices
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
    """The loaded model for `key`, WITHOUT a lease: it may be evicted while the caller still
    uses it. Prefer `with use_model(key) as loaded:`."""
    return get_cache().get(key, progress)


def use_model(key: str, progress: Progress | None = None) -> contextlib.AbstractContextManager[LoadedModel]:
    """Lease the model for `key` for a `with` block: it is never evicted while the block runs."""
    return get_cache().use(key, progress)
