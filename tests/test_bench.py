"""`python -m bench --quick` runs end to end and writes both result files with all 8 sections.

Slow: it starts the app, builds tiny models and runs every section in its own process
(108 s on the shared 2-core box at load average ~3; each section process imports torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_quick_bench_writes_all_sections(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path), "--total-budget", "1000"],
        cwd=ROOT, capture_output=True, text=True, timeout=1150,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "results.json").read_text())
    sections = {s["id"]: s for s in data["sections"]}
    assert sorted(sections) == [1, 2, 3, 4, 5, 6, 7, 8]
    md = (tmp_path / "results.md").read_text()
    for number, section in sections.items():
        assert f"## {number}. " in md
        assert section["status"] in ("ok", "partial"), (number, section["notes"][:2])
        assert section["rows"], number  # every section measured something against a target
    # Values are real measurements, not placeholders.
    cam = sections[3]["details"]["stats"]
    assert cam["forward"]["median_ms"] > 0 and cam["gradcam_overlay"]["median_ms"] > 0
    assert sections[7]["details"]["single_flight"]["loads"] == 1
    assert "Quick smoke run" in md
