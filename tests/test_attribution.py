"""The second explanation (medlab.vision.attribution, tabs/explain.py): Captum occlusion on a
hand-built model whose output depends on one known region (values checked against a hand
computation), bounded and batched forwards, Spearman / top-10% overlap against scipy and
hand counts, a REAL ImageNet model whose occlusion map must find the cat, Integrated
Gradients' completeness, and the two endpoints through the live app."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from medlab.vision import attribution
from tests.test_gradcam import CAT_CLASSES, efficientnet_lite0  # noqa: F401 - the real Lite0 fixture

ASSETS = Path(__file__).parent.parent / "assets"


class TopLeft(torch.nn.Module):
    """Two logits (4 * mean of the top-left quadrant of channel 0, 0): only that quadrant matters.
    Records the batch size of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(4.0))
        self.calls: list[int] = []

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.calls.append(int(pixel_values.shape[0]))
        h, w = pixel_values.shape[-2] // 2, pixel_values.shape[-1] // 2
        s = self.scale * pixel_values[:, 0, :h, :w].mean(dim=(-2, -1))
        return torch.stack([s, torch.zeros_like(s)], dim=-1)


def _image(seed: int = 0, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, size, size, generator=g)
    x[:, 0, : size // 2, : size // 2] += 1.0  # the region the model reads is bright: covering it lowers p0
    return x


def _p0(model: TopLeft, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(torch.softmax(model(pixel_values=x), dim=-1)[0, 0])


def _covered(x: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
    """x with the window replaced by the per-channel mean of the whole image (by hand)."""
    out = x.clone()
    for c in range(x.shape[1]):
        out[0, c, rows, cols] = x[0, c].mean()
    return out


# -- occlusion ---------------------------------------------------------------------------------
@pytest.mark.parametrize("grid", [2, 4])
def test_occlusion_values_are_the_probability_drop_of_each_window(grid: int) -> None:
    model, x = TopLeft(), _image()
    result = attribution.occlusion(model, x, class_index=0, grid=grid)
    side = 32 // grid
    assert result.window == (side, side) and result.heat.shape == (32, 32)
    base = _p0(model, x)
    for i in range(grid):
        for j in range(grid):
            rows, cols = slice(i * side, (i + 1) * side), slice(j * side, (j + 1) * side)
            expected = base - _p0(model, _covered(x, rows, cols))
            cell = result.heat[rows, cols]
            assert np.allclose(cell, expected, atol=1e-6), (i, j, float(cell.mean()), expected)
    # the map is highest in the quadrant the model reads and 0 (exactly) everywhere else
    top_left = result.heat[:16, :16]
    assert top_left.min() > 1e-4 and np.all(result.heat[16:, :] == 0) and np.all(result.heat[:, 16:] == 0)
    peak = np.unravel_index(int(result.heat.argmax()), result.heat.shape)
    assert peak[0] < 16 and peak[1] < 16


def test_occlusion_forwards_are_bounded_and_batched() -> None:
    model, x = TopLeft(), _image(1)
    # without the known probabilities Captum runs the unperturbed input once itself
    attribution.occlusion(model, x, 0, grid=4)
    assert model.calls == [1, 8, 8]
    # with them (the Grad-CAM pass computed them), only the 16 covered copies run, 8 per call
    known = torch.softmax(model(pixel_values=x).detach(), dim=-1)
    model.calls.clear()
    result = attribution.occlusion(model, x, 0, grid=4, known_probabilities=known)
    assert model.calls == [8, 8] == result.batches and result.images == 16
    model.calls.clear()
    assert attribution.occlusion(model, x, 0, grid=3, known_probabilities=known).batches == [5, 4] == model.calls
    model.calls.clear()
    assert attribution.occlusion(model, x, 0, grid=2, known_probabilities=known).batches == [4] == model.calls
    # no gradients are recorded for the covered copies
    assert model.scale.grad is None


def test_occlusion_plan_and_bad_grid() -> None:
    from medlab.core.errors import InputError

    assert attribution.occlusion_plan(224, 224, 2) == ((112, 112), 4, 4)
    assert attribution.occlusion_plan(240, 240, 3) == ((80, 80), 9, 5)
    assert attribution.occlusion_plan(224, 224, 4) == ((56, 56), 16, 8)
    assert attribution.DEFAULT_GRID == 2
    with pytest.raises(InputError, match="grid must be one of 2, 3, 4"):
        attribution.occlusion_plan(224, 224, 7)


def test_progress_is_reported_per_batch() -> None:
    seen: list[str] = []
    model, x = TopLeft(), _image()
    known = torch.softmax(model(pixel_values=x).detach(), dim=-1)
    attribution.occlusion(model, x, 0, grid=4, known_probabilities=known, progress=lambda f, m: seen.append(m))
    assert seen == ["Occlusion: batch 1 of 2 (16 covered copies)", "Occlusion: batch 2 of 2 (16 covered copies)"]


# -- agreement ---------------------------------------------------------------------------------
def _ranks(v: np.ndarray) -> np.ndarray:
    r = np.empty(len(v))
    r[np.argsort(v)] = np.arange(len(v))
    return r


def test_spearman_against_hand_and_scipy() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((20, 20))
    assert attribution.spearman(a, a) == pytest.approx(1.0)
    assert attribution.spearman(a, -a) == pytest.approx(-1.0)
    assert attribution.spearman(a, a.max() - a) == pytest.approx(-1.0)
    b = a + rng.normal(0, 0.3, a.shape)
    ra, rb = _ranks(a.ravel()), _ranks(b.ravel())  # no ties: Pearson of the ranks, by hand
    hand = float(np.corrcoef(ra, rb)[0, 1])
    assert attribution.spearman(a, b) == pytest.approx(hand, abs=1e-9)
    blocky = np.kron(rng.random((2, 2)), np.ones((10, 10)))  # ties, like a coarse occlusion map
    assert attribution.spearman(a, blocky) == pytest.approx(spearmanr(a.ravel(), blocky.ravel()).statistic)
    assert attribution.spearman(a, np.zeros_like(a)) is None


def test_top_overlap_identical_disjoint_nested_and_partial() -> None:
    a = np.arange(100, dtype=float).reshape(10, 10)  # top 10% = the last row
    assert attribution.top_overlap(a, a) == 1.0
    assert attribution.top_overlap(a, a[::-1].copy()) == 0.0  # top 10% = the first row
    coarse = np.zeros((10, 10))
    coarse[5:, :] = 1.0  # a coarse map whose top region (ties) is the bottom half
    assert attribution.top_overlap(a, coarse) == 1.0  # the last row lies inside it
    shifted = np.roll(a, 5, axis=1)  # top 10% = 10 values: row 9, 5 of them in the same place
    assert (attribution.top_region(a) & attribution.top_region(shifted)).sum() == 10  # same row, rolled
    half = a.copy()
    half[9, :5] = 0  # 5 of the top row leave; the top 10% is now 5 of row 9 + 5 of row 8
    assert attribution.top_overlap(a, half) == pytest.approx(0.5)
    assert attribution.top_overlap(a, np.ones_like(a)) is None


def test_display_scaling_and_flat_maps() -> None:
    signed = np.array([[-0.2, 0.0], [0.1, 0.3]], dtype=np.float32)  # covering one window raised p
    assert np.allclose(attribution.for_display(signed), [[0.0, 0.4], [0.6, 1.0]])
    noise = np.full((4, 4), 0.25, dtype=np.float32) + np.float32(1e-8) * np.eye(4, dtype=np.float32)
    assert attribution.is_flat(noise) and not attribution.for_display(noise).any()
    cam = np.random.default_rng(1).random((8, 8))
    flat = attribution.agreement(cam, noise)
    assert (flat.rho, flat.overlap, flat.verdict) == (None, None, "cannot compare")
    same = attribution.agreement(cam, cam)
    assert same.rho == pytest.approx(1.0) and same.overlap == 1.0 and same.verdict == "agree"
    # rank-based: a monotone rescaling of a map changes nothing
    assert attribution.agreement(cam, 3 * cam - 1).to_dict() == same.to_dict()


@pytest.mark.parametrize(("rho", "overlap", "expected"), [
    (0.9, 0.8, "agree"), (0.5, 0.5, "agree"), (0.6, 0.2, "partly agree"), (0.1, 0.9, "partly agree"),
    (0.1, 0.1, "disagree"), (-0.5, 0.0, "disagree"), (None, 0.5, "cannot compare"),
])
def test_verdict_thresholds(rho: float | None, overlap: float | None, expected: str) -> None:
    assert attribution.verdict(rho, overlap) == expected


def test_methods_registry_is_data_the_ui_reads() -> None:
    import dataclasses

    from tabs.explain import methods_markdown

    assert list(attribution.METHODS) == ["gradcam", "occlusion", "integrated_gradients"]
    text = methods_markdown()
    for method in attribution.METHODS.values():
        assert dataclasses.is_dataclass(method) and "\n" not in method.measures
        assert f"**{method.name}** measures {method.measures}" in text
    with pytest.raises(dataclasses.FrozenInstanceError):
        attribution.METHODS["occlusion"].name = "x"  # type: ignore[misc]
    assert attribution.METHODS["integrated_gradients"].optional


# -- Integrated Gradients ---------------------------------------------------------------------
def test_integrated_gradients_completeness_and_region() -> None:
    model, x = TopLeft(), _image(2)
    result = attribution.integrated_gradients(model, x, 0, n_steps=32, internal_batch_size=8)
    # completeness: attributions sum to p(x) - p(baseline), so Captum's delta is small
    assert result.delta < 1e-3
    assert result.heat[:16, :16].mean() > 10 * result.heat[20:, 20:].mean()
    assert max(result.batches) <= 8 and not model.scale.requires_grad


# -- a real ImageNet model --------------------------------------------------------------------
def test_real_imagenet_model_occlusion_finds_the_cat(efficientnet_lite0: Path) -> None:  # noqa: F811
    """chelsea (a real photo, CC0) pasted at the Grad-CAM test's four places on a real grass
    texture: with a 3x3 grid the window with the largest probability drop lies mostly on the
    cat (>= 75% of it), the positive drop is mainly on the cat (>= 0.45 of it and >= 1.8x the
    cat's share of the visible area, 0.25), and the map's ranking agrees with Grad-CAM's
    (Spearman > 0.5). Measured: top window 0.82-0.85 on the cat, mass 0.49-0.51, rho 0.64-0.81.
    (With 4x4 windows the cat at (168, 248) falls across four windows, covering any one of them
    leaves a recognisable cat, and the top window misses it: the kind of failure the tab's
    agreement line is there to expose.)"""
    from PIL import Image
    from skimage import data
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from medlab.vision import classify, gradcam

    model = AutoModelForImageClassification.from_pretrained(efficientnet_lite0).eval()
    processor = AutoImageProcessor.from_pretrained(efficientnet_lite0)
    background = Image.fromarray(data.grass()).convert("RGB").resize((448, 448))
    cat = Image.fromarray(data.chelsea()).resize((240, 160))
    for x0, y0 in [(40, 40), (168, 248), (40, 248), (168, 40)]:
        canvas = background.copy()
        canvas.paste(cat, (x0, y0))
        pv = processor(images=canvas, return_tensors="pt")["pixel_values"]
        cam = gradcam.grad_cam(model, pv)
        assert cam.class_index in CAT_CLASSES
        known = attribution.class_probability(cam.logits)
        occ = attribution.occlusion(model, pv, cam.class_index, grid=3, known_probabilities=known)
        box = classify.visible_box(processor, *canvas.size)
        drop = np.clip(occ.heat, 0.0, None) / float(occ.heat.max())  # the positive drop, scaled to [0, 1]
        heat = gradcam.place_in_input(drop, box, *canvas.size)
        inside = np.zeros(heat.shape, dtype=bool)
        inside[y0:y0 + 160, x0:x0 + 240] = True
        mass = float(heat[inside].sum() / heat.sum())
        top = heat >= heat.max() - 1e-6  # the window(s) with the largest drop
        top_inside = float((top & inside).sum() / top.sum())
        area = 240 * 160 / ((box[2] - box[0]) * (box[3] - box[1]))
        agree = attribution.agreement(cam.cam, occ.heat)
        print(f"cat at {(x0, y0)}: occlusion mass inside {mass:.3f} (area {area:.3f}), top window {top_inside:.2f} on the cat, "
              f"rho {agree.rho:.2f}, overlap {agree.overlap:.2f} ({agree.verdict})")
        assert top_inside >= 0.75, (x0, y0, top_inside)
        assert mass >= 0.45 and mass >= 1.8 * area, (x0, y0, mass, area)
        assert agree.rho is not None and agree.rho > 0.5 and agree.verdict != "disagree"


# -- the pipeline and the endpoints --------------------------------------------------------------
def test_explain_pipeline_on_tiny_models(use_tiny_models: dict[str, str]) -> None:
    from PIL import Image

    from tabs.explain import _render

    result = attribution.explain("skin", str(ASSETS / "skin" / "synthetic_lesion.png"), grid=2)
    size = Image.open(ASSETS / "skin" / "synthetic_lesion.png").size
    assert result.gradcam_overlay.size == size == result.occlusion_overlay.size
    assert result.occlusion.batches == [4] and result.ig is None
    assert result.summary()["agreement"][0]["maps"] == ["gradcam", "occlusion"]
    assert result.summary()["gate"]["flagged"] is False
    # the input gate runs here too: a CT slice on the skin tab is explained, and flagged
    flagged = attribution.explain("skin", str(ASSETS / "lung" / "ct_small_lung_window.png"))
    assert flagged.gate.flagged and "Off-domain input" in _render(flagged, 1.0)[4]
    lung = attribution.explain("lung_ct", str(ASSETS / "lung" / "CT_small.dcm"), grid=3, with_ig=True)
    assert lung.gradcam_overlay.size == (128, 128) and lung.occlusion.batches == [5, 4]
    assert lung.ig_overlay is not None and len(lung.agreements) == 3
    # the tab's run-time text follows the page's language (English for API callers)
    from types import SimpleNamespace

    from gradio.context import LocalContext

    english = _render(lung, 1.0)
    assert "Occlusion sensitivity vs Integrated Gradients" in english[3] and "covered copies" in english[4]
    token = LocalContext.request.set(SimpleNamespace(headers={"x-gradio-user": "app", "accept-language": "zh-CN"}))
    try:
        chinese = _render(lung, 1.0)
    finally:
        LocalContext.request.reset(token)
    assert "遮挡敏感性 与 积分梯度" in chinese[3] and "遮挡副本" in chinese[4] and "Occlusion" not in chinese[3]


def test_explain_endpoints_through_the_client(live_app) -> None:
    from gradio_client import handle_file
    from PIL import Image

    _, client = live_app
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name, first in (("/skin_explain", "Image"), ("/lung_ct_explain", "File")):
        params = api[name]["parameters"]
        assert params[0]["component"] == first and not params[0]["parameter_has_default"]
        assert all(p["parameter_has_default"] for p in params[1:])
        assert [p["parameter_default"] for p in params[1:4]] == [2, False, 0.4]
    lesion = ASSETS / "skin" / "synthetic_lesion.png"
    cam, occ, ig, agreement_md, status, summary = client.predict(handle_file(str(lesion)), api_name="/skin_explain")
    assert Image.open(cam).size == Image.open(occ).size == Image.open(lesion).size
    assert ig is None
    assert summary["occlusion"]["covered_copies"] == 4 and summary["occlusion"]["batches"] == [4]
    first = summary["agreement"][0]
    assert first["maps"] == ["gradcam", "occlusion"] and "Spearman" in agreement_md and "top-10% overlap" in agreement_md
    assert first["verdict"] in ("agree", "partly agree", "disagree", "cannot compare")
    assert "covered copies" in status
    cam, occ, ig, agreement_md, status, summary = client.predict(
        handle_file(str(ASSETS / "lung" / "CT_small.dcm")), 3, True, api_name="/lung_ct_explain")
    assert Image.open(cam).size == (128, 128) and ig and Image.open(ig).size == (128, 128)
    assert summary["occlusion"]["covered_copies"] == 9 and summary["input"]["window"].startswith("lung")
    assert len(summary["agreement"]) == 3 and summary["integrated_gradients"]["n_steps"] == 8
