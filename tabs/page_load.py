"""The app's one private page-load event: components register a callback while the Blocks is
built (`on_page_load`), and `finalize` wires them all to a single load event.

A page view then costs one request, and no internal helper shows up in the API. This module
imports nothing from the other tab modules, so any of them (tabs.i18n included) may use it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

log = logging.getLogger(__name__)

_ON_LOAD_ATTR = "_medlab_on_load"


def on_page_load(component: gr.components.Component, fn: Callable[[], Any], placeholder: Any = None) -> None:
    """Refresh `component` with fn() on every page load, through ONE private load event for
    the whole app (see finalize) instead of one public endpoint per component."""
    root = gr.context.Context.root_block
    if root is None:
        raise RuntimeError("on_page_load() must be called while building a gr.Blocks")
    if not hasattr(root, _ON_LOAD_ATTR):
        setattr(root, _ON_LOAD_ATTR, [])
    getattr(root, _ON_LOAD_ATTR).append((component, fn, placeholder))


def finalize(demo: gr.Blocks, postprocess: Callable[[Any], Any] = lambda v: v) -> None:
    """Register the single private load event that runs every on_page_load callback, each
    value passed through `postprocess` (the page's language, tabs.common). A failing callback
    leaves its component with its placeholder; the others still fill."""
    entries = getattr(demo, _ON_LOAD_ATTR, [])
    if not entries:
        return

    def refresh_all() -> list[Any]:
        values = []
        for component, fn, placeholder in entries:
            try:
                values.append(fn())
            except Exception as exc:  # noqa: BLE001 - one panel must not blank the page
                log.warning("page-load refresh of %s failed: %s", getattr(component, "label", component), exc)
                values.append(placeholder)
        return [postprocess(v) for v in values]

    demo.load(refresh_all, inputs=None, outputs=[c for c, _, _ in entries], api_visibility="private",
              queue=False, show_progress="hidden")
