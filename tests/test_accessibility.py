"""Accessibility and phone layout of the live app (tiny models), in the real headless Chromium.

1. axe-core (bundled by the pinned PyPI package axe-playwright-python, a hard dependency: a
   missing package fails collection, it never skips) over every tab, in English and zh-CN:
   the tab's default view, then again with every accordion on it opened, and after one real
   action on each imaging tab (results: images, labels, galleries). Rules: WCAG 2.0/2.1 A and
   AA plus axe's best practices; a violation of impact "critical" or "serious" fails the test.
   The English page is scanned in dark mode too (?__theme=dark).
   axe skips hidden content (other tabs, closed accordions): that is why each tab is opened
   and its accordions expanded before the scan.
2. Phones: a 390x844 mobile viewport for every tab (both languages), accordions closed and
   then opened: no horizontal scrolling of the page, and every visible control (button,
   input, select, textarea, link, tab) lies within the screen's width, or inside a box that
   scrolls sideways on its own and itself lies within the screen. Screenshots:
   tests/_artifacts/phone/<locale>_<tab>.png and <locale>_<tab>_open.png.

The tabs come from app.TAB_MODULES (each module's TAB_ID, which Gradio renders as the tab
button's data-tab-id), so a new tab is checked without editing this file. README "Accessibility".
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe  # hard dependency (requirements-dev.txt)

import app
from tabs.i18n import table
from tests.conftest import ARTIFACTS

pytestmark = pytest.mark.browser

PHONE_SHOTS = ARTIFACTS / "phone"
TIMEOUT_MS = 30_000
LOCALES = ("en-US", "zh-CN")
TAB_IDS = tuple(importlib.import_module(name).TAB_ID for name in app.TAB_MODULES)
PHONE = {"width": 390, "height": 844}
READY_TEXT = {locale: table()["zh-CN" if locale.startswith("zh") else "en"]["skin.example.synthetic_lesion"]
              for locale in LOCALES}
# WCAG 2.0 and 2.1, levels A and AA, and axe's best practices. No rule is disabled.
AXE_OPTIONS = {
    "runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]},
    "resultTypes": ["violations"],
}
FAILING_IMPACTS = ("critical", "serious")

# Opens every closed accordion in the visible tab (twice: an accordion can hold another one).
OPEN_ACCORDIONS_JS = """async () => {
  for (let round = 0; round < 2; round++) {
    for (const b of document.querySelectorAll('[role=tabpanel] button.label-wrap')) {
      if (b.offsetParent !== null && !b.classList.contains('open')) b.click();
    }
    await new Promise(r => setTimeout(r, 400));
  }
}"""


# -- helpers -------------------------------------------------------------------------------
def _new_page(browser: Any, url: str, locale: str, query: str = "", **context: Any) -> Any:
    """A page of the app in a browser whose language is `locale` (navigator.language and the
    Accept-Language header, as tests/test_i18n_browser.py), once its page-load event has run."""
    ctx = browser.new_context(locale=locale, **context)
    page = ctx.new_page()
    page.goto(url + query)
    page.wait_for_selector("[role=tab]", timeout=TIMEOUT_MS)
    # The private page-load event fills banners and model cards and sends the examples'
    # labels in the page's language: once the first tab's first example label shows, it ran.
    page.wait_for_function("t => document.body.innerText.includes(t)", arg=READY_TEXT[locale], timeout=TIMEOUT_MS)
    page.wait_for_timeout(1000)
    return page


def open_tab(page: Any, tab_id: str) -> None:
    page.locator(f"[role=tab][data-tab-id='{tab_id}']").click()
    page.wait_for_function("id => document.querySelector(`[role=tab][data-tab-id='${id}']`)"
                           ".getAttribute('aria-selected') === 'true'", arg=tab_id, timeout=TIMEOUT_MS)
    page.wait_for_timeout(600)


def open_accordions(page: Any) -> None:
    page.evaluate(OPEN_ACCORDIONS_JS)
    page.wait_for_timeout(400)


def serious_violations(page: Any) -> list[dict[str, Any]]:
    response = Axe().run(page, options=AXE_OPTIONS).response
    return [v for v in response["violations"] if v.get("impact") in FAILING_IMPACTS]


def describe(violations: list[dict[str, Any]]) -> str:
    """One line per violation: rule id, impact, help, the first few target selectors."""
    lines = []
    for v in violations:
        targets = [" ".join(map(str, n["target"])) for n in v["nodes"][:3]]
        lines.append(f"{v['id']} ({v['impact']}, {len(v['nodes'])} node(s)): {v['help']} -> {targets}")
    return "\n".join(lines)


def assert_accessible(page: Any, where: str) -> None:
    found = serious_violations(page)
    assert not found, f"axe: critical/serious violations {where}:\n{describe(found)}"


# -- 1. axe over every tab, both languages ----------------------------------------------------
@pytest.fixture(scope="module")
def pages(browser: Any, live_app: tuple[str, object]) -> Iterator[dict[str, Any]]:
    """One desktop page per language, opened on demand."""
    opened: dict[str, Any] = {}

    class Pages(dict):
        def __missing__(self, locale: str) -> Any:
            self[locale] = opened[locale] = _new_page(browser, live_app[0], locale, viewport={"width": 1280, "height": 900})
            return opened[locale]

    yield Pages()
    for page in opened.values():
        page.context.close()


def test_every_tab_module_has_a_tab_button(pages: dict[str, Any]) -> None:
    """The page's tab list is app.TAB_MODULES, so the scans below cover every tab."""
    shown = pages["en-US"].evaluate("() => [...document.querySelectorAll('[role=tab]')].map(t => t.dataset.tabId)")
    assert shown == list(TAB_IDS)


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("tab_id", TAB_IDS)
def test_axe_finds_no_serious_violation(pages: dict[str, Any], locale: str, tab_id: str) -> None:
    page = pages[locale]
    open_tab(page, tab_id)
    assert_accessible(page, f"on tab {tab_id!r} ({locale}, default view)")
    open_accordions(page)
    assert_accessible(page, f"on tab {tab_id!r} ({locale}, every accordion open)")


