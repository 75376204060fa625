"""Image and DICOM decoding: real CT slice to HU with windowing, and every rejection."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlab.core.errors import (
    CorruptFileError,
    DicomError,
    ImageTooLargeError,
    ImageTooSmallError,
    UnsupportedFileError,
)
from medlab.io.imaging import WINDOWS, apply_window, is_dicom, load_any, load_dicom, load_image


@pytest.fixture(scope="module")
def ct_small() -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm", download=False))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A small file declaring a 30000x30000 greyscale PNG (a decompression bomb)."""
    raw = zlib.compress(b"\x00" * (width + 1) * 64, 9)  # only a few rows of data: tiny file
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", raw) + _png_chunk(b"IEND", b""))
    return path


def test_ct_small_decodes_to_hounsfield_units_with_lung_window(ct_small: Path) -> None:
    import pydicom

    ds = pydicom.dcmread(ct_small)
    decoded = load_dicom(ct_small, window="lung")
    assert decoded.kind == "dicom" and decoded.info["modality"] == "CT"
    assert decoded.image.mode == "RGB" and decoded.image.size == (ds.Columns, ds.Rows)
    expected_hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(decoded.hu, expected_hu)
    # lung window: center -600, width 1500 -> [-1350, 150] HU mapped to 0..255
    gray = np.asarray(decoded.image)[..., 0]
    center, width = WINDOWS["lung"]
    expected = np.clip((expected_hu - (center - width / 2)) / width, 0, 1) * 255
    assert np.abs(gray.astype(float) - expected).max() <= 1.0
    assert decoded.info["units"] == "HU"


def test_mediastinal_window_differs_and_saturates_air(ct_small: Path) -> None:
    lung = np.asarray(load_dicom(ct_small, window="lung").image)[..., 0]
    med = np.asarray(load_dicom(ct_small, window="mediastinal").image)[..., 0]
    hu = load_dicom(ct_small).hu
    assert not np.array_equal(lung, med)
    assert (med[hu < -160] == 0).all()  # below 40 - 400/2 HU is black in the mediastinal window


def test_apply_window_endpoints() -> None:
    values = np.array([-2000.0, -1350.0, -600.0, 150.0, 3000.0])
    out = apply_window(values, -600, 1500)
    assert out.tolist() == [0, 0, 128, 255, 255]


def test_load_any_dispatches_dicom_and_images(ct_small: Path, tmp_path: Path) -> None:
    assert is_dicom(ct_small)
    assert load_any(ct_small).kind == "dicom"
    png = tmp_path / "x.png"
    Image.new("RGB", (40, 30), (10, 20, 30)).save(png)
    assert load_any(png).kind == "image"


def test_monochrome1_is_inverted(ct_small: Path, tmp_path: Path) -> None:
    import pydicom

    ds = pydicom.dcmread(ct_small)
    ds.PhotometricInterpretation = "MONOCHROME1"
    out = tmp_path / "mono1.dcm"
    ds.save_as(out)
    normal = np.asarray(load_dicom(ct_small).image)[..., 0].astype(int)
    inverted = np.asarray(load_dicom(out).image)[..., 0].astype(int)
    assert np.array_equal(inverted, 255 - normal)


def test_dicom_without_pixels_and_non_image_objects(ct_small: Path, tmp_path: Path) -> None:
    import pydicom

    ds = pydicom.dcmread(ct_small)
    del ds.PixelData
    nopix = tmp_path / "nopix.dcm"
    ds.save_as(nopix)
    with pytest.raises(DicomError, match="without pixel data"):
        load_dicom(nopix)
    ds = pydicom.dcmread(ct_small)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    rt = tmp_path / "rtstruct.dcm"
    ds.save_as(rt)
    with pytest.raises(DicomError, match="RT Structure Set"):
        load_dicom(rt)


def test_dicom_patient_data_not_in_info(ct_small: Path) -> None:
    import pydicom

    ds = pydicom.dcmread(ct_small)
    decoded = load_dicom(ct_small)
    text = repr(decoded.info)
    assert str(ds.PatientName) not in text
    assert "Patient" not in text


