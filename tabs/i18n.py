"""UI languages: English (the source text in tabs/*.py) and Simplified Chinese.

The translations live in locales/<code>.json: {key: text}, one file per language, where
locales/en.json holds the English source text exactly as the tabs write it. Nothing in the
tabs names a key: `localize(demo)` walks the built Blocks once, looks each user-visible string
(label, info, placeholder, button/markdown value, tab/accordion/examples label, choice display
name) up in en.json and swaps it for a gr.I18n key. Gradio's frontend then shows the string in
the browser's language (navigator.language; English when the language has no file).

Strings made at run time (errors, banners) are translated on the server by `translate()`, for
the browser UI only: the request's `x-gradio-user: app` header marks a call from the page, and
its Accept-Language picks the language. gradio_client / curl callers get stable English.

    python app.py --missing-translations   # lists UI strings of the built app that en.json lacks (JSON)
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.i18n import I18nData

LOCALES_DIR = Path(__file__).resolve().parent.parent / "locales"
SOURCE_LOCALE = "en"

# Component attributes that hold text the page shows (Gradio translates these props).
TEXT_ATTRS = ("label", "info", "placeholder")
# Components whose `value` is display text, not data the user edits or the engine returns.
VALUE_IS_TEXT = ("Markdown", "Button", "HTML", "UploadButton", "DownloadButton")
# Components whose choices are (display name, value) pairs: only the display name changes.
HAS_CHOICES = ("Radio", "Dropdown", "CheckboxGroup")
# Examples (gr.Dataset): column headers and sample labels, which Gradio's frontend does not
# translate; they are sent translated by the app's page-load event instead (see localize).
DATASET_LISTS = ("headers", "sample_labels")


# -- the table ----------------------------------------------------------------------------------
@functools.cache
def table() -> dict[str, dict[str, str]]:
    """{locale code: {key: text}} from locales/*.json; English first."""
    tables: dict[str, dict[str, str]] = {}
    for path in sorted(LOCALES_DIR.glob("*.json"), key=lambda p: (p.stem != SOURCE_LOCALE, p.stem)):
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError(f"{path}: expected a JSON object of key -> text")
        tables[path.stem] = data
    if SOURCE_LOCALE not in tables:
        raise FileNotFoundError(f"{LOCALES_DIR / (SOURCE_LOCALE + '.json')} is missing")
    return tables


def locales() -> list[str]:
    return list(table())


@functools.cache
def _key_of_text() -> dict[str, str]:
    return {text: key for key, text in table()[SOURCE_LOCALE].items()}


def key_for(text: str) -> str | None:
    """The key whose English text is exactly `text`, or None."""
    return _key_of_text().get(text)


def gradio_i18n() -> gr.I18n:
    """The gr.I18n for launch(i18n=...): every locale's table. The frontend (svelte-i18n) shows
    a message without values as written, so '{label}' and quotes need no ICU escaping."""
    return gr.I18n(**{code: dict(entries) for code, entries in table().items()})


# -- the strings of a built app ---------------------------------------------------------------
@dataclass(frozen=True)
class Slot:
    """One user-visible string of a built app: block.<attr> (or choice `index` of it) = text."""

    block: Any
    attr: str
    text: str
    index: int | None = None


def _worth_translating(text: str) -> bool:
    return bool(re.search(r"[A-Za-z]", text))


def ui_strings(demo: gr.Blocks) -> Iterator[Slot]:
    """Every translatable user-visible string attribute of the built app, in build order."""
    for block in demo.blocks.values():
        kinds = {c.__name__ for c in type(block).__mro__}
        for attr in TEXT_ATTRS:
            value = getattr(block, attr, None)
            if isinstance(value, str) and _worth_translating(value):
                yield Slot(block, attr, value)
        if kinds & set(VALUE_IS_TEXT):
            value = getattr(block, "value", None)
            if isinstance(value, str) and _worth_translating(value):
                yield Slot(block, "value", value)
        if kinds & set(HAS_CHOICES):
            for i, choice in enumerate(getattr(block, "choices", None) or []):
                display = choice[0] if isinstance(choice, (tuple, list)) else choice
                if isinstance(display, str) and _worth_translating(display):
                    yield Slot(block, "choices", display, i)
        if isinstance(block, gr.Dataset):
            for attr in DATASET_LISTS:
                for i, text in enumerate(getattr(block, attr, None) or []):
                    if isinstance(text, str) and _worth_translating(text):
                        yield Slot(block, attr, text, i)


def missing(demo: gr.Blocks) -> list[str]:
    """English UI strings of `demo` that locales/en.json does not hold (unique, build order)."""
    seen: dict[str, None] = {}
    for slot in ui_strings(demo):
        if key_for(slot.text) is None:
            seen.setdefault(slot.text, None)
    return list(seen)


def localize(demo: gr.Blocks) -> gr.Blocks:
    """Swap every UI string that en.json holds for its gr.I18n key, and keep the API
    description (/info, view_api) in English. Strings en.json lacks stay as written.

    Call it inside `with demo:`, before tabs.common.finalize_page_load (tabs.page_load): examples' headers and
    sample labels join the app's one page-load event, which sends them in the page's language."""
    datasets: dict[int, Any] = {}
    for slot in list(ui_strings(demo)):
        key = key_for(slot.text)
        if key is None:
            continue
        if slot.attr in DATASET_LISTS:
            datasets[slot.block._id] = slot.block
        elif slot.attr == "choices":
            value = slot.block.choices[slot.index]
            pair_value = value[1] if isinstance(value, (tuple, list)) else value
            slot.block.choices[slot.index] = (I18nData(key), pair_value)
        else:
            setattr(slot.block, slot.attr, I18nData(key))
    if datasets:
        from tabs.page_load import on_page_load

        for dataset in datasets.values():
            on_page_load(dataset, functools.partial(_dataset_update, dataset), gr.update())
    if not getattr(demo, "_medlab_api_info_english", False):
        original = demo.get_api_info

        def get_api_info(*args: Any, **kwargs: Any) -> Any:
            return _english(original(*args, **kwargs))

        demo.get_api_info = get_api_info  # type: ignore[method-assign]
        demo._medlab_api_info_english = True  # type: ignore[attr-defined]
    return demo


def _dataset_update(dataset: gr.Dataset) -> Any:
    """The examples' headers and sample labels in the page's language (no change in English)."""
    if request_locale() == SOURCE_LOCALE:
        return gr.update()
    changes = {}
    for attr in DATASET_LISTS:
        texts = getattr(dataset, attr, None)
        if texts:
            changes[attr] = [translate(t) if isinstance(t, str) else t for t in texts]
    return gr.update(**changes)


def _english(obj: Any) -> Any:
    """Replace serialised I18nData ({"key": k, "_type": "translation_metadata"}) by English text."""
    if isinstance(obj, I18nData):
        return english(obj.key)
    if isinstance(obj, Mapping):
        if obj.get("_type") == "translation_metadata" or obj.get("__type__") == "translation_metadata":
            return english(str(obj.get("key", "")))
        return {k: _english(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_english(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_english(v) for v in obj)
    return obj


def english(key: str) -> str:
    return table()[SOURCE_LOCALE].get(key, key)


# -- run-time text ------------------------------------------------------------------------------
def request_locale(request: gr.Request | None = None) -> str:
    """The language of the page that made this request: the first Accept-Language tag when it
    names a locale we have (exactly, or by its primary subtag alone, e.g. "zh" -> a file
    "zh.json"), as Gradio's frontend picks navigator.language. English for API callers
    (gradio_client, curl), for requests without a page, and outside a request."""
    if request is None:
        from gradio.context import LocalContext

        request = LocalContext.request.get(None)
    if request is None:
        return SOURCE_LOCALE
    try:
        headers = request.headers
        if headers.get("x-gradio-user") != "app":
            return SOURCE_LOCALE
        accept = headers.get("accept-language") or ""
    except Exception:  # noqa: BLE001 - a request without headers (e.g. in tests) is an API call
        return SOURCE_LOCALE
    first = accept.split(",")[0].split(";")[0].strip().lower()
    codes = {code.lower(): code for code in locales()}
    if first in codes:
        return codes[first]
    return codes.get(first.split("-")[0], SOURCE_LOCALE)


def translate(text_or_key: str, request: gr.Request | None = None, /, **values: Any) -> str:
    """`text_or_key` (a key, or English text that en.json holds) in the request's language,
    formatted with `values` (str.format). Unknown text comes back unchanged (formatted)."""
    key = text_or_key if text_or_key in table()[SOURCE_LOCALE] else key_for(text_or_key)
    locale = request_locale(request)
    if key is None:
        text = text_or_key
    else:
        text = table().get(locale, {}).get(key) or english(key)
    return text.format(**values) if values else text


def error_message(exc: BaseException, request: gr.Request | None = None) -> str:
    """The message the UI shows for an engine error: its own English text for API callers; in
    another language, the translated headline of its class (the nearest class in the MRO with
    an `error.<ClassName>` entry) followed by the English details."""
    detail = str(exc)
    locale = request_locale(request)
    if locale == SOURCE_LOCALE:
        return detail
    for cls in type(exc).__mro__:
        key = f"error.{cls.__name__}"
        headline = table().get(locale, {}).get(key)
        if headline:
            return translate("error.details", request, headline=headline, detail=detail)
    return detail
