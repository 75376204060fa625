"""Headless Chromium for the browser tests: Debian's /usr/bin/chromium driven by Python
playwright (no `playwright install`, which would download a browser). Both are hard
dependencies of the suite: scripts/test.sh installs chromium or fails, and a missing one
fails the test instead of skipping it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    """The Chromium executable, or a test failure that says how to install it."""
    found = "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else shutil.which("chromium")
    if not found:
        pytest.fail("Debian chromium is not installed (apt-get install chromium; scripts/test.sh does it)")
    return found