@pytest.fixture(scope="module")
def dark_page(browser: Any, live_app: tuple[str, object]) -> Iterator[Any]:
    """The English page in Gradio's dark mode (?__theme=dark, as a dark system setting gives)."""
    page = _new_page(browser, live_app[0], "en-US", "?__theme=dark", viewport={"width": 1280, "height": 900})
    yield page
    page.context.close()


@pytest.mark.parametrize("tab_id", TAB_IDS)
def test_axe_dark_mode(dark_page: Any, tab_id: str) -> None:
    assert dark_page.evaluate("() => document.body.classList.contains('dark')"), "dark mode did not apply"
    open_tab(dark_page, tab_id)
    assert_accessible(dark_page, f"on tab {tab_id!r} (dark mode, default view)")
    open_accordions(dark_page)
    assert_accessible(dark_page, f"on tab {tab_id!r} (dark mode, every accordion open)")


# One real action per imaging tab: click the tab's first example, press its first primary
# button, wait for the result to show (JS condition on the visible tab panel).
PANEL = "document.querySelector('[role=tabpanel][style*=\"flex\"]') || document"
RESULT_SHOWN = {
    "skin": "() => (document.querySelector('#skin-decision')?.innerText || '').trim().length > 0",
    "lung_ct": "() => [...document.querySelectorAll('#lung-overlay img')].some(i => i.complete && i.naturalWidth > 0)",
    "radiograph": f"() => [...({PANEL}).querySelectorAll('textarea')].some(t => t.value.length > 0 && t.offsetParent"
                  " && t.closest('.block') && !t.closest('.block').querySelector('.info-text'))",
    "pathology": f"() => [...({PANEL}).querySelectorAll('[data-testid=gallery] img, .grid-wrap img')]"
                 ".filter(i => i.complete && i.naturalWidth > 0).length > 0",
}


