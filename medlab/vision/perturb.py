"""Perturbation families for the Failure lab (stress test): one definition per family, as data.

Each Family says what it does (name, title, parameter, range, unit, one-line description) and
how to apply strength s to a PIL RGB image (torchvision.transforms.v2.functional ops; Pillow
for JPEG and blur). The first value of every range is the identity: it returns the image unchanged, so
step 0 of a sweep is always the unperturbed input. The UI reads FAMILIES; nothing is copied
into it."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from medlab.core.errors import InputError

NOISE_SEED = 0  # Gaussian noise is drawn from a seeded generator: the same sweep twice is the same sweep
OCCLUDER_GREY = 128
OCCLUDER_SIDE = 0.4  # the patch's side, as a share of the image's short side
MAX_STEPS = 16
# A sweep works on a copy at most this long a side: the models see 224-240 px, and 8 blurred or
# rotated copies of a 12-megapixel photo (and their strip) would cost seconds for nothing.
SWEEP_MAX_SIDE = 1024
MIN_STEPS = 3


class UnknownFamilyError(InputError):
    """A perturbation family that is not in FAMILIES."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.valid = list(FAMILIES)
        super().__init__(f"Unknown perturbation family {name!r}; choose one of {', '.join(FAMILIES)}.")


@dataclass(frozen=True)
class Family:
    name: str  # the API value, e.g. "rotation"
    title: str  # what the UI shows
    parameter: str  # what the strength is
    start: float  # the identity: the image unchanged
    stop: float  # the strongest perturbation of a sweep
    unit: str
    description: str
    fn: Callable[[Any, float], Any]  # (PIL RGB image, strength) -> PIL RGB image, same size
    short: str = "{:.3g}"  # a strength in a few characters (the strip's captions)

    def strengths(self, steps: int = 8) -> list[float]:
        """`steps` evenly spaced strengths from the identity to the strongest."""
        steps = check_steps(steps)
        return [round(self.start + (self.stop - self.start) * i / (steps - 1), 6) for i in range(steps)]

    def apply(self, image: Any, strength: float) -> Any:
        lo, hi = sorted((self.start, self.stop))
        if not lo - 1e-9 <= float(strength) <= hi + 1e-9:
            raise InputError(f"{self.title}: strength {strength} is outside {lo:g}..{hi:g} {self.unit}.")
        rgb = image.convert("RGB")
        if float(strength) == self.start:
            return rgb.copy()
        return self.fn(rgb, float(strength))

    def caption(self, strength: float) -> str:
        return self.short.format(strength)

    def axis_label(self) -> str:
        return f"{self.parameter} ({self.unit})"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "parameter": self.parameter, "start": self.start,
                "stop": self.stop, "unit": self.unit, "description": self.description}


def check_steps(steps: Any) -> int:
    try:
        n = int(steps)
    except (TypeError, ValueError):
        raise InputError(f"Steps must be a whole number from {MIN_STEPS} to {MAX_STEPS}.") from None
    if not MIN_STEPS <= n <= MAX_STEPS:
        raise InputError(f"Steps must be from {MIN_STEPS} to {MAX_STEPS} (got {n}).")
    return n


# -- the operations ----------------------------------------------------------------------------
def _rotate(image: Any, degrees: float) -> Any:
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    return F.rotate(image, degrees, interpolation=InterpolationMode.BILINEAR, expand=False, fill=0)


def _blur(image: Any, percent: float) -> Any:
    """Pillow's Gaussian blur (radius = the standard deviation), not torchvision's: torchvision
    convolves with the full 2-D kernel, and at 3 % of a 512 px side (a 93 x 93 kernel) the
    8-step sweep took 35 s on the 2-core box; Pillow's separable approximation takes ms."""
    from PIL import ImageFilter

    return image.filter(ImageFilter.GaussianBlur(radius=percent / 100.0 * min(image.size)))


def _noise(image: Any, sigma: float) -> Any:
    import torch
    from torchvision.transforms.v2 import functional as F

    x = F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True)
    generator = torch.Generator().manual_seed(NOISE_SEED)
    noisy = (x + sigma * torch.randn(x.shape, generator=generator)).clamp(0.0, 1.0)
    return F.to_pil_image(F.to_dtype(noisy, torch.uint8, scale=True))


def _jpeg(image: Any, quality: float) -> Any:
    from PIL import Image

    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=int(round(quality)))
    buf.seek(0)
    with Image.open(buf) as decoded:
        return decoded.convert("RGB")


def _brightness(image: Any, factor: float) -> Any:
    from torchvision.transforms.v2 import functional as F

    return F.adjust_brightness(image, factor)


