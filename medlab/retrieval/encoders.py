"""CLIP-style encoders behind one interface: encode_text, encode_image, logit_scale.

Two implementations, one per loader format: transformers `CLIPModel` + `CLIPProcessor` (PLIP)
and open_clip (the general CLIP baseline). Which one wraps a model is looked up in ENCODERS by
the model's registry loader, so adding a format is one class and one table row. Embeddings are
L2-normalised (cosine similarity = dot product); text is truncated to CLIP's 77 tokens."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any, Protocol

from medlab.core.errors import InputError
from medlab.core.progress import Progress
from medlab.core.registry import get_spec

# The image-text models of the pathology tab and the names the UI shows for them.
MODEL_NAMES: Mapping[str, str] = MappingProxyType({
    "plip": "PLIP (pathology)",
    "clip_baseline": "General CLIP (baseline)",
})
MODELS: tuple[str, ...] = tuple(MODEL_NAMES)
DEFAULT_MODEL = MODELS[0]
MAX_TEXT_TOKENS = 77


def model_choices() -> list[tuple[str, str]]:
    """(display name, key) pairs for a UI radio / checkbox group."""
    return [(name, key) for key, name in MODEL_NAMES.items()]


def check_key(key: str) -> str:
    if key not in MODEL_NAMES:
        raise InputError(f"Unknown pathology model {key!r}; choose one of {', '.join(MODELS)}.")
    return key


class ClipEncoder(Protocol):
    def encode_image(self, images: Sequence[Any]) -> Any: ...  # PIL RGB -> (n, d) torch, not normalised
    def encode_text(self, texts: Sequence[str]) -> Any: ...
    def logit_scale(self) -> float: ...


def _features(out: Any) -> Any:
    # transformers 5 may return a ModelOutput (pooler_output = projected features) or a tensor
    if hasattr(out, "pooler_output") and not hasattr(out, "shape"):
        return out.pooler_output
    return out


class _Scale:
    lm: Any

    def logit_scale(self) -> float:
        """exp(logit_scale): the temperature the model was trained with."""
        import torch

        with torch.inference_mode():
            return float(self.lm.model.logit_scale.exp().clamp(max=100).item())


class HFClipEncoder(_Scale):
    """transformers CLIPModel; preprocessing = LoadedModel.image_processor + tokenizer."""

    def __init__(self, lm: Any) -> None:
        self.lm = lm

    def encode_image(self, images: Sequence[Any]) -> Any:
        import torch

        pixels = self.lm.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            return _features(self.lm.model.get_image_features(pixel_values=pixels.to(self.lm.device)))

    def encode_text(self, texts: Sequence[str]) -> Any:
        import torch

        enc = self.lm.tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True,
                                max_length=MAX_TEXT_TOKENS)
        enc = {k: v.to(self.lm.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        with torch.inference_mode():
            return _features(self.lm.model.get_text_features(**enc))


class OpenClipEncoder(_Scale):
    """open_clip model; preprocessing = LoadedModel.transform (torchvision) + tokenizer."""

    def __init__(self, lm: Any) -> None:
        self.lm = lm

    def encode_image(self, images: Sequence[Any]) -> Any:
        import torch

        pixels = torch.stack([self.lm.transform(img) for img in images]).to(self.lm.device)
        with torch.inference_mode():
            return self.lm.model.encode_image(pixels)

    def encode_text(self, texts: Sequence[str]) -> Any:
        import torch

        tokens = self.lm.tokenizer(list(texts)).to(self.lm.device)  # SimpleTokenizer truncates to 77
        with torch.inference_mode():
            return self.lm.model.encode_text(tokens)


# registry loader function name -> encoder class
ENCODERS: Mapping[str, type] = MappingProxyType({
    "load_clip": HFClipEncoder,
    "load_open_clip": OpenClipEncoder,
})


@contextmanager
def encoder(key: str, progress: Progress | None = None) -> Iterator[ClipEncoder]:
    """The encoder of model `key`, held through a cache lease (loaded on first use; never
    evicted while the `with` block runs)."""
    from medlab.core.loaders import use_model

    check_key(key)
    loader = get_spec(key).loader.rpartition(":")[2]
    cls = ENCODERS.get(loader)
    if cls is None:
        raise InputError(f"Model {key!r} uses loader {loader!r}, which is not a CLIP encoder "
                         f"({', '.join(ENCODERS)}).")
    with use_model(key, progress) as loaded:
        yield cls(loaded)


def _normalise(x: Any) -> Any:
    import torch

    return torch.nn.functional.normalize(x.float(), dim=-1).cpu().numpy().astype("float32")


def encode_images(key: str, images: Sequence[Any], progress: Progress | None = None) -> Any:
    """PIL RGB images -> (n, d) float32 numpy, L2-normalised."""
    with encoder(key, progress) as enc:
        return _normalise(enc.encode_image(images))


def encode_texts(key: str, texts: Sequence[str], progress: Progress | None = None) -> Any:
    """Texts -> (n, d) float32 numpy, L2-normalised; truncated to 77 tokens."""
    with encoder(key, progress) as enc:
        return _normalise(enc.encode_text(texts))


def logit_scale(key: str) -> float:
    with encoder(key) as enc:
        return enc.logit_scale()
