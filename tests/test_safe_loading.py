"""Safe loading and exposure.

- Every loader refuses pickle-only weights unless MEDLAB_ALLOW_PICKLE is set, and even when it
  is set, a booby-trapped pickle does not run (torch.load(weights_only=True) underneath).
- No source file passes trust_remote_code=True; every torch.load passes weights_only=True.
- DICOM patient tags never reach an API output, the logs or stdout."""

from __future__ import annotations

import ast
import logging
import shutil
from pathlib import Path

import pytest

from medlab.core.errors import ModelUnavailableError
from tests import bad_files as bf

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("medlab", "tabs", "training", "bench", "scripts")
# weights file -> the pickle file name each library looks for instead
PICKLE_NAME = {
    "model.safetensors": "pytorch_model.bin",
    "open_clip_model.safetensors": "open_clip_pytorch_model.bin",
}
KEYS = {  # registry key -> env var of its tiny local dir
    "skin": "MEDLAB_MODEL_SKIN",
    "lung_ct": "MEDLAB_MODEL_LUNG_CT",
    "impression": "MEDLAB_MODEL_IMPRESSION",
    "plip": "MEDLAB_MODEL_PLIP",
    "clip_baseline": "MEDLAB_MODEL_CLIP_BASELINE",
    "captioner": "MEDLAB_MODEL_CAPTIONER",
}


class _Trap:
    """Pickles to a call of os.system: loading it with plain pickle would run the command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        import os

        return (os.system, (f"touch {self.marker}",))


def _pickle_only_copy(src: str, dst: Path, marker: Path | None) -> Path:
    import torch

    shutil.copytree(src, dst)
    for weights in list(dst.glob("*.safetensors")):
        weights.unlink()
        target = dst / PICKLE_NAME.get(weights.name, weights.stem + ".bin")
        payload = {"weight": torch.zeros(1)} if marker is None else {"weight": _Trap(marker)}
        torch.save(payload, target)
    return dst


@pytest.mark.parametrize("key", sorted(KEYS))
def test_pickle_weights_refused_unless_allowed_and_never_executed(
    key: str, use_tiny_models: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medlab.core.loaders import get_model, reset_cache

    var = KEYS[key]
    marker = tmp_path / "pwned"
    d = _pickle_only_copy(use_tiny_models[var], tmp_path / "pickled", marker)
    monkeypatch.setenv(var, str(d))
    with pytest.raises(ModelUnavailableError, match="MEDLAB_ALLOW_PICKLE"):
        get_model(key)
    # Allowed explicitly: the trap still must not run (weights_only loading refuses it).
    monkeypatch.setenv("MEDLAB_ALLOW_PICKLE", "1")
    reset_cache()
    with pytest.raises(Exception):  # noqa: B017 - any refusal; the point is the marker below
        get_model(key)
    assert not marker.exists(), f"{key}: loading pickle weights executed code"


def _sources() -> list[Path]:
    files = [ROOT / "app.py"]
    for d in SOURCE_DIRS:
        files += sorted((ROOT / d).rglob("*.py"))
    return [f for f in files if ".venv" not in f.parts]


def test_no_trust_remote_code_and_torch_load_is_weights_only() -> None:
    offenders = []
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            kw = {k.arg: k.value for k in node.keywords if k.arg}
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            trust = kw.get("trust_remote_code")
            if trust is not None and not (isinstance(trust, ast.Constant) and trust.value is False):
                offenders.append(f"{where} trust_remote_code={ast.unparse(trust)}")
            if any(k.arg is None for k in node.keywords) and "trust_remote_code" in ast.unparse(node):
                offenders.append(f"{where} trust_remote_code via **kwargs")
            func = node.func
            is_torch_load = (isinstance(func, ast.Attribute) and func.attr == "load"
                             and isinstance(func.value, ast.Name) and func.value.id == "torch")
            if is_torch_load:
                wo = kw.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    offenders.append(f"{where} torch.load without weights_only=True")
    assert not offenders, offenders
    assert len(_sources()) > 20  # the scan really saw the project


def test_dicom_patient_tags_never_shown_or_logged(live_app, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    from gradio_client import handle_file

    _, client = live_app
    name, pid = "SECRET^PATIENT", "PID-778899-SECRET"
    dcm = bf.dicom_with_patient(tmp_path, name, pid)
    caplog.set_level(logging.DEBUG)
    result = client.predict(handle_file(str(dcm)), api_name="/lung_classify")
    probs, overlay, text, summary = result
    assert len(probs["confidences"]) == 3  # it was really classified
    secrets = ("SECRET", "778899", "19010203")
    shown = repr(result)
    assert not any(s in shown for s in secrets), shown
    assert not any(s.encode() in Path(overlay).read_bytes() for s in secrets)  # no PNG text chunk
    # an error path too: the same patient in a DICOM without pixels
    import pydicom

    ds = pydicom.dcmread(dcm)
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        client.predict(handle_file(str(tmp_path / "nopix.dcm")), api_name="/lung_classify")
    assert not any(s in str(info.value) for s in secrets)
    status = repr(client.predict(api_name="/model_status"))
    logs = "\n".join(r.getMessage() for r in caplog.records)
    out, err = capfd.readouterr()
    for s in secrets:
        assert s not in status and s not in logs and s not in out and s not in err, s


def test_decoded_dicom_info_has_no_patient_tags(tmp_path: Path) -> None:
    from medlab.io.imaging import load_dicom

    decoded = load_dicom(bf.dicom_with_patient(tmp_path))
    text = repr(decoded.info)
    assert "SECRET" not in text and "778899" not in text
    assert not any(k.lower().startswith("patient") for k in decoded.info)
