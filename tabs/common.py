"""Shared UI helpers: error translation, progress adapter, disclaimer and model card."""

from __future__ import annotations

import enum
import functools
import inspect
import logging
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from medlab import DISCLAIMER
from medlab.core.errors import MedlabError
from tabs import page_load
from tabs.i18n import error_message, translate
from tabs.page_load import on_page_load

log = logging.getLogger(__name__)


def finalize_page_load(demo: gr.Blocks) -> None:
    """Register the app's one private page-load event (tabs.page_load); text values that
    locales/en.json holds are sent in the page's language (unknown text unchanged)."""
    page_load.finalize(demo, lambda v: translate(v) if isinstance(v, str) else v)


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


# -- queue lanes and the ZeroGPU wrapper, declared where an event is registered ---------------
class Lane(enum.Enum):
    """Queue lanes. Every event that runs a model forward shares the GPU lane, so a classroom
    burst on several tabs queues for the one accelerator instead of stacking forwards in
    memory; long bulk jobs (index a zip, add a PDF, evaluate a file) get their own single lane
    so one educator's upload never takes both interactive slots."""

    GPU = ("gpu", 2)
    BULK = ("bulk", 1)

    @property
    def concurrency_id(self) -> str:
        return self.value[0]

    @property
    def limit(self) -> int:
        """The lane's concurrency limit; the GPU lane's is MEDLAB_GPU_LANE_CONCURRENCY (default
        2), read when the app is built (bench section 14 measures 2 against 4 on a CPU Space)."""
        if self is Lane.GPU:
            from medlab.core.config import load_settings

            return load_settings().gpu_lane_concurrency
        return self.value[1]


LANE_ATTR = "_medlab_lane"  # set on each registered model handler (tests, status)
DURATION_ATTR = "_medlab_gpu_duration"
MAX_GPU_SECONDS = 300  # the longest GPU call we ever ask ZeroGPU for


def as_number(value: Any) -> float:
    return float(value or 0)


def lines_in_file(path: Any) -> float:
    """Rows of an uploaded CSV/JSONL (one per line; a cheap upper bound for a JSON file)."""
    with open(path, "rb") as f:
        return float(sum(1 for _ in f))


def megabytes(path: Any) -> float:
    return Path(path).stat().st_size / 2**20


def files_in_upload(path: Any) -> float:
    """Entries of an uploaded zip, or files under a folder."""
    p = Path(path)
    if p.is_dir():
        return float(sum(1 for q in p.rglob("*") if q.is_file()))
    with zipfile.ZipFile(p) as z:
        return float(len(z.infolist()))


@dataclass(frozen=True)
class GpuDuration:
    """Seconds a ZeroGPU call may take: `base`, plus `seconds_each` per unit of the handler
    argument `per` (counted by `count`: a number, rows in a file, MB, files in a zip), capped.
    With `per` set it becomes a callable that ZeroGPU calls with the event's arguments."""

    base: float
    per: str | None = None
    seconds_each: float = 0.0
    count: Callable[[Any], float] = as_number
    cap: float = MAX_GPU_SECONDS

    def bind(self, fn: Callable[..., Any]) -> int | Callable[..., int]:
        if self.per is None:
            return int(min(self.base, self.cap))
        signature = inspect.signature(fn)
        if self.per not in signature.parameters:
            raise TypeError(f"{fn.__name__} has no parameter {self.per!r} to size its GPU duration by")
        default = signature.parameters[self.per].default

        def duration(*args: Any, **kwargs: Any) -> int:
            try:
                value = signature.bind_partial(*args, **kwargs).arguments.get(self.per, default)
                units = max(0.0, float(self.count(value))) if value not in (None, "", inspect.Parameter.empty) else 0.0
            except Exception:  # noqa: BLE001 - a bad input is reported by the handler itself
                units = 0.0
            return int(min(self.cap, self.base + self.seconds_each * units))

        duration.__name__ = f"{fn.__name__}_gpu_duration"
        return duration


def model_event(trigger: Callable[..., Any], fn: Callable[..., Any], *, lane: Lane = Lane.GPU,
                gpu_duration: int | GpuDuration = 60, **kwargs: Any) -> Any:
    """Register `fn` on `trigger` (e.g. `button.click`) as an event that runs a model: in
    `lane`'s queue (concurrency id and limit), and on ZeroGPU inside spaces.GPU with a
    duration that fits the work. Returns the gradio dependency (for .then / cancels)."""
    from medlab.core.zerogpu import gpu

    if "concurrency_id" in kwargs or "concurrency_limit" in kwargs:
        raise TypeError("model_event: the lane sets the concurrency; do not pass concurrency_id/limit")
    duration = gpu_duration.bind(fn) if isinstance(gpu_duration, GpuDuration) else int(gpu_duration)
    handler = gpu(duration)(fn)  # spaces.GPU keeps fn's signature (gradio reads gr.Progress from it)
    setattr(handler, LANE_ATTR, lane)
    setattr(handler, DURATION_ATTR, duration)
    return trigger(handler, concurrency_id=lane.concurrency_id, concurrency_limit=lane.limit, **kwargs)


def disclaimer() -> gr.Markdown:
    return gr.Markdown(f"> ⚠️ **{DISCLAIMER}**", elem_classes=["medlab-disclaimer"])


def _to_gr_error(exc: Exception) -> gr.Error:
    # The page gets the message in its language (by the error's class, tabs.i18n); API callers
    # get the engine's English text.
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, MedlabError):
        return gr.Error(error_message(exc), print_exception=False)
    log.exception("unexpected error in a handler")
    return gr.Error(translate("error.unexpected", None, kind=type(exc).__name__), print_exception=False)


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
    on_page_load(card, lambda: card_markdown(key), "The model card could not be read.")  # en.json: runtime.*
    on_page_load(gallery, plots, [])


def availability_banner(*keys: str) -> gr.Markdown:
    """A line per model that cannot run here, with the reason and the fix."""
    from medlab.core.status import availability

    def text() -> str:
        lines = []
        for key in keys:
            avail = availability(key)
            if avail.status == "unavailable":
                lines.append(translate("runtime.banner_unavailable", None, title=avail.title, reason=avail.reason,
                                       fix=avail.fix))
            elif avail.status == "downloadable":
                lines.append(translate("runtime.banner_downloadable", None, title=avail.title, reason=avail.reason))
        return "\n\n".join(lines)

    banner = gr.Markdown("")
    on_page_load(banner, text, "")
    return banner
