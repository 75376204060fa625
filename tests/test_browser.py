"""Headless Chromium clicks through every tab of the live app (tiny models) as a student would:
pick an example (or type a question), press the main button, wait for and read the result,
and save a screenshot per tab in tests/_artifacts/screenshots/<tab>.png.

Uses Debian's /usr/bin/chromium with Python playwright (no `playwright install`). Both are hard
dependencies of the suite (scripts/test.sh installs chromium or fails): missing means failing."""

from __future__ import annotations

import time
from typing import Any

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.conftest import ARTIFACTS

pytestmark = pytest.mark.browser

SHOTS = ARTIFACTS / "screenshots"
TIMEOUT_MS = 30_000


def _wait_text(page: Any, text: str, timeout: int = TIMEOUT_MS) -> None:
    """Wait until the visible page text contains `text` (screenshot of the page if not)."""
    try:
        page.wait_for_function("t => document.body.innerText.includes(t)", arg=text, timeout=timeout)
    except PlaywrightTimeout:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "FAILED.png"), full_page=True)
        raise AssertionError(f"{text!r} never appeared; page text ends: {page.locator('body').inner_text()[-1500:]!r}") from None


TEXTBOX_JS = """label => {
  for (const el of document.querySelectorAll('span, label')) {
    if (el.offsetParent === null || el.textContent.trim() !== label) continue;
    const block = el.closest('.block');
    const box = block && block.querySelector('textarea, input[type=text]');
    if (box && box.value.length > 0) return box.value;
  }
  return null;
}"""


def _textbox_value(page: Any, label: str) -> str:
    """Wait for the visible textbox with this label to hold text; return it."""
    try:
        return page.wait_for_function(TEXTBOX_JS, arg=label, timeout=TIMEOUT_MS).json_value()
    except PlaywrightTimeout:
        page.screenshot(path=str(SHOTS / "FAILED.png"), full_page=True)
        raise AssertionError(f"the textbox {label!r} stayed empty") from None


IMAGES_JS = """([label, n]) => {
  for (const el of document.querySelectorAll('span, label')) {
    if (el.offsetParent === null || !el.textContent.trim().startsWith(label)) continue;
    const block = el.closest('.block');
    if (!block) continue;
    const loaded = [...block.querySelectorAll('img')].filter(i => i.complete && i.naturalWidth > 0);
    if (loaded.length >= n) return loaded.length;
  }
  return 0;
}"""


def _images_in(page: Any, label: str, n: int = 1) -> int:
    """Wait until the visible component labelled `label` shows at least n decoded images (not
    just any <img> on the page: icons and examples are images too); return how many."""
    try:
        return page.wait_for_function(IMAGES_JS, arg=[label, n], timeout=TIMEOUT_MS).json_value()
    except PlaywrightTimeout:
        page.screenshot(path=str(SHOTS / "FAILED.png"), full_page=True)
        raise AssertionError(f"the component {label!r} never showed {n} loaded image(s)") from None


def _click_visible(page: Any, role: str, name: str) -> None:
    page.get_by_role(role, name=name, exact=True).locator("visible=true").first.click()


def _open_tab(page: Any, title: str) -> None:
    page.get_by_role("tab", name=title, exact=True).first.click()
    page.wait_for_timeout(300)


