"""The one progress callback type of the engine: progress(fraction in [0, 1], message)."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:  # noqa: ARG001 - callback signature
    return None
