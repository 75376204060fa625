"""Image input: ordinary images and DICOM, decoded to model-ready RGB with limits.

Every failure is a specific InputError subclass with a message a student understands.
Nothing here logs DICOM patient attributes: `info` carries technical fields only."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medlab.core.config import Settings, load_settings
from medlab.core.errors import (
    CorruptFileError,
    DicomError,
    ImageTooLargeError,
    ImageTooSmallError,
    UnsupportedFileError,
)

log = logging.getLogger(__name__)

MIN_SIDE = 16  # smaller than this carries no usable information for any model here
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "MPO")
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")

# (center, width) in Hounsfield units. Lung and mediastinal are the two document-001 style
# presets students meet first; "auto" uses the file's own window or the data range.
WINDOWS: dict[str, tuple[float, float] | None] = {
    "lung": (-600.0, 1500.0),
    "mediastinal": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "auto": None,
}

# DICOM objects that carry no image even if they arrive as .dcm
_NON_IMAGE_SOP = {
    "1.2.840.10008.5.1.4.1.1.481.3": "an RT Structure Set (contours, not an image)",
    "1.2.840.10008.5.1.4.1.1.481.5": "an RT Plan (treatment plan, not an image)",
    "1.2.840.10008.5.1.4.1.1.481.2": "an RT Dose grid",
    "1.2.840.10008.5.1.4.1.1.66.4": "a Segmentation object (label masks, not an image)",
    "1.2.840.10008.5.1.4.1.1.88.11": "a Structured Report (text, not an image)",
    "1.2.840.10008.5.1.4.1.1.88.22": "a Structured Report (text, not an image)",
    "1.2.840.10008.5.1.4.1.1.88.33": "a Structured Report (text, not an image)",
    "1.2.840.10008.5.1.4.1.1.104.1": "an encapsulated PDF",
}


@dataclass
class DecodedImage:
    """An input decoded for the models: `image` is always 8-bit RGB."""

    image: Any  # PIL.Image.Image, mode RGB
    kind: str  # "image" or "dicom"
    info: dict[str, Any] = field(default_factory=dict)
    hu: np.ndarray | None = None  # DICOM only: the frame in modality units (HU for CT)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


# -- file-level checks --------------------------------------------------------------------
def check_file_size(path: str | os.PathLike[str], settings: Settings | None = None) -> int:
    """Reject a file over the upload limit by its size on disk, before reading it."""
    settings = settings or load_settings()
    p = Path(path)
    if not p.is_file():
        raise UnsupportedFileError(f"No file was received ({p.name or 'empty path'}).")
    size = p.stat().st_size
    if size == 0:
        raise CorruptFileError(f"{p.name} is empty (0 bytes).")
    if size > settings.max_upload_bytes:
        raise ImageTooLargeError(
            f"{p.name} is {size / 2**20:.1f} MB; the limit is {settings.max_upload_mb:g} MB "
            "(MEDLAB_MAX_UPLOAD_MB)."
        )
    return size


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """True when the file has the DICOM preamble magic, or a DICOM suffix."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or p.suffix.lower() in DICOM_SUFFIXES


def _check_dimensions(width: int, height: int, frames: int, name: str, settings: Settings) -> None:
    pixels = width * height * max(frames, 1)
    if pixels > settings.max_image_pixels:
        raise ImageTooLargeError(
            f"{name} is {width}x{height}"
            + (f"x{frames} frames" if frames > 1 else "")
            + f" = {pixels / 1e6:.0f} megapixels; the limit is {settings.max_image_pixels / 1e6:.0f} "
            "megapixels (this protects the server from 'decompression bomb' files)."
        )
    if min(width, height) < MIN_SIDE:
        raise ImageTooSmallError(
            f"{name} is only {width}x{height} pixels; images must be at least {MIN_SIDE}x{MIN_SIDE}."
        )


# -- ordinary images ------------------------------------------------------------------------
def _to_rgb(img: Any) -> tuple[Any, str]:
    """Convert any PIL mode to 8-bit RGB; returns (image, note)."""
    from PIL import Image

    mode = img.mode
    if mode == "RGB":
        return img, ""
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(scaled.astype(np.uint8)).convert("RGB"), f"{mode} rescaled to 8 bits"
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB"), "transparency flattened on white"
    if mode == "CMYK":
        return img.convert("RGB"), "CMYK converted to RGB"
    if mode == "1":
        return img.convert("L").convert("RGB"), "1-bit converted"
    return img.convert("RGB"), f"{mode} converted to RGB" if mode not in ("L", "P") else ""