@pytest.mark.parametrize("tab_id", [t for t in TAB_IDS if t in RESULT_SHOWN])
def test_axe_after_a_real_action(browser: Any, live_app: tuple[str, object], tab_id: str) -> None:
    from medlab.retrieval import image_index

    if tab_id == "pathology" and image_index.image_collection("plip").count() == 0:
        image_index.index_examples("plip")  # search needs an index; a teacher would press the button
    page = _new_page(browser, live_app[0], "en-US", viewport={"width": 1280, "height": 900})
    try:
        open_tab(page, tab_id)
        panel = page.locator("[role=tabpanel]").locator("visible=true").first
        panel.locator("button.gallery-item").locator("visible=true").first.click()
        page.wait_for_timeout(500)
        panel.locator("button.primary").locator("visible=true").first.click()
        page.wait_for_function(RESULT_SHOWN[tab_id], timeout=TIMEOUT_MS)
        page.wait_for_timeout(1000)
        assert_accessible(page, f"on tab {tab_id!r} after its main action")
        open_accordions(page)
        assert_accessible(page, f"on tab {tab_id!r} after its main action, every accordion open")
    finally:
        page.context.close()


# -- 2. phones --------------------------------------------------------------------------------
# Visible interactive controls whose box sticks out of the screen's width, unless a box that
# scrolls sideways on its own (overflow-x auto/scroll, e.g. a wide table) holds them and lies
# within the screen. Hidden helpers (aria-hidden, zero-size, visibility) are not controls.
OUTSIDE_JS = """() => {
  const w = window.innerWidth, bad = [];
  const sel = 'button, input:not([type=hidden]), select, textarea, a[href], [role=tab], [role=button]';
  for (const el of document.querySelectorAll(sel)) {
    const r = el.getBoundingClientRect();
    const style = getComputedStyle(el);
    if (r.width === 0 || r.height === 0 || style.visibility === 'hidden' || el.closest('[aria-hidden=true]')) continue;
    if (r.left >= -1 && r.right <= w + 1) continue;
    let box = el.parentElement, scrolls = false;
    while (box && box !== document.body) {
      const ox = getComputedStyle(box).overflowX;
      if ((ox === 'auto' || ox === 'scroll') && box.scrollWidth > box.clientWidth) {
        const b = box.getBoundingClientRect();
        scrolls = b.left >= -1 && b.right <= w + 1;
        break;
      }
      box = box.parentElement;
    }
    const name = (el.innerText || el.getAttribute('aria-label') || el.value || '').trim().slice(0, 40);
    if (!scrolls) bad.push(`${el.tagName.toLowerCase()} "${name}" x=${Math.round(r.left)}..${Math.round(r.right)}`);
  }
  return bad;
}"""


@pytest.fixture(scope="module")
def phones(browser: Any, live_app: tuple[str, object]) -> Iterator[dict[str, Any]]:
    opened: dict[str, Any] = {}

    class Phones(dict):
        def __missing__(self, locale: str) -> Any:
            self[locale] = opened[locale] = _new_page(browser, live_app[0], locale, viewport=PHONE, is_mobile=True,
                                                      has_touch=True)
            return opened[locale]

    yield Phones()
    for page in opened.values():
        page.context.close()


def _check_phone_view(page: Any, where: str) -> None:
    width, inner = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert inner == PHONE["width"], "the mobile viewport did not apply"
    assert width <= inner, f"{where}: the page scrolls sideways ({width} px wide on a {inner} px screen)"
    outside = page.evaluate(OUTSIDE_JS)
    assert not outside, f"{where}: controls outside the screen's width: {outside[:8]}"


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("tab_id", TAB_IDS)
def test_phone_view(phones: dict[str, Any], locale: str, tab_id: str) -> None:
    page = phones[locale]
    PHONE_SHOTS.mkdir(parents=True, exist_ok=True)
    # every tab button shows on the phone (no "More tabs" menu hides them)
    hidden = page.evaluate("() => [...document.querySelectorAll('[role=tab]')].filter(t => t.offsetParent === null)"
                           ".map(t => t.dataset.tabId)")
    assert hidden == [], f"tabs not shown on a phone: {hidden}"
    open_tab(page, tab_id)
    page.screenshot(path=str(PHONE_SHOTS / f"{locale}_{tab_id}.png"), full_page=True)
    _check_phone_view(page, f"{tab_id} ({locale})")
    open_accordions(page)
    page.screenshot(path=str(PHONE_SHOTS / f"{locale}_{tab_id}_open.png"), full_page=True)
    _check_phone_view(page, f"{tab_id} ({locale}, accordions open)")
