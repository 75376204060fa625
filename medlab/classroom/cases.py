"""Quiz case sets: each tab's example set as data, and the model's real answer per case.

The assets that ship with the app (assets/ATTRIBUTION.md) are few and partly synthetic, so
the sets are built honestly from them: the same real CT slice under different DICOM windows
and simple perturbations (what changes the model's answer?), the off-domain cat photo (does
the input gate catch it?), the synthetic lesion, the four IHC tiles. A case has a reference
label only where the truth is known (the cat is not a CT slice); the others say "no reference
label" rather than inventing one.

Choices are read from the engines (lung_ct.classes(), skin's benign/malignant, the zero-shot
default labels); the model's answer comes from the real engine call (classify_lung,
classify_skin, zero_shot), never from this file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlab.core.errors import InputError

ASSETS = Path(__file__).resolve().parent.parent.parent / "assets"
LUNG_OFF_DOMAIN = "not a CT slice (off-domain)"
SKIN_OFF_DOMAIN = "not a skin photo (off-domain)"
LUNG_DEFER = "defer to an expert (not sure enough)"  # document 001's rule: the app reports no class
SKIN_UNCERTAIN = "uncertain"  # medlab.vision.skin's band around the threshold
CAT_SOURCE = "a photo of a cat (scikit-image's chelsea, CC0): not medical at all"
CT_NOTE = "pydicom's CT_small.dcm, a NEMA WG04 test slice (MIT); its diagnosis is not known"


@dataclass(frozen=True)
class Case:
    case_id: str
    case_set: str
    asset: str  # path under assets/
    title: str
    question: str
    choices: tuple[str, ...]
    reference: str | None  # None: no trustworthy reference label
    reference_source: str
    attribution: str
    window: str = "lung"  # DICOM window (lung cases)
    perturbation: str | None = None  # rot90 | hflip | blur | noise | dark | lowres
    teaching_point: str = ""

    @property
    def path(self) -> Path:
        return ASSETS / self.asset

    @property
    def is_dicom(self) -> bool:
        return self.path.suffix.lower() == ".dcm"


@dataclass
class ModelAnswer:
    answer: str  # one of the case's choices
    probabilities: dict[str, float]
    explanation: str  # Markdown: the decision and why
    overlay: Any = None  # PIL image (lung: Grad-CAM) or None
    detail: dict[str, Any] = field(default_factory=dict)


# -- the sets -----------------------------------------------------------------------------------
def _lung() -> list[Case]:
    from medlab.vision import lung_ct

    choices = (*lung_ct.classes(), LUNG_DEFER, LUNG_OFF_DOMAIN)
    ask = "What will the lung-CT model answer for this image?"
    dcm, png = "lung/CT_small.dcm", "lung/ct_small_lung_window.png"
    cat = "skin/offdomain_cat_chelsea.jpg"

    def ct(cid: str, asset: str, title: str, point: str, **kw: Any) -> Case:
        return Case(cid, "lung_ct", asset, title, ask, choices, None, CT_NOTE, "assets/ATTRIBUTION.md: MIT (pydicom)",
                    teaching_point=point, **kw)

    return [
        ct("lung-dcm-lung", dcm, "Chest CT slice, DICOM, lung window", "The lung window the model expects.", window="lung"),
        ct("lung-dcm-mediastinal", dcm, "Same slice, mediastinal window", "Same pixels in HU, another display window: "
           "does the answer change?", window="mediastinal"),
        ct("lung-dcm-bone", dcm, "Same slice, bone window", "Bone window: the lungs turn black.", window="bone"),
        ct("lung-dcm-auto", dcm, "Same slice, the file's own window", "The window stored in the file.", window="auto"),
        ct("lung-png", png, "Same slice as an 8-bit PNG", "The PNG the app ships: same as the lung window?"),
        ct("lung-png-rot90", png, "Same slice, rotated 90°", "A rotation a radiologist would ignore.", perturbation="rot90"),
        ct("lung-png-noise", png, "Same slice with added noise", "Gaussian noise (σ 25 grey levels).", perturbation="noise"),
        ct("lung-png-lowres", png, "Same slice at 32×32, scaled back up", "Most detail is gone.", perturbation="lowres"),
        ct("lung-png-hflip", png, "Same slice, mirrored left-right", "Mirrored: left and right swap.", perturbation="hflip"),
        Case("lung-cat", "lung_ct", cat, "A cat photo", ask, choices, LUNG_OFF_DOMAIN, CAT_SOURCE,
             "assets/ATTRIBUTION.md: CC0", teaching_point="Does the input gate catch it?"),
    ]


def _skin() -> list[Case]:
    choices = ("benign", "malignant", SKIN_UNCERTAIN, SKIN_OFF_DOMAIN)  # medlab.vision.skin's decision labels
    ask = "What will the skin-lesion model answer for this image?"
    lesion = "skin/synthetic_lesion.png"
    synthetic = "drawn by this project: not a patient, so there is no true label"

    def syn(cid: str, title: str, point: str, perturbation: str | None = None) -> Case:
        return Case(cid, "skin", lesion, title, ask, choices, None, synthetic, "assets/ATTRIBUTION.md: Apache-2.0",
                    perturbation=perturbation, teaching_point=point)

    return [
        syn("skin-lesion", "Synthetic lesion", "A drawn blob: what does a real model make of it?"),
        syn("skin-lesion-rot90", "Synthetic lesion, rotated 90°", "Rotation should not matter.", "rot90"),
        syn("skin-lesion-blur", "Synthetic lesion, blurred", "Out of focus.", "blur"),
        syn("skin-lesion-dark", "Synthetic lesion, half brightness", "Poor lighting.", "dark"),
        syn("skin-lesion-noise", "Synthetic lesion with noise", "A grainy photo.", "noise"),
        Case("skin-cat", "skin", "skin/offdomain_cat_chelsea.jpg", "A cat photo", ask, choices, SKIN_OFF_DOMAIN,
             CAT_SOURCE, "assets/ATTRIBUTION.md: CC0", teaching_point="Does the input gate catch it?"),
    ]


def _pathology() -> list[Case]:
    from medlab.retrieval.zero_shot import DEFAULT_LABELS

    choices = tuple(DEFAULT_LABELS)
    ask = "Which tissue label will PLIP (zero-shot) pick for this tile?"
    source = ("colonic glands, FHL2 IHC (scikit-image's immunohistochemistry image): whether normal or tumour is not "
              "stated, and it is IHC, not the H&E the labels describe")
    attribution = "assets/ATTRIBUTION.md: no known copyright restrictions (scikit-image)"
    out = []
    for corner in ("top_left", "top_right", "bottom_left", "bottom_right"):
        out.append(Case(f"path-{corner.replace('_', '-')}", "pathology", f"pathology/ihc_colon_glands_{corner}.jpg",
                        f"IHC colon tile ({corner.replace('_', ' ')})", ask, choices, None, source, attribution,
                        teaching_point="An IHC tile scored against H&E labels."))
    for pert, title in (("hflip", "mirrored"), ("blur", "blurred")):
        out.append(Case(f"path-top-left-{pert}", "pathology", "pathology/ihc_colon_glands_top_left.jpg",
                        f"IHC colon tile (top left), {title}", ask, choices, None, source, attribution,
                        perturbation=pert, teaching_point="Does a harmless change move the label?"))
    return out


CASE_SETS: dict[str, tuple[str, Callable[[], list[Case]]]] = {
    "lung_ct": ("Lung CT: one real slice, windows and perturbations, and a cat", _lung),
    "skin": ("Skin lesion: the synthetic lesion, perturbed, and a cat", _skin),
    "pathology": ("Pathology: the four IHC tiles and two variants (PLIP zero-shot)", _pathology),
}


def case_set_names() -> list[str]:
    return list(CASE_SETS)


def case_set(name: str) -> list[Case]:
    if name not in CASE_SETS:
        raise InputError(f"Unknown case set {name!r}; choose one of {', '.join(CASE_SETS)}.")
    return CASE_SETS[name][1]()


def describe(name: str) -> str:
    return CASE_SETS[name][0] if name in CASE_SETS else name


def get_case(case_id: str, set_name: str | None = None) -> Case:
    """The case with this id (looked up in `set_name` only, when given)."""
    for name in ([set_name] if set_name in CASE_SETS else CASE_SETS):
        for case in case_set(name):
            if case.case_id == case_id:
                return case
    raise InputError(f"Unknown quiz case {case_id!r}.")


# -- images -------------------------------------------------------------------------------------
def _perturb(img: Any, kind: str | None) -> Any:
    import numpy as np
    from PIL import Image, ImageEnhance, ImageFilter

    if kind is None:
        return img
    if kind == "rot90":
        return img.rotate(90, expand=True)
    if kind == "hflip":
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(3))
    if kind == "dark":
        return ImageEnhance.Brightness(img).enhance(0.5)
    if kind == "lowres":
        return img.resize((32, 32), Image.Resampling.BILINEAR).resize(img.size, Image.Resampling.NEAREST)
    if kind == "noise":
        arr = np.asarray(img.convert("RGB"), dtype=np.float32)
        noisy = arr + np.random.default_rng(0).normal(0.0, 25.0, arr.shape)
        return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    raise ValueError(f"unknown perturbation {kind!r}")


def case_image_path(case: Case, cache_dir: Path | None = None) -> Path:
    """A PNG of what the student sees (DICOM rendered in the case's window, perturbation
    applied), written once under MEDLAB_DATA_DIR/classroom/cases."""
    from medlab.core.config import load_settings

    folder = cache_dir or load_settings().data_dir / "classroom" / "cases"
    target = folder / f"{case.case_id}.png"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    if case.is_dicom:
        from medlab.io.imaging import load_dicom

        img = load_dicom(case.path, window=case.window).image
    else:
        from PIL import Image

        with Image.open(case.path) as raw:
            img = raw.convert("RGB")
    img = _perturb(img, case.perturbation)
    fd, staging = tempfile.mkstemp(dir=folder, prefix=f".{case.case_id}.", suffix=".png")
    os.close(fd)
    img.save(staging, format="PNG")
    os.replace(staging, target)
    return target


def model_input(case: Case) -> tuple[str, dict[str, Any]]:
    """(file, keyword arguments) for the engine: the DICOM with its window, else the PNG the
    student sees (perturbation applied)."""
    if case.is_dicom and case.perturbation is None:
        return str(case.path), {"window": case.window}
    return str(case_image_path(case)), {}


# -- the model's answer -----------------------------------------------------------------------
def model_answer(case: Case, progress: Any = None) -> ModelAnswer:
    """Run the case's engine on the case and express its result as one of the choices."""
    path, kwargs = model_input(case)
    if case.case_set == "lung_ct":
        from medlab.vision.lung_ct import classify_lung

        r = classify_lung(path, progress=progress, **kwargs)
        answer = LUNG_OFF_DOMAIN if r.gate.flagged else LUNG_DEFER if r.defer.deferred else r.defer.top_label
        expl = r.defer.text + "\n\n" + r.gate.markdown()
        if r.gate.flagged:
            expl = (f"The input gate flagged the image, so the app's answer is *{LUNG_OFF_DOMAIN}* (the classifier "
                    f"alone said *{r.defer.top_label}*, {r.defer.top_probability:.1%}).\n\n") + expl
        elif r.defer.deferred:
            expl = (f"The app's answer is *{LUNG_DEFER}*: its most likely class, *{r.defer.top_label}*, is below the "
                    f"*{r.defer.scenario}* scenario's threshold.\n\n") + expl
        return ModelAnswer(answer, dict(r.probabilities), expl, r.overlay, r.summary())
    if case.case_set == "skin":
        from medlab.vision.skin import classify_skin

        r = classify_skin(path, progress=progress)
        p = r.malignant_probability
        answer = SKIN_OFF_DOMAIN if r.gate.flagged else r.decision.label  # benign, malignant or uncertain
        expl = r.decision.text(p) + "\n\n" + r.gate.markdown()
        if r.gate.flagged:
            expl = (f"The input gate flagged the image, so the app's answer is *{SKIN_OFF_DOMAIN}* (the classifier "
                    f"alone said *{r.decision.label}*).\n\n") + expl
        return ModelAnswer(answer, {"malignant": p, "benign": 1.0 - p}, expl, None, r.summary())
    if case.case_set == "pathology":
        from medlab.retrieval.zero_shot import zero_shot

        out = zero_shot(path, list(case.choices), keys=("plip",), progress=progress)
        probs = out["plip"]["probs"]
        top = max(probs, key=probs.get)
        expl = (f"PLIP's top label: **{top}** ({probs[top]:.1%}), zero-shot over the {len(probs)} labels with the "
                "prompt \"An H&E image of {label}.\" Probabilities are relative to these labels only.")
        return ModelAnswer(top, probs, expl, None, {"plip": probs})
    raise InputError(f"Unknown case set {case.case_set!r}.")
