"""The Failure lab (stress test): perturbation families checked against independent
computations (numpy, Pillow), the batched sweep against the tab's own one-image pipeline run
step by step, one forward per sweep, flip / gate indices by hand, the plot's markers, and the
three api_names on the live app."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from medlab.core.errors import InputError
from medlab.vision import perturb

ASSETS = Path(__file__).parent.parent / "assets"
LESION = ASSETS / "skin" / "synthetic_lesion.png"
DICOM = ASSETS / "lung" / "CT_small.dcm"
CT_PNG = ASSETS / "lung" / "ct_small_lung_window.png"
CAT = ASSETS / "skin" / "offdomain_cat_chelsea.jpg"


def _photo(size: tuple[int, int] = (64, 48), seed: int = 1) -> Image.Image:
    """A smooth colour image (gradients + a disc) with some texture."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 60 + 150 * xx / (w - 1)
    g = 40 + 120 * yy / (h - 1)
    b = 90 + 80 * (((xx - w / 2) ** 2 + (yy - h / 2) ** 2) < (min(w, h) / 3) ** 2)
    noise = np.random.default_rng(seed).normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(np.stack([r, g, b], -1) + noise, 0, 255).astype(np.uint8))


def _a(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


# -- the families as data --------------------------------------------------------------------
def test_every_family_is_data_with_a_range_a_unit_and_an_identity_first_step() -> None:
    assert set(perturb.FAMILIES) == {"rotation", "blur", "noise", "jpeg", "brightness", "contrast", "zoom", "occlusion"}
    img = _photo()
    for name, fam in perturb.FAMILIES.items():
        assert fam.name == name and fam.unit and fam.parameter and len(fam.description) > 30
        strengths = fam.strengths(8)
        assert len(strengths) == 8 and strengths[0] == fam.start and strengths[-1] == fam.stop
        assert np.all(np.diff(strengths) * np.sign(fam.stop - fam.start) > 0)  # monotone towards the strongest
        assert np.array_equal(_a(fam.apply(img, fam.start)), _a(img)), name  # identity: unchanged pixels
        strongest = fam.apply(img, fam.stop)
        assert strongest.size == img.size and strongest.mode == "RGB"
        assert not np.array_equal(_a(strongest), _a(img)), f"{name} at its strongest changed nothing"
    assert [t for t, _ in perturb.choices()] == [f.title for f in perturb.FAMILIES.values()]


def test_unknown_family_error_lists_every_valid_name() -> None:
    with pytest.raises(perturb.UnknownFamilyError) as info:
        perturb.get_family("swirl")
    assert isinstance(info.value, InputError)
    for name in perturb.FAMILIES:
        assert name in str(info.value)
    assert "'swirl'" in str(info.value)
    assert perturb.get_family(" Rotation ").name == "rotation"


@pytest.mark.parametrize("steps", [2, 17, "many"])
def test_steps_out_of_range_are_refused(steps: Any) -> None:
    with pytest.raises(InputError, match="Steps must be"):
        perturb.FAMILIES["blur"].strengths(steps)


def test_strength_outside_the_range_is_refused() -> None:
    with pytest.raises(InputError, match="outside"):
        perturb.get_family("rotation").apply(_photo(), 270)


def test_rotation_by_90_degrees_is_numpys_rot90() -> None:
    img = _photo((40, 40))
    rotated = perturb.get_family("rotation").apply(img, 90.0)
    expected = np.rot90(np.asarray(img), k=1)  # counter-clockwise, like the family says
    diff = np.abs(_a(rotated) - expected.astype(np.int16))
    assert diff[1:-1, 1:-1].max() <= 1  # borders: bilinear sampling at the edge may touch the fill


def test_brightness_matches_a_hand_computation() -> None:
    img = _photo()
    out = _a(perturb.get_family("brightness").apply(img, 0.5))
    expected = np.clip(np.asarray(img, dtype=np.float64) * 0.5, 0, 255)
    assert np.abs(out - expected).max() <= 1.0


def test_contrast_blends_with_the_mean_grey() -> None:
    img = _photo()
    a = np.asarray(img, dtype=np.float64)
    grey = (0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]).mean()  # ITU-R 601 luma
    out = _a(perturb.get_family("contrast").apply(img, 0.25))
    expected = np.clip(grey + 0.25 * (a - grey), 0, 255)
    assert np.abs(out - expected).max() <= 2.0
    assert out.std() < a.std() * 0.3


def test_jpeg_quality_lowers_size_and_fidelity_together() -> None:
    img = _photo((96, 96))
    fam = perturb.get_family("jpeg")
    sizes, errors = [], []
    for q in (90, 50, 10):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=q)  # Pillow directly: the bytes the family decodes
        sizes.append(len(buf.getvalue()))
        out = fam.apply(img, q)
        assert np.array_equal(_a(out), _a(Image.open(io.BytesIO(buf.getvalue()))))
        errors.append(np.abs(_a(out) - _a(img)).mean())
    assert sizes[0] > sizes[1] > sizes[2]
    assert errors[0] < errors[1] < errors[2]


