"""Builders for malformed and awkward inputs (shared by the bad-input, safety and browser tests).

Every builder takes a folder and returns the path it wrote. Nothing here is downloaded: the
DICOM variants are derived from pydicom's bundled CT_small.dcm."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from tests.test_imaging_io import png_bomb

RTSTRUCT_SOP = "1.2.840.10008.5.1.4.1.1.481.3"
SEG_SOP = "1.2.840.10008.5.1.4.1.1.66.4"


def ct_small() -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm", download=False))


def _noise_rgb(size: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), "RGB")


# -- images ----------------------------------------------------------------------------------
def text_as_png(d: Path) -> Path:
    p = d / "notes.png"
    p.write_text("this is a text file pretending to be an image\n" * 20)
    return p


def truncated_png(d: Path) -> Path:
    buf = io.BytesIO()
    _noise_rgb(128).save(buf, "PNG")
    p = d / "truncated.png"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return p


def corrupt_jpeg(d: Path) -> Path:
    p = d / "corrupt.jpg"
    p.write_bytes(b"\xff\xd8\xff\xe0" + bytes(np.random.default_rng(3).integers(0, 255, 4000, dtype=np.uint8)))
    return p


def one_pixel(d: Path) -> Path:
    p = d / "one_pixel.png"
    Image.new("RGB", (1, 1), (200, 100, 50)).save(p)
    return p


def bomb_png(d: Path) -> Path:
    return png_bomb(d / "bomb.png")


def animated_gif(d: Path) -> Path:
    p = d / "animated.gif"
    frames = [_noise_rgb(64, seed=i).convert("P") for i in range(3)]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return p


def tiff_16bit(d: Path) -> Path:
    p = d / "sixteen.tif"
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(ramp, mode="I;16").save(p)
    return p


def cmyk_jpeg(d: Path) -> Path:
    p = d / "cmyk.jpg"
    _noise_rgb(64, seed=5).convert("CMYK").save(p, "JPEG")
    return p


def non_utf8_as_png(d: Path) -> Path:
    p = d / "latin1.png"
    p.write_bytes("Befund: Lunge unauffällig, Größe normal\n".encode("latin-1") * 10)
    return p


# -- DICOM -----------------------------------------------------------------------------------
def dicom_without_pixels(d: Path) -> Path:
    import pydicom

    ds = pydicom.dcmread(ct_small())
    del ds.PixelData
    p = d / "no_pixels.dcm"
    ds.save_as(p)
    return p


def _dicom_as(d: Path, name: str, sop: str, modality: str) -> Path:
    import pydicom

    ds = pydicom.dcmread(ct_small())
    ds.SOPClassUID = sop
    ds.file_meta.MediaStorageSOPClassUID = sop
    ds.Modality = modality
    del ds.PixelData
    p = d / name
    ds.save_as(p)
    return p


def dicom_rtstruct(d: Path) -> Path:
    return _dicom_as(d, "rtstruct.dcm", RTSTRUCT_SOP, "RTSTRUCT")


def dicom_seg(d: Path) -> Path:
    return _dicom_as(d, "seg.dcm", SEG_SOP, "SEG")


def dicom_with_patient(d: Path, name: str = "SECRET^PATIENT", pid: str = "PID-778899-SECRET") -> Path:
    import pydicom

    ds = pydicom.dcmread(ct_small())
    ds.PatientName = name
    ds.PatientID = pid
    ds.PatientBirthDate = "19010203"
    p = d / "patient.dcm"
    ds.save_as(p)
    return p


# -- tables and archives ---------------------------------------------------------------------
def csv_missing_columns(d: Path) -> Path:
    p = d / "missing.csv"
    p.write_text("id,text_of_report\n1,The lungs are clear.\n2,No effusion.\n")
    return p


def jsonl_missing_columns(d: Path) -> Path:
    p = d / "missing.jsonl"
    p.write_text("\n".join(json.dumps({"note": f"row {i}", "score": i}) for i in range(3)) + "\n")
    return p


def csv_non_utf8(d: Path) -> Path:
    p = d / "latin1.csv"
    p.write_bytes("findings,impression\nGröße normal, Lunge frei,unauffällig\n".encode("latin-1")
                  + b"\xff\xfe\x00\x81\n")
    return p


def empty_csv(d: Path) -> Path:
    p = d / "empty.csv"
    p.write_bytes(b"")
    return p


def zip_traversal(d: Path) -> Path:
    p = d / "traversal.zip"
    buf = io.BytesIO()
    _noise_rgb(32).save(buf, "PNG")
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("tiles/ok.png", buf.getvalue())
        zf.writestr("../../escape.png", buf.getvalue())
    return p


def zip_bomb(d: Path) -> Path:
    """~250 kB on disk, 256 MB of "PNG" members once expanded (ratio ~1000x)."""
    p = d / "bomb.zip"
    chunk = b"\0" * (16 * 1024 * 1024)
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for i in range(2):
            with zf.open(f"tile_{i}.png", "w", force_zip64=True) as member:
                for _ in range(8):
                    member.write(chunk)
    return p


def one_class_zip(d: Path) -> Path:
    """Class folders for a teaching set, but only one class."""
    p = d / "one_class.zip"
    with zipfile.ZipFile(p, "w") as zf:
        for i in range(3):
            buf = io.BytesIO()
            _noise_rgb(32, seed=i).save(buf, "PNG")
            zf.writestr(f"only/{i}.png", buf.getvalue())
    return p


def not_a_zip(d: Path) -> Path:
    p = d / "fake.zip"
    p.write_text("PK? no, just text\n")
    return p


def fake_pdf(d: Path) -> Path:
    p = d / "fake.pdf"
    p.write_text("%PDF-1.4 this is not really a PDF\n")
    return p


def non_utf8_pdf(d: Path) -> Path:
    p = d / "latin1.pdf"
    p.write_bytes("Größe unauffällig".encode("latin-1") * 50)
    return p