def load_image(path: str | os.PathLike[str], settings: Settings | None = None) -> DecodedImage:
    """Decode PNG/JPEG/WebP/BMP/TIFF/GIF into RGB, applying EXIF orientation and limits."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    settings = settings or load_settings()
    p = Path(path)
    check_file_size(p, settings)
    name = p.name
    try:
        # Our own pixel limit is checked from the header below; PIL's global one would
        # raise a less helpful message (and only at 2x its threshold).
        with Image.open(p) as img:
            fmt = img.format or "?"
            if fmt not in IMAGE_FORMATS:
                raise UnsupportedFileError(
                    f"{name} is a {fmt} file; supported images are PNG, JPEG, WebP, BMP, TIFF and GIF "
                    "(or DICOM where the tab accepts it)."
                )
            frames = int(getattr(img, "n_frames", 1) or 1)
            _check_dimensions(img.width, img.height, 1, name, settings)
            original_mode = img.mode
            if frames > 1:
                img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            rgb, note = _to_rgb(img)
            rgb = rgb.copy()
    except UnidentifiedImageError:
        raise UnsupportedFileError(
            f"{name} is not an image that can be read (its contents are not PNG, JPEG, WebP, "
            "BMP, TIFF or GIF, whatever its name says)."
        ) from None
    except Image.DecompressionBombError as exc:
        # PIL refuses in open() beyond twice its own limit, before our header check runs.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f" ({int(found.group(1)) / 1e6:.0f} megapixels)" if found else ""
        raise ImageTooLargeError(
            f"{name} is too large to decode safely{size}; the limit is "
            f"{settings.max_image_pixels / 1e6:.0f} megapixels (a 'decompression bomb' guard)."
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, (UnsupportedFileError, ImageTooLargeError, ImageTooSmallError)):
            raise
        raise CorruptFileError(
            f"{name} looks like an image but could not be decoded; it may be truncated or damaged."
        ) from None
    info: dict[str, Any] = {"format": fmt, "mode": original_mode, "width": rgb.width, "height": rgb.height}
    if frames > 1:
        info["frames"] = frames
        note = (note + "; " if note else "") + f"animated/multi-page file: frame 1 of {frames} used"
    if note:
        info["note"] = note
    return DecodedImage(rgb, "image", info)


# -- DICOM ---------------------------------------------------------------------------------
def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map modality values to 0..255 with a linear window (DICOM 'linear exact' style)."""
    if width <= 0:
        raise ValueError("window width must be positive")
    lo = center - width / 2.0
    out = (values.astype(np.float64) - lo) / width
    return (np.clip(out, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _first(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def load_dicom(
    path: str | os.PathLike[str],
    window: str = "lung",
    frame: int | None = None,
    settings: Settings | None = None,
) -> DecodedImage:
    """Decode one DICOM frame: stored values -> modality units (HU for CT) -> window -> RGB."""
    import pydicom
    from PIL import Image
    from pydicom.errors import InvalidDicomError

    settings = settings or load_settings()
    p = Path(path)
    check_file_size(p, settings)
    name = p.name
    if window not in WINDOWS:
        raise DicomError(f"Unknown window {window!r}; choose one of {', '.join(WINDOWS)}.")
    try:
        ds = pydicom.dcmread(p)
    except InvalidDicomError:
        raise UnsupportedFileError(f"{name} is not a DICOM file (no DICOM header found).") from None
    except Exception:  # noqa: BLE001 - pydicom raises many types for damaged files
        raise CorruptFileError(f"{name} is a damaged DICOM file and could not be read.") from None

    sop = str(getattr(ds, "SOPClassUID", ""))
    if sop in _NON_IMAGE_SOP:
        raise DicomError(f"{name} is {_NON_IMAGE_SOP[sop]}; please upload an image series slice (e.g. CT).")
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DicomError(f"{name} is a DICOM file without pixel data, so there is no image to show.")

    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    _check_dimensions(cols, rows, frames, name, settings)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown"))
        raise CorruptFileError(
            f"{name}: the pixel data could not be decoded (transfer syntax {ts}; compressed DICOM "
            f"may need pylibjpeg/gdcm) - {type(exc).__name__}."
        ) from None

    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames > 1:
        index = frames // 2 if frame is None else frame
        if not 0 <= index < frames:
            raise DicomError(f"{name} has {frames} frames; frame {index} does not exist (0..{frames - 1}).")
        arr = arr[index]
    else:
        index = 0
    info: dict[str, Any] = {
        "format": "DICOM",
        "modality": str(getattr(ds, "Modality", "")) or "unknown",
        "photometric": photometric,
        "width": cols,
        "height": rows,
        "frames": frames,
        "frame": index,
    }
    if samples == 3:  # colour DICOM (e.g. photographs, pathology): no HU, no window
        rgb = Image.fromarray(np.asarray(arr).astype(np.uint8), "RGB")
        info["window"] = "none (colour image)"
        return DecodedImage(rgb, "dicom", info)

    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    if window == "auto":
        center = _first(getattr(ds, "WindowCenter", None))
        width = _first(getattr(ds, "WindowWidth", None))
        if center is None or width is None or width <= 0:
            lo, hi = np.percentile(values, [0.5, 99.5])
            center, width = (lo + hi) / 2.0, max(hi - lo, 1.0)
        window_used = f"auto (center {center:g}, width {width:g})"
    else:
        center, width = WINDOWS[window]  # type: ignore[misc]
        window_used = f"{window} (center {center:g}, width {width:g})"
    gray = apply_window(values, center, width)
    if photometric == "MONOCHROME1":  # MONOCHROME1 stores high values as dark
        gray = 255 - gray
    info["window"] = window_used
    info["units"] = "HU" if info["modality"] == "CT" else "modality units"
    rgb = Image.fromarray(gray, "L").convert("RGB")
    return DecodedImage(rgb, "dicom", info, hu=values)


def load_any(
    path: str | os.PathLike[str],
    window: str = "lung",
    frame: int | None = None,
    settings: Settings | None = None,
) -> DecodedImage:
    """One entry point for uploads that may be an image or a DICOM file."""
    return load_dicom(path, window, frame, settings) if is_dicom(path) else load_image(path, settings)
