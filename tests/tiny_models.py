"""Tiny image-classifier checkpoints built from configs (random weights, no download).

Saved with save_pretrained in the standard Hugging Face format so they load through the
app's real loader exactly like a Hub checkpoint would."""

from __future__ import annotations

from pathlib import Path

HAM_LABELS = (
    "actinic_keratoses",
    "basal_cell_carcinoma",
    "benign_keratosis-like_lesions",
    "dermatofibroma",
    "melanoma",
    "melanocytic_Nevi",
    "vascular_lesions",
)
LUNG_LABELS = ("Bengin cases", "Malignant cases", "Normal cases")


def tiny_vit_classifier(path: Path, labels: tuple[str, ...], image_size: int = 32, seed: int = 0) -> Path:
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=image_size, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64,
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
    )
    model = ViTForImageClassification(config).eval()
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(path)
    return path


def tiny_cnn_classifier(path: Path, labels: tuple[str, ...], image_size: int = 48, seed: int = 0) -> Path:
    import torch
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    config = ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
    )
    model = ResNetForImageClassification(config).eval()
    model.save_pretrained(path)
    ConvNextImageProcessor(size={"shortest_edge": image_size}, crop_pct=1.0).save_pretrained(path)
    return path


def build(root: Path) -> dict[str, str]:
    skin = tiny_vit_classifier(root / "skin-vit", HAM_LABELS)
    lung = tiny_cnn_classifier(root / "lung-cnn", LUNG_LABELS)
    return {"MEDLAB_MODEL_SKIN": str(skin), "MEDLAB_MODEL_LUNG_CT": str(lung)}
