"""Save a taught classifier as a standard Hugging Face folder that
medlab.core.loaders.load_image_classifier loads (transformers TimmWrapperForImageClassification:
config.json with id2label + the timm preprocessing, model.safetensors), with evaluation.json
and a model card."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medlab.vision.teach.features import Backbone
from medlab.vision.teach.head import LinearHead


def wrap_timm(timm_model: Any, architecture: str, pretrained_cfg: dict[str, Any], classes: Sequence[str]) -> Any:
    """A timm classifier as a transformers TimmWrapperForImageClassification (id2label from
    `classes`, the timm preprocessing in its config), so it saves as a standard Hugging Face
    folder. Shared with training.train_classifier."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    config = TimmWrapperConfig(
        architecture=architecture,
        pretrained_cfg=pretrained_cfg,
        num_labels=len(classes),
        id2label=dict(enumerate(classes)),
        label2id={c: i for i, c in enumerate(classes)},
    )
    model = TimmWrapperForImageClassification(config)
    model.timm_model.load_state_dict(timm_model.state_dict())
    return model


def to_hf_model(timm_model: Any, pretrained_cfg: dict[str, Any], backbone: Backbone, classes: list[str],
                head: LinearHead) -> Any:
    """The backbone with the taught head in its classifier slot, as a transformers model."""
    import torch

    classifier = timm_model.get_classifier()
    with torch.no_grad():
        classifier.weight.copy_(torch.from_numpy(head.weight))
        classifier.bias.copy_(torch.from_numpy(head.bias))
    return wrap_timm(timm_model, backbone.architecture.split(".")[0], pretrained_cfg, classes).eval()


def card(meta: dict[str, Any]) -> str:
    acc = meta.get("held_out_accuracy")
    recall = ", ".join(f"{k} {v:.2f}" for k, v in meta.get("per_class_recall", {}).items())
    split = ("grouped by the CSV's patient/lesion ids" if meta.get("grouped")
             else "by image (no groups: neighbouring slices of one patient may sit on both sides, "
                  "which inflates the held-out numbers)")
    return f"""---
library_name: transformers
pipeline_tag: image-classification
tags: [medical-ai-lab, taught-in-browser, educational]
---
# {meta['model_id']}

Taught in this app (Medical AI Lab, "Teach a classifier") on **{meta['source']}**, {meta['n_images']} images
({meta['n_train']} to learn from, {meta['n_test']} held out), classes: {', '.join(meta['classes'])}.
Held-out accuracy **{acc:.3f}**; per-class recall: {recall}. **Not validated**: educational use only,
never diagnostic.

- Backbone: {meta['backbone_title']} (frozen, ImageNet weights); head: class-weighted logistic
  regression on its pooled features (scikit-learn), folded into the classifier layer.
- Split: {split}.
- Duplicates (same file content): {meta['n_duplicate_groups']} group(s); skipped files: {meta['n_skipped']}.
- Full report: `evaluation.json` (document 000/001 metrics: confusion matrix, ROC, calibration,
  defer-to-expert table).
"""


def save(model: Any, folder: Path, meta: dict[str, Any], report: dict[str, Any]) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "evaluation.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (folder / "README.md").write_text(card(meta), encoding="utf-8")
    (folder / "taught.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")  # written last: marks complete