def test_noise_is_seeded_and_has_the_requested_spread() -> None:
    grey = Image.new("RGB", (128, 128), (128, 128, 128))  # mid-grey: little clipping at sigma 0.1
    fam = perturb.get_family("noise")
    a, b = fam.apply(grey, 0.1), fam.apply(grey, 0.1)
    assert np.array_equal(_a(a), _a(b))
    delta = (_a(a) - 128).astype(np.float64)
    assert delta.std() == pytest.approx(0.1 * 255, rel=0.05)
    assert abs(delta.mean()) < 1.0


def test_blur_sigma_is_relative_to_the_image_size() -> None:
    img = _photo((64, 64))
    out = _a(perturb.get_family("blur").apply(img, 3.0))  # sigma = 3 % of 64 px = 1.92 px
    # the pixel-to-pixel differences (texture) shrink; the mean colour stays
    assert np.abs(np.diff(out, axis=1)).mean() < 0.5 * np.abs(np.diff(_a(img), axis=1)).mean()
    assert np.abs(out.mean((0, 1)) - _a(img).mean((0, 1))).max() < 2.0


def test_zoom_magnifies_the_centre() -> None:
    img = _photo((64, 64))
    out = _a(perturb.get_family("zoom").apply(img, 2.0))
    centre = np.asarray(img.crop((16, 16, 48, 48)).resize((64, 64), Image.Resampling.BILINEAR), dtype=np.int16)
    assert np.abs(out - centre).mean() < 3.0


def test_occluding_patch_slides_across_the_middle() -> None:
    img = _photo((100, 60))
    fam = perturb.get_family("occlusion")
    side = round(perturb.OCCLUDER_SIDE * 60)
    for percent in (25.0, 50.0, 100.0):
        out = _a(fam.apply(img, percent))
        left = round(-side + percent / 100 * 100)
        top = (60 - side) // 2
        box = (slice(max(0, top), top + side), slice(max(0, left), min(100, left + side)))
        assert (out[box] == perturb.OCCLUDER_GREY).all()
        mask = np.ones(out.shape[:2], bool)
        mask[box] = False
        assert np.array_equal(out[mask], _a(img)[mask])  # nothing else touched
    assert perturb.occluder_box(100, 60, 0.0)[2] == 0  # at 0 % the patch is just outside the left edge


# -- the sweep against the tab's own one-image pipeline ---------------------------------------
def _save_steps(images: list[Image.Image], folder: Path) -> list[Path]:
    paths = []
    for i, image in enumerate(images):
        path = folder / f"step{i}.png"
        image.save(path)  # PNG: lossless, so the tab decodes exactly these pixels
        paths.append(path)
    return paths


class _CountForwards:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from medlab.vision import classify

        self.batches: list[int] = []
        real = classify.forward

        def counting(loaded: Any, pixel_values: Any) -> Any:
            self.batches.append(int(pixel_values.shape[0]))
            return real(loaded, pixel_values)

        monkeypatch.setattr(classify, "forward", counting)


@pytest.mark.parametrize("family", ["rotation", "jpeg", "occlusion"])
def test_skin_sweep_equals_classify_skin_step_by_step(use_tiny_models, tmp_path, monkeypatch, family) -> None:
    from medlab.vision import gate
    from medlab.vision.skin import classify_skin
    from medlab.vision.stress import stress_skin

    counter = _CountForwards(monkeypatch)
    result = stress_skin(str(LESION), family, 8)
    assert counter.batches == [8]  # the whole sweep is one forward
    assert len(result.images) == len(result.probabilities) == len(result.gates) == 8
    counter.batches.clear()
    for i, path in enumerate(_save_steps(result.images, tmp_path)):
        one = classify_skin(str(path))
        assert result.probabilities[i]["malignant"] == pytest.approx(one.malignant_probability, abs=1e-4), i
        assert result.decisions[i] == one.decision.label
        # the batched gate (one object-check forward for all steps) = the gate on that image alone
        alone = gate.check_skin(result.images[i])
        assert result.gates[i].verdict == alone.verdict and result.gates[i].reasons == alone.reasons, i
    assert counter.batches == [1] * 8
    assert np.array_equal(_a(result.images[0]), _a(Image.open(LESION)))


