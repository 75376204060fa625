"""The imaging tabs through the real app: /skin_classify and /lung_classify via gradio_client
(tiny locally built checkpoints), and screenshots of both tabs with headless Chromium."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ASSETS = Path(__file__).parent.parent / "assets"
DICOM = ASSETS / "lung" / "CT_small.dcm"
LESION = ASSETS / "skin" / "synthetic_lesion.png"
CAT = ASSETS / "skin" / "offdomain_cat_chelsea.jpg"
CT_PNG = ASSETS / "lung" / "ct_small_lung_window.png"


def _confidences(label: dict) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in label["confidences"]}


def test_endpoints_are_documented_with_defaults(live_app) -> None:
    _, client = live_app
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    skin = api["/skin_classify"]["parameters"]
    assert len(skin) == 1 and skin[0]["component"] == "Image"
    lung = api["/lung_classify"]["parameters"]
    assert lung[0]["component"] == "File" and not lung[0]["parameter_has_default"]
    assert all(p["parameter_has_default"] for p in lung[1:])
    assert [p["parameter_default"] for p in lung[1:]] == ["lung", "routine", "predicted", 0.4]


def test_skin_classify_through_the_client(live_app) -> None:
    from gradio_client import handle_file

    _, client = live_app
    bars, decision, classes, explanation, summary = client.predict(handle_file(str(LESION)), api_name="/skin_classify")
    probs = _confidences(bars)
    assert set(probs) == {"benign", "malignant"}
    assert probs["malignant"] == pytest.approx(summary["malignant_probability"], abs=1e-5)
    assert probs["benign"] + probs["malignant"] == pytest.approx(1.0, abs=1e-5)
    assert summary["decision"] in ("benign", "malignant", "uncertain")
    assert summary["threshold"] == pytest.approx(0.3677)
    lo, hi = summary["uncertain_band"]
    inside = lo <= summary["malignant_probability"] <= hi
    assert (summary["decision"] == "uncertain") == inside
    assert len(_confidences(classes)) == 7
    assert "threshold" in explanation.lower() and "false negative" in explanation.lower()
    assert "Input gate" in decision and summary["gate"]["flagged"] is False


def test_skin_tab_flags_a_ct_slice(live_app) -> None:
    from gradio_client import handle_file

    _, client = live_app
    _, decision, _, _, summary = client.predict(handle_file(str(CT_PNG)), api_name="/skin_classify")
    assert summary["gate"]["flagged"] is True and summary["gate"]["certainty"] == "high"
    assert "Off-domain input" in decision and "meaningless" in decision
    assert 0.0 <= summary["malignant_probability"] <= 1.0  # still shown, clearly marked


def test_lung_classify_dicom_upload(live_app) -> None:
    from gradio_client import handle_file

    _, client = live_app
    probs, overlay, verdict, summary = client.predict(handle_file(str(DICOM)), api_name="/lung_classify")
    conf = _confidences(probs)
    assert set(conf) == {"benign", "malignant", "normal"}
    assert sum(conf.values()) == pytest.approx(1.0, abs=1e-4)
    assert Image.open(overlay).size == (128, 128)  # the DICOM's Rows x Columns
    assert summary["input"]["kind"] == "dicom" and summary["input"]["window"].startswith("lung")
    assert summary["gate"]["verdict"] == "in-domain"
    assert summary["deferred"] == (max(conf.values()) < 0.5)
    assert ("Recommend further examination" in verdict) == summary["deferred"]


def test_lung_overlay_is_the_size_of_a_non_square_input(live_app) -> None:
    from gradio_client import handle_file

    _, client = live_app
    probs, overlay, verdict, summary = client.predict(
        handle_file(str(CAT)), "lung", "high-risk confirmation", "malignant", 0.5, api_name="/lung_classify")
    assert Image.open(overlay).size == Image.open(CAT).size == (451, 300)
    assert summary["scenario"] == "high-risk confirmation" and summary["scenario_threshold"] == 0.7
    assert summary["explained_class"] == "malignant"
    assert summary["gate"]["flagged"] and "colour" in summary["gate"]["reasons"][0]
    assert "Off-domain input" in verdict


def test_lung_window_parameter_changes_the_rendering(live_app) -> None:
    from gradio_client import handle_file

    _, client = live_app
    _, lung, _, s1 = client.predict(handle_file(str(DICOM)), "lung", api_name="/lung_classify")
    _, bone, _, s2 = client.predict(handle_file(str(DICOM)), "bone", api_name="/lung_classify")
    assert s1["input"]["window"] != s2["input"]["window"]
    assert not np.array_equal(np.asarray(Image.open(lung)), np.asarray(Image.open(bone)))


def test_bad_inputs_are_clear_errors(live_app, tmp_path) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    _, client = live_app
    fake = tmp_path / "scan.dcm"
    fake.write_bytes(b"\x00" * 128 + b"DICM" + b"garbage" * 10)
    with pytest.raises(AppError, match="DICOM"):
        client.predict(handle_file(str(fake)), api_name="/lung_classify")
    with pytest.raises(AppError, match="not in the list of choices"):  # gradio validates the Radio
        client.predict(handle_file(str(DICOM)), "lung", "emergency", api_name="/lung_classify")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(AppError, match="not an image"):
        client.predict(handle_file(str(text)), api_name="/lung_classify")


@pytest.mark.browser
def test_screenshots_of_both_tabs(live_app) -> None:
    """Click through the skin and lung tabs in headless Chromium and save screenshots to
    tests/_artifacts/screenshots/."""
    from playwright import sync_api as playwright

    from tests.browser_support import chromium_path

    chromium = Path(chromium_path())
    from tests.conftest import ARTIFACTS

    url, _ = live_app
    shots = ARTIFACTS / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(60_000)
            page.goto(url, wait_until="load")  # the app keeps a connection open: no "networkidle"
            page.get_by_role("tab", name="Skin lesion").click()
            page.locator("#skin-image input[type=file]").set_input_files(str(LESION))
            page.locator("#skin-image img").first.wait_for(timeout=30_000)
            page.locator("#skin-run").click()
            page.locator("#skin-decision").get_by_text("Input gate").wait_for(timeout=60_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(shots / "skin_tab.png"), full_page=True)

            page.get_by_role("tab", name="Lung CT").click()
            page.locator("#lung-file input[type=file]").set_input_files(str(DICOM))
            page.wait_for_timeout(1000)
            page.locator("#lung-run").click()
            page.locator("#lung-verdict").get_by_text("Grad-CAM of").wait_for(timeout=60_000)
            page.locator("#lung-overlay img").first.wait_for(timeout=30_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(shots / "lung_ct_tab.png"), full_page=True)
        finally:
            browser.close()
    assert (shots / "skin_tab.png").stat().st_size > 10_000
    assert (shots / "lung_ct_tab.png").stat().st_size > 10_000
