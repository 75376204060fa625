"""The skin input gate runs beside the classifier's forward, not before it (issue #16 item 4)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from medlab.vision import classify, gate, skin

ASSET = Path(__file__).resolve().parent.parent / "assets" / "skin" / "synthetic_lesion.png"
DELAY = 1.0


def test_gate_overlaps_the_forward_and_its_verdict_is_kept(use_tiny_models, monkeypatch) -> None:
    skin.classify_skin(ASSET)  # load the model first: only the request is timed
    real_forward = classify.forward
    seen: dict[str, object] = {}
    verdict = gate.GateResult("off-domain", "medium", ["planted verdict"])

    def slow_gate(image):  # noqa: ANN001, ANN202
        seen["gate_thread"] = threading.current_thread().name
        seen["gate_size"] = image.size
        time.sleep(DELAY)
        return verdict

    def slow_forward(loaded, pixel_values):  # noqa: ANN001, ANN202
        seen["forward_thread"] = threading.current_thread().name
        time.sleep(DELAY)
        return real_forward(loaded, pixel_values)

    monkeypatch.setattr(gate, "check_skin", slow_gate)
    monkeypatch.setattr(classify, "forward", slow_forward)
    start = time.perf_counter()
    result = skin.classify_skin(ASSET)
    elapsed = time.perf_counter() - start
    # in series the two sleeps alone take 2 x DELAY; side by side about one
    assert elapsed < 1.6 * DELAY, elapsed
    assert seen["gate_thread"] != seen["forward_thread"]
    assert result.gate is verdict  # the gate's verdict is the one reported
    from PIL import Image

    with Image.open(ASSET) as img:
        assert seen["gate_size"] == img.size  # the gate saw the whole uploaded image