def test_lung_sweep_equals_classify_lung_step_by_step(use_tiny_models, tmp_path, monkeypatch) -> None:
    from medlab.vision.lung_ct import classify_lung
    from medlab.vision.stress import stress_lung

    counter = _CountForwards(monkeypatch)
    result = stress_lung(str(CT_PNG), "blur", 6, scenario="high-risk confirmation")
    assert counter.batches == [6]
    assert result.classes == ["benign", "malignant", "normal"]
    for i, path in enumerate(_save_steps(result.images, tmp_path)):
        one = classify_lung(str(path), scenario="high-risk confirmation")  # Grad-CAM's forward gives its logits
        for cls in result.classes:
            assert result.probabilities[i][cls] == pytest.approx(one.probabilities[cls], abs=1e-4)
        expected = "defer" if one.defer.deferred else one.defer.top_label
        assert result.decisions[i] == expected
        assert result.gates[i].verdict == one.gate.verdict


def test_a_dicom_sweep_is_gated_by_its_header(use_tiny_models) -> None:
    from medlab.vision.stress import stress_lung

    result = stress_lung(str(DICOM), "noise", 4)
    assert [g.verdict for g in result.gates] == ["in-domain"] * 4
    assert result.gate_index is None and result.info["kind"] == "dicom"


def test_pathology_sweep_equals_zero_shot_step_by_step(use_tiny_models, monkeypatch) -> None:
    from medlab.retrieval import encoders
    from medlab.retrieval.zero_shot import batch_predictor, zero_shot_one
    from medlab.vision.stress import stress_predictor

    calls: list[int] = []
    real = encoders.HFClipEncoder.encode_image

    def counting(self: Any, images: Any) -> Any:
        calls.append(len(images))
        return real(self, images)

    monkeypatch.setattr(encoders.HFClipEncoder, "encode_image", counting)
    labels = ["tumour", "stroma", "fat", "mucus"]
    predict = batch_predictor(", ".join(labels), "A photo of {label}.", "plip")
    result = stress_predictor(str(LESION), predict, "contrast", 5)
    assert calls == [5]
    assert result.gates is None and result.gate_index is None
    for i, image in enumerate(result.images):
        one = zero_shot_one("plip", image, labels, "A photo of {label}.")
        assert result.probabilities[i] == pytest.approx(one, abs=1e-4)
        assert result.decisions[i] == max(one, key=one.get)


def test_flip_and_gate_indices_computed_by_hand(use_tiny_models, monkeypatch) -> None:
    """Logits planted per step (class 0 falls, class 2 rises): the first step whose answer
    (top class, or defer below 0.5) differs from step 0 is found by hand with numpy."""
    import torch

    from medlab.vision import classify
    from medlab.vision.stress import stress_lung

    planted = torch.tensor([[3.0 - i, 0.0, i - 3.0] for i in range(8)])
    monkeypatch.setattr(classify, "forward", lambda loaded, pv: planted[: pv.shape[0]].clone())
    result = stress_lung(str(CAT), "rotation", 8)  # a colour photo: the gate flags every step
    p = np.exp(planted.numpy()) / np.exp(planted.numpy()).sum(1, keepdims=True)
    answers = ["defer" if row.max() < 0.5 else ["benign", "malignant", "normal"][row.argmax()] for row in p]
    expected_flip = next(i for i, a in enumerate(answers) if a != answers[0])
    assert result.decisions == answers and result.flip_index == expected_flip == 3  # benign x3, then [0, 0, 0] defers
    assert result.gate_index == 0 and all(g.flagged for g in result.gates)
    assert result.summary()["flip_strength"] == pytest.approx(result.strengths[3])


def test_unknown_family_and_missing_input_are_engine_errors(use_tiny_models) -> None:
    from medlab.retrieval.zero_shot import batch_predictor
    from medlab.vision.stress import stress_lung, stress_predictor, stress_skin

    with pytest.raises(perturb.UnknownFamilyError, match="rotation, blur"):
        stress_skin(str(LESION), "swirl")
    with pytest.raises(InputError, match="No image"):
        stress_skin(None)
    with pytest.raises(InputError, match="No file"):
        stress_lung("")
    with pytest.raises(InputError, match="Unknown scenario"):
        stress_lung(str(DICOM), scenario="emergency")
    with pytest.raises(InputError, match="at least two"):
        batch_predictor(labels="only-one")
    with pytest.raises(perturb.UnknownFamilyError):
        stress_predictor(str(LESION), batch_predictor(), "swirl")
    with pytest.raises(InputError, match="Upload an image"):
        stress_predictor(None, batch_predictor())


# -- the plot ---------------------------------------------------------------------------------
def _has_colour(image: Image.Image, hex_colour: str, tol: int = 12, min_pixels: int = 40) -> bool:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    close = (np.abs(np.asarray(image, dtype=np.int16) - rgb) <= tol).all(-1)
    return int(close.sum()) >= min_pixels


