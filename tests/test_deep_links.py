"""Links for a class, through the live app in headless Chromium: ?tab=&example= selects the
tab and loads the example; an unknown tab, an example out of range or a bad quiz code opens
the page normally with a notice naming the bad part (no error toast); ?quiz=CODE opens the
quiz, and the model's answer appears only after the student committed a guess."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parent.parent / "assets"
LUNG_EXAMPLES = [ASSETS / "lung" / "CT_small.dcm", ASSETS / "lung" / "ct_small_lung_window.png",
                 ASSETS / "skin" / "offdomain_cat_chelsea.jpg"]  # the Lung CT tab's Examples, in order


def _tab_ids() -> list[str]:
    import app

    return [importlib.import_module(m).TAB_ID for m in app.TAB_MODULES]


def _open(browser, url: str, want: str = ""):  # noqa: ANN001, ANN202
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url, wait_until="load")
    page.wait_for_function(
        "w => { const t = (document.querySelector('#deep-link-notice')?.innerText || '').trim();"
        " return t.length > 8 && t.includes(w); }", arg=want, timeout=120_000)
    return page


def _selected_tab(page) -> str:  # noqa: ANN001
    return page.locator("button[role=tab][aria-selected=true]:visible").first.inner_text().strip()


def _no_error_toast(page) -> None:  # noqa: ANN001
    page.wait_for_timeout(1000)
    assert page.locator(".toast-body.error, .toast-wrap .error").count() == 0
    assert page.locator(".toast-body").count() == 0


def test_link_selects_the_tab_and_loads_the_example(live_app, browser) -> None:
    url, _ = live_app
    page = _open(browser, url + "?tab=lung_ct&example=2", "example 2")
    try:
        assert _selected_tab(page) == "Lung CT", page.locator("#deep-link-notice").inner_text()
        page.wait_for_function("() => document.querySelector('#lung-file')?.innerText.includes('ct_small_lung_window')",
                               timeout=60_000)
        assert LUNG_EXAMPLES[1].name in page.locator("#lung-file").inner_text().replace("\n", "")
        notice = page.locator("#deep-link-notice").inner_text()
        assert "Lung CT" in notice and "same slice as PNG" in notice and "not understood" not in notice
        _no_error_toast(page)
    finally:
        page.close()


def test_unknown_tab_opens_the_page_and_names_the_bad_part(live_app, browser) -> None:
    url, _ = live_app
    page = _open(browser, url + "?tab=cardiology&foo=1", "not understood")
    try:
        notice = page.locator("#deep-link-notice").inner_text()
        assert "tab=cardiology is not a tab" in notice
        assert ", ".join(_tab_ids()) in notice  # the valid ids, read from the app's tab modules
        assert "ignored: foo" in notice
        assert _selected_tab(page) == "Skin lesion"  # the page opened as it would without the link
        page.screenshot(path=str(Path(__file__).parent / "_artifacts" / "deep_link_unknown_tab.png"))
        _no_error_toast(page)
    finally:
        page.close()


def test_example_out_of_range_names_the_range(live_app, browser) -> None:
    url, _ = live_app
    page = _open(browser, url + "?tab=lung_ct&example=9", "not understood")
    try:
        notice = page.locator("#deep-link-notice").inner_text()
        assert f"example=9 is not an example of the lung_ct tab: choose 1 to {len(LUNG_EXAMPLES)}" in notice
        assert _selected_tab(page) == "Lung CT"  # the part that was understood still applies
        assert "ct_small" not in page.locator("#lung-file").inner_text()  # nothing was loaded
        _no_error_toast(page)
    finally:
        page.close()


def test_quiz_link_opens_the_quiz_and_the_answer_waits_for_the_guess(live_app, browser) -> None:
    url, client = live_app
    _, quiz = client.predict("lung_ct", 24, api_name="/quiz_create")
    page = _open(browser, url + f"?quiz={quiz['code']}", quiz["code"])
    try:
        assert _selected_tab(page) == "Class quiz"
        page.wait_for_function("() => document.querySelector('#quiz-status')?.innerText.includes('Case 1 of 10')",
                               timeout=60_000)
        page.wait_for_timeout(1500)
        assert page.locator("#quiz-answer").inner_text().strip() == ""  # guess first: no answer yet
        page.locator("#quiz-choice label").nth(0).click()
        page.locator("#quiz-commit").click()
        page.wait_for_function("() => document.querySelector('#quiz-answer')?.innerText.includes('You guessed')",
                               timeout=120_000)
        answer = page.locator("#quiz-answer").inner_text()
        assert "You guessed benign" in answer and "No reference label" in answer
        _no_error_toast(page)
    finally:
        page.close()
    # the guess went through the page's anonymous browser id, and is counted
    _, _, tally = client.predict(quiz["code"], quiz["secret"], api_name="/quiz_results")
    assert tally["students"] == 1 and tally["cases"][0]["distribution"] == {"benign": 1}


def test_bad_quiz_code_in_a_link(live_app, browser) -> None:
    url, _ = live_app
    page = _open(browser, url + "?quiz=ZZZZZZ", "not understood")
    try:
        assert "No quiz has the code ZZZZZZ" in page.locator("#deep-link-notice").inner_text()
        _no_error_toast(page)
    finally:
        page.close()


@pytest.mark.parametrize(("params", "expected"), [
    ({"tab": "lung_ct", "example": "0"}, "choose 1 to 3"),
    ({"tab": "lung_ct", "example": "two"}, "choose 1 to 3"),
    ({"example": "1"}, "needs a `tab=`"),
    ({"tab": "about", "example": "1"}, "has no examples"),
])
def test_parse_reports_each_bad_part(params: dict[str, str], expected: str) -> None:
    from tabs.deep_links import ExampleTarget, parse

    targets = {"lung_ct": ExampleTarget("lung_ct", None, ("a", "b", "c"), ("A", "B", "C"))}
    parsed = parse(params, {"lung_ct": "Lung CT", "about": "About & status"}, targets, quiz_enabled=False)
    assert parsed.example is None
    assert any(expected in n for n in parsed.notes)


def test_about_lists_the_app_tab_ids() -> None:
    from tabs.about import LESSON_MD

    listed = LESSON_MD.split("(tab ids:")[1].split(";")[0]
    assert [t.strip(" `,\n") for t in listed.split(",")] == _tab_ids()
