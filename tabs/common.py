"""Shared UI helpers: error translation, progress adapter, disclaimer and model card."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from medlab import DISCLAIMER
from medlab.core.errors import MedlabError

log = logging.getLogger(__name__)

_ON_LOAD_ATTR = "_medlab_on_load"


def on_page_load(component: gr.components.Component, fn: Callable[[], Any], placeholder: Any = None) -> None:
    """Refresh `component` with fn() on every page load, through ONE private load event for
    the whole app (see finalize_page_load) instead of one public endpoint per component:
    a page view then costs one request, and no internal helper shows up in the API."""
    root = gr.context.Context.root_block
    if root is None:
        raise RuntimeError("on_page_load() must be called while building a gr.Blocks")
    if not hasattr(root, _ON_LOAD_ATTR):
        setattr(root, _ON_LOAD_ATTR, [])
    getattr(root, _ON_LOAD_ATTR).append((component, fn, placeholder))


def finalize_page_load(demo: gr.Blocks) -> None:
    """Register the single private load event that runs every on_page_load callback.
    A failing callback leaves its component with a short note; the others still fill."""
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
        return values

    demo.load(refresh_all, inputs=None, outputs=[c for c, _, _ in entries], api_visibility="private",
              queue=False, show_progress="hidden")


class TolerantImage(gr.Image):
    """gr.Image (type="filepath", image_mode=None: the uploaded bytes, untouched) whose
    preprocessing never fails: a file PIL cannot open (text named .png, truncated JPEG,
    decompression bomb) is passed on as its upload path so the engine's image checks explain
    exactly what is wrong, instead of gradio's generic "the upstream app raised an exception"."""

    is_template = True  # gradio's template mechanism: the frontend renders the parent, gr.Image
    # (no __init__ override: gradio serialises the props from the constructor's signature)

    def preprocess(self, payload: Any) -> Any:
        try:
            return super().preprocess(payload)
        except Exception:  # noqa: BLE001 - medlab.io.imaging.load_image reports the precise problem
            path = getattr(payload, "path", None)
            return str(path) if path else None


def disclaimer() -> gr.Markdown:
    return gr.Markdown(f"> ⚠️ **{DISCLAIMER}**", elem_classes=["medlab-disclaimer"])


def _to_gr_error(exc: Exception) -> gr.Error:
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, MedlabError):
        return gr.Error(str(exc), print_exception=False)
    log.exception("unexpected error in a handler")
    return gr.Error(
        f"Something went wrong ({type(exc).__name__}). The error was logged; please try another input.",
        print_exception=False,
    )


def ui_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a handler so engine errors reach the user as gr.Error (never a stack trace).

    Keeps generator handlers generators, so Gradio still streams them."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - translated for the UI
                raise _to_gr_error(exc) from exc

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - translated for the UI
            raise _to_gr_error(exc) from exc

    return wrapper


def progress_callback(progress: gr.Progress | None) -> Callable[[float, str], None]:
    """Adapt gr.Progress to the engine's progress(fraction, message) callbacks."""

    def report(fraction: float, message: str) -> None:
        if progress is not None:
            try:
                progress(fraction, desc=message)
            except Exception:  # noqa: BLE001 - progress is cosmetic; never fail a request for it
                pass

    return report


def model_card(key: str, label: str = "Model card") -> None:
    """Accordion with the card (source, data, metrics, licence, limits) and evaluation plots.
    Rendered on each page load so it reflects the weights configured now."""
    from medlab.core.cards import card_markdown, evaluation_plots

    def plots() -> list[Any]:
        from PIL import Image

        images = []
        for path in evaluation_plots(key):
            with Image.open(path) as img:  # load into memory: no file path is exposed
                images.append((img.convert("RGB"), path.stem.replace("_", " ")))
        return images

    with gr.Accordion(label, open=False):
        card = gr.Markdown("Loading the model card…")
        gallery = gr.Gallery(label="Evaluation plots (from the report next to the weights)", columns=3,
                             height="auto", object_fit="contain", show_label=True)
    on_page_load(card, lambda: card_markdown(key), "The model card could not be read.")
    on_page_load(gallery, plots, [])


def availability_banner(*keys: str) -> gr.Markdown:
    """A line per model that cannot run here, with the reason and the fix."""
    from medlab.core.status import availability

    def text() -> str:
        lines = []
        for key in keys:
            avail = availability(key)
            if avail.status == "unavailable":
                lines.append(f"❌ **{avail.title}** cannot run here: {avail.reason}  \n**Fix:** {avail.fix}")
            elif avail.status == "downloadable":
                lines.append(f"ℹ️ **{avail.title}** {avail.reason}.")
        return "\n\n".join(lines)

    banner = gr.Markdown("")
    on_page_load(banner, text, "")
    return banner