def test_every_tab_in_a_real_browser(live_app: tuple[str, Any], browser: Any) -> None:
    from medlab.retrieval import image_index

    if image_index.image_collection("plip").count() == 0:
        image_index.index_examples("plip")  # search needs an index; a teacher would press the button
    url, _ = live_app
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    start = time.perf_counter()
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("[role=tab]", timeout=TIMEOUT_MS)
    # Let the page's own load events finish first (about 25 queue events: model cards,
    # banners, status). A click during that burst on a cold server can come back as a bare
    # "Error" (reported to the tech lead); a student who reads the page first never sees it.
    page.wait_for_timeout(5000)
    seen: dict[str, str] = {}

    # Skin lesion: an example photo -> Classify -> the decision with its input gate
    _open_tab(page, "Skin lesion")
    _click_visible(page, "button", "synthetic lesion (drawn, not a patient)")
    page.wait_for_timeout(500)
    _click_visible(page, "button", "Classify")
    _wait_text(page, "Input gate")
    seen["skin"] = page.locator("body").inner_text()
    #   ...and the melanoma assistant beside it: a question -> a cited answer
    page.get_by_label("Your question").fill("What does the ABCDE rule stand for?")
    _click_visible(page, "button", "Ask")
    _wait_text(page, "knowledge/")
    page.screenshot(path=str(SHOTS / "skin.png"), full_page=True)

    # Lung CT: the DICOM example -> Classify -> probabilities, Grad-CAM overlay, defer text
    _open_tab(page, "Lung CT")
    _click_visible(page, "button", "chest CT slice (DICOM, pydicom test data)")
    page.wait_for_timeout(500)
    _click_visible(page, "button", "Classify")
    _wait_text(page, "Grad-CAM of")
    assert _images_in(page, "Grad-CAM overlay") >= 1
    seen["lung_ct"] = page.locator("body").inner_text()
    page.screenshot(path=str(SHOTS / "lung_ct.png"), full_page=True)

    # Teach a classifier: the tab explains grouped splits and says what has been taught so far
    _open_tab(page, "Teach a classifier")
    _wait_text(page, "Use in the Lung CT tab")
    _wait_text(page, "taught")  # the status line filled on page load (taught models, or none yet)
    seen["teach"] = page.locator("body").inner_text()
    page.screenshot(path=str(SHOTS / "teach.png"), full_page=True)

    # Radiograph captioning: an example image -> Describe -> streamed text
    _open_tab(page, "Radiograph captioning")
    page.get_by_role("button", name="Describe", exact=True).locator("visible=true").first.wait_for()
    examples = page.locator("[data-testid='gallery'] button, .gallery button, button.gallery-item").locator("visible=true")
    if examples.count():
        examples.first.click()
    else:  # examples rendered as a table of thumbnails
        page.locator("table img, .examples img").locator("visible=true").first.click()
    page.wait_for_timeout(500)
    _click_visible(page, "button", "Describe")
    seen["radiograph"] = _textbox_value(page, "Description")
    page.screenshot(path=str(SHOTS / "radiograph.png"), full_page=True)

    # Findings -> impression: type findings and a reference -> Generate -> impression + ROUGE
    _open_tab(page, "Findings → impression")
    page.get_by_label("Findings (or a whole report)").fill(
        "FINDINGS: The heart size is normal. The lungs are clear. No pleural effusion.")
    page.get_by_label("Reference impression (optional, for ROUGE)").fill("No acute cardiopulmonary process.")
    _click_visible(page, "button", "Generate impression")
    _wait_text(page, "Generated in")
    seen["impression"] = page.locator("body").inner_text()
    page.screenshot(path=str(SHOTS / "impression.png"), full_page=True)

    # Pathology: an example query -> Search -> gallery; then zero-shot on the same page
    _open_tab(page, "Pathology search")
    _click_visible(page, "button", "lymphocytes")
    _click_visible(page, "button", "Search")
    _wait_text(page, "best matches for")
    assert _images_in(page, "Best matches", 2) >= 2
    seen["pathology"] = page.locator("body").inner_text()
    page.screenshot(path=str(SHOTS / "pathology.png"), full_page=True)

    # About & status: refresh -> the table lists every model with its status
    _open_tab(page, "About & status")
    _click_visible(page, "button", "Refresh status")
    _wait_text(page, "clip_baseline")
    seen["about"] = page.locator("body").inner_text()
    page.screenshot(path=str(SHOTS / "about.png"), full_page=True)

    elapsed = time.perf_counter() - start
    print(f"\nBROWSER every tab in {elapsed:.1f} s; screenshots in {SHOTS}")
    for tab in ("skin", "lung_ct", "teach", "radiograph", "impression", "pathology", "about"):
        shot = SHOTS / f"{tab}.png"
        assert shot.is_file() and shot.stat().st_size > 10_000, tab
    assert "malignant" in seen["skin"].lower()
    assert any(w in seen["lung_ct"].lower() for w in ("benign", "malignant", "normal", "further examination"))
    assert "rouge" in seen["impression"].lower()
    assert "Traceback" not in " ".join(seen.values())
    assert not errors, f"JavaScript errors in the page: {errors[:3]}"
    assert elapsed < 120
