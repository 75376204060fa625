"""The live app in a zh-CN browser: every tab is in Simplified Chinese, checked against the
translation table (locales/en.json), not by eye. Screenshots: tests/_artifacts/screenshots/
zh-CN_<tab>.png (copied to $MEDLAB_SCREENS_DIR when set).

Uses Debian's /usr/bin/chromium with Python playwright, a hard dependency (see
tests/browser_support.py). For legible screenshots install a CJK font (fonts-wqy-microhei);
the text checks do not depend on fonts."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ARTIFACTS

pytestmark = pytest.mark.browser

SHOTS = ARTIFACTS / "screenshots"
TIMEOUT_MS = 30_000
LOCALES = Path(__file__).resolve().parent.parent / "locales"
EN: dict[str, str] = json.loads((LOCALES / "en.json").read_text(encoding="utf-8"))
ZH: dict[str, str] = json.loads((LOCALES / "zh-CN.json").read_text(encoding="utf-8"))
TAB_IDS = ("skin", "lung_ct", "teach", "radiograph", "impression", "pathology", "about")
# Entries that are names, the same in every language: they may show in English.
PROPER_NOUNS = {"PLIP", "min_p", "CLIP", "DICOM", "ROUGE", "Grad-CAM", "H&E", "FLAN-T5", "LoRA"}
DISCLAIMER_ZH = "仅供教学使用。本应用不是医疗器械，不能用于诊断、治疗或任何临床决策。"


def _plain(text: str) -> str:
    """What the page shows for a table entry: markdown/HTML syntax removed."""
    text = re.sub(r"<[^>]+>", "\n", text)
    text = re.sub(r"^\s*(#+|>|-{3,}|\|?-+\|.*)\s*", "", text, flags=re.M)
    return re.sub(r"[*`_]|⚠️", "", text)


# Status panels a tab fills at run time, translated (tabs.i18n.translate) around engine text
# that stays English (the default-index builder's line, model names, collection ids): the
# static check leaves them out, test_runtime_panels_are_in_chinese checks their frame.
RUNTIME_PANELS = {
    "pathology": (_plain(ZH["runtime.pathology_index_heading"]).strip(),
                  ZH["runtime.default_index_line"].split("（")[0]),
}
ENGLISH_PANEL_HEADINGS = {
    "pathology": ("Image index", "Default pathology index", "Index updated", "Example tiles indexed"),
}


def english_probes() -> list[tuple[str, str, bool]]:
    """(key, probe, whole_line) for every UI entry of the table: probes of 4+ words are looked
    for anywhere in the visible text; shorter ones only as a whole visible line (so English
    content that may show, e.g. an example question, cannot match a one-word label)."""
    probes = []
    for key, text in EN.items():
        if key.startswith("error.") or "{" in text or ZH[key] == text or text in PROPER_NOUNS:
            continue  # errors and run-time templates are checked by test_an_engine_error_shows_in_chinese
        for line in _plain(text).splitlines():
            line = line.strip(" .:|")
            if not re.search(r"[A-Za-z]{2}", line) or line in PROPER_NOUNS:
                continue
            words = len(line.split())
            probes.append((key, line, words < 4))
    return probes


def open_app(browser: Any, url: str, locale: str, ready_text: str) -> Any:
    """A page of the app in a browser whose language is `locale`, once the page-load event has
    run (it sends the examples' labels, so `ready_text` is one of them)."""
    context = browser.new_context(locale=locale, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(url)
    page.wait_for_function("t => document.body.innerText.includes(t)", arg=ready_text, timeout=TIMEOUT_MS)
    return page


@pytest.fixture(scope="module")
def zh_page(browser: Any, live_app: tuple[str, object]) -> Any:
    page = open_app(browser, live_app[0], "zh-CN", ZH["skin.example.synthetic_lesion"])
    yield page
    page.context.close()


def _visible_text(page: Any) -> str:
    return page.locator("body").inner_text()


def _runtime_panels(page: Any, tab_id: str) -> list[str]:
    prefixes = RUNTIME_PANELS.get(tab_id, ())
    texts = [t.strip() for t in page.locator(".prose").all_inner_texts()]
    return [t for t in texts if t.startswith(prefixes)] if prefixes else []


def _english_left(text: str) -> list[str]:
    lines = {line.strip(" .:|") for line in text.splitlines()}
    found = []
    for key, probe, whole_line in english_probes():
        if (probe in lines) if whole_line else (probe in text):
            found.append(f"{key}: {probe!r}")
    return found


def test_probes_cover_the_table() -> None:
    keys = {k for k, _, _ in english_probes()}
    ui_keys = {k for k in EN if not k.startswith("error.") and "{" not in EN[k]}
    assert len(keys) >= len(ui_keys) - 5  # only names (PLIP, min_p...) and symbol-only lines drop out


@pytest.mark.parametrize("tab_id", TAB_IDS)
def test_every_tab_is_in_chinese(zh_page: Any, tab_id: str) -> None:
    page = zh_page
    title_key = next(k for k in EN if k.startswith(f"{tab_id}.tab."))
    page.get_by_role("tab", name=ZH[title_key], exact=True).click()
    # the tab's own heading (first markdown of the tab after the disclaimer) is showing
    page.wait_for_function("t => document.body.innerText.includes(t)", arg=DISCLAIMER_ZH, timeout=TIMEOUT_MS)
    page.wait_for_timeout(1500)  # page-load banners settle
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / f"zh-CN_{tab_id}.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("MEDLAB_SCREENS_DIR"):
        Path(os.environ["MEDLAB_SCREENS_DIR"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(os.environ["MEDLAB_SCREENS_DIR"]) / shot.name)

    text = _visible_text(page)
    assert DISCLAIMER_ZH in text
    assert ZH[title_key] in text
    for panel in _runtime_panels(page, tab_id):
        text = text.replace(panel, "")
    assert _english_left(text) == []
    assert len(re.findall(r"[\u4e00-\u9fff]", text)) > 50
    if tab_id == "pathology":  # a message with braces shows as written (no ICU formatting)
        assert ZH["pathology.info.label_is_replaced_by_each_label"] in text
    if tab_id == "lung_ct":  # examples' labels come translated with the page-load event
        assert ZH["lung_ct.example.chest_ct_dicom"] in text
    if tab_id == "teach":  # a constant status line a tab fills on page load, translated by common.py
        assert ZH["runtime.teach_nothing_taught_yet"] in text


def test_runtime_panels_are_in_chinese(zh_page: Any) -> None:
    """The pathology tab's page-load panels (image index size, default-index build line) come
    with a Chinese frame; none starts with its English heading any more."""
    page = zh_page
    page.get_by_role("tab", name=ZH["pathology.tab.pathology_search"], exact=True).click()
    page.wait_for_timeout(500)
    page.wait_for_function("t => document.body.innerText.includes(t)", arg=RUNTIME_PANELS["pathology"][1],
                           timeout=TIMEOUT_MS)
    panels = _runtime_panels(page, "pathology")
    for heading in RUNTIME_PANELS["pathology"]:  # the image index and the default-index line
        assert [p for p in panels if p.startswith(heading)], heading
    assert not [p for p in panels if not re.search(r"[\u4e00-\u9fff]", p)]
    texts = [t.strip() for t in page.locator(".prose").all_inner_texts()]
    assert not [t for t in texts if t.startswith(ENGLISH_PANEL_HEADINGS["pathology"])]


def test_an_engine_error_shows_in_chinese(zh_page: Any) -> None:
    """Classify without an image: the engine's InputError reaches the page as the Chinese
    headline of its class, with the English details below."""
    page = zh_page
    page.get_by_role("tab", name=ZH["skin.tab.skin_lesion"], exact=True).click()
    page.get_by_role("button", name=ZH["common.button.classify"], exact=True).first.click()
    page.wait_for_function("t => document.body.innerText.includes(t)", arg=ZH["error.InputError"],
                           timeout=TIMEOUT_MS)
    assert "详细信息（英文原文）" in _visible_text(page)


def test_the_api_still_answers_in_english(live_app: tuple[str, object]) -> None:
    """The same error through gradio_client: the engine's English message, unchanged."""
    _url, client = live_app
    with pytest.raises(Exception) as caught:
        client.predict(None, api_name="/skin_classify")
    message = str(caught.value)
    assert "No image was given" in message and not re.search(r"[\u4e00-\u9fff]", message)


@pytest.mark.parametrize("locale", ["en-US", "fr-FR"])
def test_other_languages_get_the_english_page(browser: Any, live_app: tuple[str, object], locale: str) -> None:
    """English, and any language without a locales/ file, shows the English text: keys never
    leak onto the page, and the examples keep their English labels."""
    page = open_app(browser, live_app[0], locale, EN["skin.example.synthetic_lesion"])
    try:
        text = _visible_text(page)
    finally:
        page.context.close()
    assert EN["skin.tab.skin_lesion"] in text and EN["pathology.tab.pathology_search"] in text
    assert "__i18n__" not in text and not re.search(r"\b[a-z_]+\.(md|label|button|tab|accordion|examples)\.", text)
    # no Chinese UI text (Chinese example questions are content and may show)
    shown = [k for k, zh in ZH.items() if zh != EN[k] and "{" not in zh and zh in text]
    assert shown == [] and DISCLAIMER_ZH not in text