def _contrast(image: Any, factor: float) -> Any:
    from torchvision.transforms.v2 import functional as F

    return F.adjust_contrast(image, factor)


def _zoom(image: Any, factor: float) -> Any:
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    width, height = image.size
    crop = [max(1, round(height / factor)), max(1, round(width / factor))]
    return F.resize(F.center_crop(image, crop), [height, width], interpolation=InterpolationMode.BILINEAR,
                    antialias=True)


def occluder_box(width: int, height: int, percent: float) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the grey patch, clipped to the image: at 0 % it sits just
    outside the left edge (nothing covered), at 100 % against the right edge; vertically centred."""
    side = max(1, round(OCCLUDER_SIDE * min(width, height)))
    left = round(-side + percent / 100.0 * width)
    top = (height - side) // 2
    return max(0, left), max(0, top), min(width, left + side), min(height, top + side)


def _occlude(image: Any, percent: float) -> Any:
    import torch
    from torchvision.transforms.v2 import functional as F

    left, top, right, bottom = occluder_box(*image.size, percent)
    pixels = F.pil_to_tensor(image)
    if right > left and bottom > top:
        pixels = F.erase(pixels, top, left, bottom - top, right - left, torch.tensor(OCCLUDER_GREY, dtype=torch.uint8))
    return F.to_pil_image(pixels)


FAMILIES: MappingProxyType[str, Family] = MappingProxyType({f.name: f for f in (
    Family("rotation", "Rotation", "angle", 0.0, 180.0, "degrees",
           "Turns the image counter-clockwise about its centre; corners that leave the frame are filled black.",
           _rotate, "{:.3g}°"),
    Family("blur", "Gaussian blur", "sigma", 0.0, 3.0, "% of the short side",
           "Smooths the image with a Gaussian kernel (Pillow; sigma relative to the image size, so the model sees "
           "the same blur whatever the upload's resolution).", _blur, "σ {:.3g}%"),
    Family("noise", "Gaussian noise", "sigma", 0.0, 0.4, "of the 0-1 pixel range",
           f"Adds Gaussian noise to every pixel (seeded generator, seed {NOISE_SEED}: the same each time), "
           "then clips to the valid range.", _noise, "σ {:.2g}"),
    Family("jpeg", "JPEG quality", "quality", 100.0, 5.0, "JPEG quality",
           "Re-encodes the image as JPEG with Pillow at decreasing quality (100 = the original, not "
           "re-encoded); block artefacts grow as quality falls.", _jpeg, "q {:.0f}"),
    Family("brightness", "Brightness", "factor", 1.0, 0.1, "x original",
           "Multiplies every pixel by the factor: 1 = unchanged, lower = darker (under-exposure).", _brightness, "×{:.2g}"),
    Family("contrast", "Contrast", "factor", 1.0, 0.1, "x original",
           "Blends the image with its mean grey: 1 = unchanged, lower = flatter (a washed-out photo).",
           _contrast, "×{:.2g}"),
    Family("zoom", "Centre crop / zoom", "zoom", 1.0, 4.0, "x",
           "Crops the centre (1/zoom of each side) and resizes it back: the model sees less context, "
           "magnified.", _zoom, "×{:.2g}"),
    Family("occlusion", "Sliding occluding patch", "patch position", 0.0, 100.0, "% across",
           f"Slides a grey square ({OCCLUDER_SIDE:.0%} of the short side) in from the left edge across the "
           "middle of the image: where does hiding a region change the answer?", _occlude, "{:.0f}% across"),
)})
DEFAULT_FAMILY = "rotation"


def get_family(name: str) -> Family:
    family = FAMILIES.get(str(name or "").strip().lower())
    if family is None:
        raise UnknownFamilyError(str(name))
    return family


def choices() -> list[tuple[str, str]]:
    """(title, name) pairs for a UI dropdown."""
    return [(f.title, f.name) for f in FAMILIES.values()]


def working_copy(image: Any, max_side: int = SWEEP_MAX_SIDE) -> Any:
    """The image in RGB, reduced (antialiased, aspect kept) when its long side exceeds max_side."""
    from PIL import Image

    rgb = image.convert("RGB")
    if max(rgb.size) <= max_side:
        return rgb
    scale = max_side / max(rgb.size)
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    return rgb.resize(size, Image.Resampling.LANCZOS)


def sweep(image: Any, family: str | Family, steps: int = 8) -> tuple[list[float], list[Any]]:
    """(strengths, perturbed images); step 0 is the unperturbed image (its working copy:
    reduced to SWEEP_MAX_SIDE when larger)."""
    fam = family if isinstance(family, Family) else get_family(family)
    strengths = fam.strengths(steps)
    base = working_copy(image)
    return strengths, [fam.apply(base, s) for s in strengths]