def test_text_file_named_png_is_rejected(tmp_path: Path) -> None:
    fake = tmp_path / "scan.png"
    fake.write_text("this is not an image\n" * 10)
    with pytest.raises(UnsupportedFileError, match="not an image"):
        load_image(fake)


def test_truncated_png_is_rejected(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(good)
    data = good.read_bytes()
    bad = tmp_path / "truncated.png"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="truncated or damaged"):
        load_image(bad)


def test_one_pixel_image_is_rejected(tmp_path: Path) -> None:
    tiny = tmp_path / "dot.png"
    Image.new("RGB", (1, 1)).save(tiny)
    with pytest.raises(ImageTooSmallError, match="1x1"):
        load_image(tiny)


def test_png_bomb_rejected_from_header_without_decoding(tmp_path: Path) -> None:
    bomb = png_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ImageTooLargeError, match="900 megapixels"):
        load_image(bomb)


def test_image_over_our_pixel_limit_names_its_size(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDLAB_MAX_IMAGE_PIXELS", "10000")
    path = png_bomb(tmp_path / "wide.png", width=300, height=200)
    with pytest.raises(ImageTooLargeError, match="300x200"):
        load_image(path)


def test_file_over_upload_limit_rejected_by_size(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDLAB_MAX_UPLOAD_MB", "0.01")
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(big)
    with pytest.raises(ImageTooLargeError, match="MEDLAB_MAX_UPLOAD_MB"):
        load_image(big)


def test_16_bit_image_is_rescaled_not_clipped(tmp_path: Path) -> None:
    arr = np.tile(np.linspace(0, 60000, 64, dtype=np.uint16), (64, 1))
    path = tmp_path / "sixteen.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    decoded = load_image(path)
    out = np.asarray(decoded.image)
    assert decoded.image.mode == "RGB"
    assert out.min() == 0 and out.max() == 255  # full range used, not saturated at 255
    assert np.all(np.diff(out[0, :, 0].astype(int)) >= 0)  # order preserved
    assert "rescaled" in decoded.info["note"]


def test_rgba_is_flattened_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[:, :16] = (255, 0, 0, 255)  # opaque red left half
    rgba[:, 16:] = (0, 0, 255, 0)  # fully transparent right half
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    out = np.asarray(load_image(path).image)
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 31]) == (255, 255, 255)


def test_cmyk_palette_and_exif_orientation(tmp_path: Path) -> None:
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(cmyk)
    out = load_image(cmyk)
    r, g, b = np.asarray(out.image)[20, 20]
    assert r > 200 and g < 60 and b < 60  # CMYK red converted to RGB red
    pal = tmp_path / "pal.png"
    Image.new("RGB", (40, 40), (0, 128, 0)).convert("P").save(pal)
    assert load_image(pal).image.mode == "RGB"
    # EXIF orientation 6 = rotate 90 degrees: a 40x20 stored image displays as 20x40
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = tmp_path / "rot.jpg"
    Image.new("RGB", (40, 20), (200, 200, 200)).save(rotated, exif=exif)
    assert load_image(rotated).image.size == (20, 40)


def test_animated_gif_uses_first_frame_and_says_so(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    decoded = load_image(path)
    assert decoded.info["frames"] == 2 and "frame 1 of 2" in decoded.info["note"]
    assert np.asarray(decoded.image)[0, 0, 0] > 200


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(CorruptFileError, match="empty"):
        load_image(empty)


def test_unknown_window_is_refused(ct_small: Path) -> None:
    with pytest.raises(DicomError, match="lung, mediastinal"):
        load_dicom(ct_small, window="soft")


def test_not_a_dicom_with_dcm_suffix(tmp_path: Path) -> None:
    fake = tmp_path / "x.dcm"
    fake.write_bytes(io.BytesIO(b"hello world" * 20).getvalue())
    with pytest.raises(UnsupportedFileError, match="not a DICOM"):
        load_any(fake)
