"""Zero-shot classification of one image with CLIP-style models.

Labels x prompt template -> text embeddings; probabilities are the softmax of the model's own
logit_scale times the cosine similarities (exactly CLIP's training head)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from medlab.core.errors import InputError, ModelUnavailableError
from medlab.core.progress import Progress
from medlab.core.specs import KATHER_CLASSES
from medlab.retrieval.encoders import MODELS, encode_images, encode_texts, logit_scale

BatchPredictor = Callable[[Sequence[Any]], list[dict[str, float]]]
DEFAULT_LABELS: tuple[str, ...] = KATHER_CLASSES
DEFAULT_TEMPLATE = "An H&E image of {label}."
MAX_LABELS = 50


def parse_labels(labels: str | Sequence[str] | None) -> list[str]:
    """Comma/semicolon/newline-separated labels -> a de-duplicated list (2..MAX_LABELS)."""
    if labels is None or (isinstance(labels, str) and not labels.strip()):
        return list(DEFAULT_LABELS)
    if isinstance(labels, str) and len(labels) > MAX_LABELS * 122:
        raise InputError(f"The labels text is too long ({len(labels)} characters); give at most {MAX_LABELS} labels.")
    items = re.split(r"[,\n;]", labels) if isinstance(labels, str) else list(labels)
    out: list[str] = []
    seen: set[str] = set()
    for item in items:
        # Control characters cannot mean anything in a label; drop them rather than fail.
        item = re.sub(r"[\x00-\x1f\x7f]", "", str(item)).strip()
        if item and item.lower() not in seen:
            if len(item) > 120:
                raise InputError(f"Label {item[:30]!r}... is too long (over 120 characters).")
            seen.add(item.lower())
            out.append(item)
            if len(out) > MAX_LABELS:
                raise InputError(f"At most {MAX_LABELS} labels at a time.")
    if len(out) < 2:
        raise InputError("Give at least two different labels, separated by commas.")
    return out


def check_template(template: str | None) -> str:
    template = (template or "").strip() or DEFAULT_TEMPLATE
    if template.count("{label}") != 1:
        raise InputError('The prompt template must contain {label} exactly once, e.g. "An H&E image of {label}."')
    try:
        template.format(label="x")
    except (KeyError, IndexError, ValueError):
        raise InputError("The prompt template may only use the {label} placeholder (no other braces).") from None
    return template


def zero_shot_one(key: str, image: Any, labels: list[str], template: str,
                  progress: Progress | None = None) -> dict[str, float]:
    import numpy as np

    img = encode_images(key, [image], progress)[0]
    txt = encode_texts(key, [template.format(label=label) for label in labels])
    logits = logit_scale(key) * (txt @ img)
    logits = logits - logits.max()
    probs = np.exp(logits) / np.exp(logits).sum()
    return {label: float(p) for label, p in zip(labels, probs)}


def zero_shot_many(key: str, images: Sequence[Any], labels: list[str], template: str,
                   progress: Progress | None = None) -> list[dict[str, float]]:
    """One {label: probability} per image: the prompts are encoded once and the images in one
    batch under one encoder lease (the Failure lab's sweep, medlab.vision.stress)."""
    import numpy as np

    from medlab.retrieval.encoders import _normalise, encoder

    prompts = [template.format(label=label) for label in labels]
    with encoder(key, progress) as enc:
        text = _normalise(enc.encode_text(prompts))
        pixels = _normalise(enc.encode_image(list(images)))
        scale = enc.logit_scale()
    logits = scale * (pixels @ text.T)  # (images, labels)
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return [{label: float(p) for label, p in zip(labels, row, strict=True)} for row in probs]


def batch_predictor(labels: str | Sequence[str] | None = None, template: str | None = DEFAULT_TEMPLATE,
                    key: str = "plip", progress: Progress | None = None) -> BatchPredictor:
    """The labels, template and model checked now; returns images -> [{label: p}, ...] for a
    sweep over any batch of images (composed with medlab.vision.stress by the caller)."""
    from medlab.retrieval.encoders import check_key

    check_key(key)
    label_list = parse_labels(labels)
    template = check_template(template)

    def predict(images: Sequence[Any]) -> list[dict[str, float]]:
        return zero_shot_many(key, images, label_list, template, progress)

    predict.info = {"model": key, "template": template}  # type: ignore[attr-defined]
    return predict


def zero_shot(
    image: Any,
    labels: str | Sequence[str] | None = None,
    template: str | None = DEFAULT_TEMPLATE,
    keys: Sequence[str] = MODELS,
    progress: Progress | None = None,
) -> dict[str, dict[str, Any]]:
    """{key: {"probs": {label: p} | None, "error": str | None}} for each model.

    A model that cannot run (e.g. the CLIP baseline offline) reports why; the others answer."""
    pil = as_image(image)
    label_list = parse_labels(labels)
    template = check_template(template)
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        try:
            out[key] = {"probs": zero_shot_one(key, pil, label_list, template, progress), "error": None}
        except ModelUnavailableError as exc:
            out[key] = {"probs": None, "error": exc.reason + (f" Fix: {exc.fix}" if exc.fix else "")}
    if all(v["probs"] is None for v in out.values()):
        first = next(iter(out.values()))
        raise ModelUnavailableError(keys[0], first["error"] or "no model could run.")
    return out


def as_image(image: Any) -> Any:
    """A PIL RGB image from a PIL image or a path (checked by medlab.io.imaging)."""
    from PIL import Image

    from medlab.io.imaging import load_image

    if image is None:
        raise InputError("Upload an image (an H&E tile works best).")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return load_image(image).image