def test_plot_marks_the_flip_and_the_gate_only_when_they_happen(use_tiny_models, monkeypatch) -> None:
    import torch

    from medlab.vision import classify
    from medlab.vision.stress import stress_lung
    from medlab.vision.stress_plot import render

    monkeypatch.setattr(classify, "forward", lambda loaded, pv: torch.tensor(
        [[3.0 - i, 0.0, i - 3.0] for i in range(pv.shape[0])]))
    flipped = render(stress_lung(str(CAT), "zoom", 8))
    monkeypatch.setattr(classify, "forward", lambda loaded, pv: torch.tensor([[3.0, 0.0, 0.0]] * pv.shape[0]))
    steady = render(stress_lung(str(DICOM), "zoom", 8))
    assert flipped.size == steady.size == (800, 480)
    purple = "#9467bd"  # the flip marker's colour in stress_plot
    assert _has_colour(flipped, purple) and not _has_colour(steady, purple)
    pink = "#fae1e2"  # the gate's red shading (alpha 0.12 over white)
    assert _has_colour(flipped, pink, tol=6, min_pixels=2000) and not _has_colour(steady, pink, tol=6, min_pixels=2000)


# -- the api_names on the live app -------------------------------------------------------------
STRESS_APIS = ("/skin_stress", "/lung_ct_stress", "/pathology_stress")


def test_stress_endpoints_are_documented_with_defaults(live_app) -> None:
    _, client = live_app
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in STRESS_APIS:
        params = api[name]["parameters"]
        assert not params[0]["parameter_has_default"], name
        assert all(p["parameter_has_default"] for p in params[1:]), name
        assert [p["parameter_default"] for p in params[1:3]] == ["rotation", 8], name
    assert [p["parameter_default"] for p in api["/lung_ct_stress"]["parameters"][3:]] == ["lung", "routine"]


def test_skin_stress_through_the_client(live_app) -> None:
    from gradio_client import handle_file

    _, client = live_app
    plot, strip, report, summary = client.predict(handle_file(str(LESION)), "brightness", api_name="/skin_stress")
    assert Image.open(plot).size == (800, 480)
    assert len(strip) == 8 and all(Path(item["image"]).is_file() for item in strip)
    assert strip[0]["caption"] == "×1" and strip[-1]["caption"] == "×0.1"
    assert summary["strengths"][0] == 1.0 and len(summary["probabilities"]) == 8
    # step 0 is the unperturbed photo: the same probability /skin_classify gives
    *_, plain = client.predict(handle_file(str(LESION)), api_name="/skin_classify")
    assert summary["probabilities"][0]["malignant"] == pytest.approx(plain["malignant_probability"], abs=1e-5)
    assert summary["decisions"][0] == plain["decision"]
    assert "Brightness" in report and len(summary["gate_verdicts"]) == 8


def test_lung_and_pathology_stress_through_the_client(live_app) -> None:
    from gradio_client import handle_file

    _, client = live_app
    _, strip, report, summary = client.predict(handle_file(str(DICOM)), "occlusion", 4, "bone", "screening",
                                               api_name="/lung_ct_stress")
    assert len(strip) == 4 and summary["strengths"] == [0.0, 33.333333, 66.666667, 100.0]
    assert summary["gate_verdicts"] == ["in-domain"] * 4 and summary["input"]["window"].startswith("bone")
    assert summary["input"]["scenario"] == "screening"
    assert all(sum(p.values()) == pytest.approx(1.0, abs=1e-4) for p in summary["probabilities"])
    _, strip, report, summary = client.predict(handle_file(str(LESION)), "jpeg", 3, "tumour, stroma, fat",
                                               api_name="/pathology_stress")
    assert summary["classes"] == ["tumour", "stroma", "fat"] and summary["strengths"] == [100.0, 52.5, 5.0]
    assert summary["gate_verdicts"] is None and "no input gate" in report


def test_stress_bad_input_is_a_clear_error(live_app) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    _, client = live_app
    with pytest.raises(AppError, match="not in the list of choices"):  # gradio validates the dropdown
        client.predict(handle_file(str(LESION)), "swirl", api_name="/skin_stress")
    with pytest.raises(AppError, match="No image was given"):
        client.predict(None, api_name="/skin_stress")


def test_large_uploads_are_swept_on_a_reduced_copy() -> None:
    big = _photo((2048, 1536))
    strengths, images = perturb.sweep(big, "blur", 3)
    assert [im.size for im in images] == [(1024, 768)] * 3
    expected = np.asarray(big.resize((1024, 768), Image.Resampling.LANCZOS), dtype=np.int16)
    assert np.array_equal(_a(images[0]), expected)  # step 0: the reduced copy, otherwise untouched
    small = _photo((300, 200))
    assert perturb.sweep(small, "blur", 3)[1][0].size == (300, 200)  # small images keep their size
