"""Skip policy (DESIGN §6), enforced: only a test that needs a CUDA device may skip. Any other
skip (a missing torch, scikit-image, the EfficientNet-Lite0 wheel, Chromium...) turns the run
red, and the summary always says how many tests skipped and why."""

from __future__ import annotations

from typing import Any

import pytest

ALLOWED = ("CUDA",)  # a skip reason must name one of these to be acceptable


def _reasons(config: pytest.Config) -> list[str]:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    out = []
    for report in (reporter.stats.get("skipped", []) if reporter else []):
        longrepr = report.longrepr
        out.append(str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr))
    return out


def _violations(reasons: list[str]) -> list[str]:
    return [r for r in reasons if not any(word in r for word in ALLOWED)]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if exitstatus == 0 and _violations(_reasons(session.config)):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:  # noqa: ARG001
    reasons = _reasons(config)
    terminalreporter.write_line(f"skip policy: {len(reasons)} skipped (only tests that need a CUDA device may skip)")
    for reason in sorted(set(reasons)):
        terminalreporter.write_line(f"  {reasons.count(reason)} x {reason}")
    bad = _violations(reasons)
    if bad:
        terminalreporter.write_line(f"SKIP POLICY VIOLATED: {len(bad)} skip(s) without a CUDA reason: the run fails", red=True)
