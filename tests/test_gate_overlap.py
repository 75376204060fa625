"""The input gates run beside the model's forward (skin) and forward + Grad-CAM (lung CT),
not before them (issue #16 item 4), and their verdict is the one reported."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from medlab.vision import classify, gate, gradcam, lung_ct, skin

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DELAY = 1.0


def _skin(monkeypatch: pytest.MonkeyPatch, slow: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    monkeypatch.setattr(classify, "forward", slow(classify.forward))


def _lung(monkeypatch: pytest.MonkeyPatch, slow: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    monkeypatch.setattr(gradcam, "grad_cam", slow(gradcam.grad_cam))


CASES = {
    "skin": (skin.classify_skin, "check_skin", _skin, ASSETS / "skin" / "synthetic_lesion.png"),
    "lung_ct": (lung_ct.classify_lung, "check_lung_ct", _lung, ASSETS / "lung" / "ct_small_lung_window.png"),
}


@pytest.mark.parametrize("task", sorted(CASES))
def test_gate_overlaps_the_model_and_its_verdict_is_kept(task: str, use_tiny_models,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline, gate_name, patch_model, asset = CASES[task]
    pipeline(asset)  # load the model first: only the request is timed
    seen: dict[str, object] = {}
    verdict = gate.GateResult("off-domain", "medium", ["planted verdict"])

    def slow_gate(image, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen["gate_thread"] = threading.current_thread().name
        seen["gate_size"] = image.size
        time.sleep(DELAY)
        return verdict

    def slow(real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            seen["model_thread"] = threading.current_thread().name
            time.sleep(DELAY)
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(gate, gate_name, slow_gate)
    patch_model(monkeypatch, slow)
    start = time.perf_counter()
    result = pipeline(asset)
    elapsed = time.perf_counter() - start
    # in series the two sleeps alone take 2 x DELAY; side by side about one
    assert elapsed < 1.6 * DELAY, elapsed
    assert "model_thread" in seen and seen["gate_thread"] != seen["model_thread"]
    assert result.gate is verdict  # the gate's verdict is the one reported
    with Image.open(asset) as img:
        assert seen["gate_size"] == img.size  # the gate saw the whole uploaded image


@pytest.mark.parametrize("task", sorted(CASES))
def test_gate_switched_off_is_said(task: str, use_tiny_models, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline, gate_name, _, asset = CASES[task]

    def must_not_run(*args: Any, **kwargs: Any) -> gate.GateResult:
        raise AssertionError("the gate ran although it was switched off")

    monkeypatch.setattr(gate, gate_name, must_not_run)
    result = pipeline(asset, gate_enabled=False)
    assert result.gate.verdict == "plausible" and result.gate.reasons == ["Input gate switched off."]


def test_gate_thread_runs_torch_on_one_core_and_leaves_the_callers_setting() -> None:
    import torch

    before = torch.get_num_threads()
    in_gate = gate.beside(lambda image: torch.get_num_threads(), Image.new("RGB", (8, 8))).result()
    assert in_gate == 1
    assert torch.get_num_threads() == before  # the caller (the model's forward) keeps its cores
    fresh: dict[str, int] = {}
    t = threading.Thread(target=lambda: fresh.setdefault("n", torch.get_num_threads()))
    t.start()
    t.join()
    assert fresh["n"] == before  # and so do threads started later (Gradio's workers)
