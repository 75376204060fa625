"""Malformed and awkward input through EVERY public api_name of the live app (tiny models).

Table-driven: each row is (endpoint, input, expectation). A rejected input must come back as a
clear message (gradio_client raises AppError carrying the gr.Error text: we check for words
that tell a student what was wrong), the server must keep answering (/model_status after
each call), and a rejected input must write nothing (data-dir files and chroma counts are
unchanged). Some awkward inputs are legitimately accepted (animated GIF: first frame, 16-bit
TIFF: rescaled, CMYK: converted); for those the result must be well-formed.

The 1 GB upload (refused by size before it is read) is in test_security.py."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import bad_files as bf

# -- expectations ----------------------------------------------------------------------------
# Each pattern names the specific problem (and file-based rejections must also name the file,
# see test_bad_input), so an unrelated message cannot pass by sharing a common word.
NOT_IMAGE = r"is not an image"
DAMAGED = r"could not be decoded; it may be truncated or damaged"
TOO_SMALL = r"only 1x1 pixels; images must be at least \d+x\d+"
TOO_LARGE = r"too large to decode safely \(900 megapixels\); the limit is \d+ megapixels"
NO_PIXELS = r"DICOM file without pixel data"
RTSTRUCT = r"RT Structure Set \(contours, not an image\)"
SEG = r"Segmentation object \(label masks, not an image\)"
EMPTY_TEXT = r"^(Please paste the findings|Type a question|Type a description)"
TOO_LONG = r"too long \(over [\d,]+ characters\)|[\d,]+ characters; the limit is [\d,]+"
MISSING_COL = r"has no findings column\. Columns found: '"
ZIP_UNSAFE = r"unsafe path \('\.\./\.\./escape\.png'\).*refused"
ZIP_BOMB = r"zip bomb \('tile_0\.png' expands \d+x\); refused"
NOT_ZIP = r"is not a zip archive"
WRONG_TYPE = r"Invalid file type\. Please upload a file that is one of these formats: \[.*'\{}'"  # gradio's own check
DAMAGED_PDF = r"is a damaged PDF that cannot be read"
NOT_PDF = r"is not a PDF \(its contents do not start with %PDF-\)"


@dataclass(frozen=True)
class Case:
    id: str
    api: str
    make: Callable[[Path], Any]  # folder -> first argument (file path or text)
    expect: str | Callable[[Any], None]  # regex of the error, or a checker of the accepted result
    args: tuple[Any, ...] = ()
    is_file: bool = True
    names_file: bool = True  # the file is what is wrong, so the message must name it


def _label_ok(value: Any, n: int | None = None) -> None:
    """A gr.Label payload: confidences are probabilities that sum to 1."""
    assert isinstance(value, dict) and value.get("confidences"), value
    probs = [c["confidence"] for c in value["confidences"]]
    assert all(0.0 <= p <= 1.0 for p in probs)
    if n is not None:
        assert len(probs) == n
    assert abs(sum(probs) - 1.0) < 1e-3 or n is None


def _skin_ok(result: Any) -> None:
    bars, decision, classes, _expl, summary = result
    _label_ok(bars, 2)
    assert isinstance(decision, str) and decision.strip()
    assert 0.0 <= summary["malignant_probability"] <= 1.0


def _lung_ok(result: Any) -> None:
    probs, overlay, text, summary = result
    _label_ok(probs, 3)
    assert overlay and Path(overlay).is_file()
    assert isinstance(text, str) and text.strip() and isinstance(summary, dict)


def _caption_ok(result: Any) -> None:
    assert isinstance(result, str) and result.strip(), f"empty caption {result!r}"


def _similar_ok(result: Any) -> None:
    """A gallery of real image files, each captioned with its similarity score."""
    gallery, status = result
    assert isinstance(gallery, list) and gallery, f"empty gallery ({status!r})"
    for item in gallery:
        assert Path(item["image"]).is_file(), item
        assert re.match(r"^-?\d\.\d{3} · ", item["caption"]), item["caption"]


def _zero_shot_ok(result: Any) -> None:
    plip, clip, _notes = result
    _label_ok(plip)
    assert abs(sum(c["confidence"] for c in plip["confidences"]) - 1.0) < 1e-3


def _stress_ok(result: Any) -> None:
    plot, strip, report, summary = result
    assert plot and Path(plot).is_file() and isinstance(report, str) and report.strip()
    assert len(strip) == len(summary["strengths"]) == len(summary["probabilities"]) == 8


def _explain_ok(result: Any) -> None:
    cam, occlusion, _ig, agreement, _status, summary = result
    assert cam and Path(cam).is_file() and occlusion and Path(occlusion).is_file()
    assert "Spearman" in agreement and summary["occlusion"]["covered_copies"] == 4


IMAGE_APIS: dict[str, Callable[[Any], None]] = {
    "/skin_classify": _skin_ok,
    "/lung_classify": _lung_ok,
    "/skin_explain": _explain_ok,
    "/lung_ct_explain": _explain_ok,
    "/radiograph_caption": _caption_ok,
    "/pathology_similar": _similar_ok,
    "/pathology_zero_shot": _zero_shot_ok,
    "/skin_stress": _stress_ok,
    "/lung_ct_stress": _stress_ok,
    "/pathology_stress": _stress_ok,
}
IMAGE_ARGS: dict[str, tuple[Any, ...]] = {"/radiograph_caption": ("Describe.", 0.0, 16)}

BAD_IMAGES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("text-named-png", bf.text_as_png, NOT_IMAGE),
    ("non-utf8-named-png", bf.non_utf8_as_png, NOT_IMAGE),
    ("truncated-png", bf.truncated_png, DAMAGED),
    ("corrupt-jpeg", bf.corrupt_jpeg, DAMAGED),
    ("1x1", bf.one_pixel, TOO_SMALL),
    ("30000x30000-bomb", bf.bomb_png, TOO_LARGE),
]
ACCEPTED_IMAGES: list[tuple[str, Callable[[Path], Path]]] = [
    ("animated-gif", bf.animated_gif),
    ("16bit-tiff", bf.tiff_16bit),
    ("cmyk-jpeg", bf.cmyk_jpeg),
]
DICOMS: list[tuple[str, Callable[[Path], Path], str]] = [
    ("dicom-no-pixels", bf.dicom_without_pixels, NO_PIXELS),
    ("dicom-rtstruct", bf.dicom_rtstruct, RTSTRUCT),
    ("dicom-seg", bf.dicom_seg, SEG),
]
REJECT_SECONDS = 20
CONTROL_TEXT = "lungs\x00 clear\x1b[31m red \x07bell\r\n\x0b\x0c\u202e\ufeff tumour"
LONG_TEXT = ("The lungs are clear. " * 10_000)[:200_000]


def _cases() -> list[Case]:
    cases: list[Case] = []
    for api, ok in IMAGE_APIS.items():
        extra = IMAGE_ARGS.get(api, ())
        cases += [Case(f"{api[1:]}:{name}", api, make, rx, extra) for name, make, rx in BAD_IMAGES]
        cases += [Case(f"{api[1:]}:{name}", api, make, ok, extra) for name, make in ACCEPTED_IMAGES]
    cases += [Case(f"{api[1:]}:{name}", api, make, rx) for api in ("/lung_classify", "/lung_ct_explain")
              for name, make, rx in DICOMS]
    # a DICOM handed to an image-only tab is not an image for it
    cases += [Case(f"skin_classify:{name}", "/skin_classify", make, rx) for name, make, rx in DICOMS[:2]]
    text = lambda value: (lambda d: value)  # noqa: E731 - tiny factory
    for api, extra in (("/impression", ()), ("/assistant_ask", ()), ("/pathology_search", ())):
        cases += [
            Case(f"{api[1:]}:empty", api, text(""), EMPTY_TEXT, extra, False),
            Case(f"{api[1:]}:whitespace", api, text(" \n\t "), EMPTY_TEXT, extra, False),
            Case(f"{api[1:]}:200k-chars", api, text(LONG_TEXT), TOO_LONG, extra, False),
        ]
    cases += [
        Case("impression:control-chars", "/impression", text(CONTROL_TEXT),
             lambda r: _text_result_ok(r), (), False),
        Case("assistant_ask:control-chars", "/assistant_ask", text(CONTROL_TEXT),
             lambda r: _assistant_ok(r), (), False),
        Case("pathology_search:control-chars", "/pathology_search", text(CONTROL_TEXT),
             lambda r: _similar_ok(r), (), False),
        Case("pathology_zero_shot:empty-labels", "/pathology_zero_shot", bf.cmyk_jpeg,
             r"at least two different labels", (" , ,",), names_file=False),
        Case("pathology_zero_shot:200k-labels", "/pathology_zero_shot", bf.cmyk_jpeg,
             r"labels text is too long \(\d+ characters\); give at most \d+ labels",
             (", ".join(f"label{i}" for i in range(20_000)),), names_file=False),
        Case("pathology_zero_shot:control-char-labels", "/pathology_zero_shot", bf.cmyk_jpeg, _zero_shot_ok,
             ("tumour\x00, \x1bstroma, fat\x07",)),
        # batch files
        Case("impression_batch:csv-missing-columns", "/impression_batch", bf.csv_missing_columns, MISSING_COL),
        Case("impression_batch:jsonl-missing-columns", "/impression_batch", bf.jsonl_missing_columns, MISSING_COL),
        Case("impression_batch:non-utf8", "/impression_batch", bf.csv_non_utf8, r"is not UTF-8 text \(byte 0x"),
        Case("impression_batch:empty", "/impression_batch", bf.empty_csv, r"is empty \(0 bytes\)"),
        Case("impression_batch:png-not-table", "/impression_batch", bf.cmyk_jpeg, WRONG_TYPE.format(".csv")),
        # archives
        Case("pathology_index:zip-traversal", "/pathology_index", bf.zip_traversal, ZIP_UNSAFE),
        Case("pathology_index:zip-bomb", "/pathology_index", bf.zip_bomb, ZIP_BOMB),
        Case("pathology_index:not-a-zip", "/pathology_index", bf.not_a_zip, NOT_ZIP),
        Case("pathology_index:png-not-zip", "/pathology_index", bf.cmyk_jpeg, WRONG_TYPE.format(".zip")),
        # teaching sets (same archive rules as the pathology zip) and taught-model ids
        Case("teach_train:zip-traversal", "/teach_train", bf.zip_traversal, ZIP_UNSAFE),
        Case("teach_train:zip-bomb", "/teach_train", bf.zip_bomb, ZIP_BOMB),
        Case("teach_train:not-a-zip", "/teach_train", bf.not_a_zip, r"is not a \.?zip archive"),
        Case("teach_train:png-not-zip", "/teach_train", bf.cmyk_jpeg, WRONG_TYPE.format(".zip")),
        Case("teach_train:one-class", "/teach_train", bf.one_class_zip, r"at least two classes", names_file=False),
        Case("teach_use:unknown-id", "/teach_use", text("no-such-model"), r"'no-such-model' is not a taught-model id",
             (), False),
        # documents
        Case("assistant_add_document:fake-pdf", "/assistant_add_document", bf.fake_pdf, DAMAGED_PDF),
        Case("assistant_add_document:non-utf8-pdf", "/assistant_add_document", bf.non_utf8_pdf, NOT_PDF),
        Case("assistant_add_document:zip-not-pdf", "/assistant_add_document", bf.zip_traversal, WRONG_TYPE.format(".pdf")),
    ]
    # the class quiz: codes, case sets, expiry, browser ids (quiz-specific refusals: tests/test_quiz.py)
    student = "browser-12345678"
    cases += [
        # the case-set dropdown's own check (gradio) lists the valid sets
        Case("quiz_create:unknown-set", "/quiz_create", text("no-such-set"),
             r"no-such-set is not in the list of choices: \['lung_ct', 'skin', 'pathology'\]", (), False),
        # the hours field's own bounds (gradio's number check)
        Case("quiz_create:zero-hours", "/quiz_create", text("lung_ct"), r"Value 0 is less than minimum value 0\.25",
             (0,), False),
        Case("quiz_create:too-long", "/quiz_create", text("lung_ct"), r"Value 10000 is greater than maximum value 336",
             (10_000,), False),
    ]
    code_rows = (("empty", "", r"No quiz code was given"),
                 ("not-a-code", "hello!!", r"'hello!!' is not a quiz code: codes have 6 characters"),
                 ("control-chars", CONTROL_TEXT, r"is not a quiz code"),
                 ("200k-chars", LONG_TEXT, r"is not a quiz code"),
                 ("unknown-code", "ABCDEF", r"No quiz has the code ABCDEF"))
    for api, extra in (("/quiz_case", (0, student)), ("/quiz_reveal", (0, student)), ("/quiz_results", ("not-the-secret",))):
        cases += [Case(f"{api[1:]}:{name}", api, text(value), rx, extra, False) for name, value, rx in code_rows]
    # one browser id per refused guess: the per-browser rate limit must not be what refuses them
    cases += [Case(f"quiz_guess:{name}", "/quiz_guess", text(value), rx, (0, "normal", f"browser-{name}"), False)
              for name, value, rx in code_rows]
    return cases


def _text_result_ok(result: Any) -> None:
    text, _rouge, notes = result
    assert isinstance(text, str) and text.strip(), f"empty impression {text!r}"
    assert isinstance(notes, str)


def _assistant_ok(result: Any) -> None:
    answer, _passages, details = result
    assert isinstance(answer, str) and answer.strip() and isinstance(details, dict)


CASES = _cases()


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    """Overrides conftest's per-test cache reset: like a real server, the live app keeps its
    loaded models across these requests (and a reload per row would dominate the run time)."""


# -- state snapshot --------------------------------------------------------------------------
def _snapshot() -> dict[str, Any]:
    """Files under the data dir (chroma internals excluded: reads may touch them) and the row
    count of every chroma collection."""
    from medlab.retrieval.vectorstore import get_client

    root = Path(os.environ["MEDLAB_DATA_DIR"])
    files = set()
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith("chroma") for part in rel.parts) and rel.parts[0] != "hf-home":
            files.add(str(rel))
    counts = {c.name: c.count() for c in get_client().list_collections()}
    return {"files": files, "counts": counts}


@pytest.fixture(scope="module")
def warm(live_app: tuple[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Use every endpoint once with good input so lazy first-use work (knowledge ingest,
    model loads) is done before the snapshots."""
    from gradio_client import handle_file

    _, client = live_app
    d = tmp_path_factory.mktemp("warm")
    good = bf.cmyk_jpeg(d)
    from medlab.retrieval import image_index

    if image_index.image_collection("plip").count() == 0:
        image_index.index_examples("plip")  # the bundled example tiles: search needs an index
    client.predict("What does the ABCDE rule stand for?", api_name="/assistant_ask")
    client.predict("tumour epithelium", api_name="/pathology_search")
    client.predict(handle_file(str(good)), api_name="/skin_classify")
    # the quiz database exists before the snapshots, and this session has opened a case (its answer
    # choices are what /quiz_guess accepts), so refused guesses reach the engine's checks
    _, quiz = client.predict("lung_ct", 1, api_name="/quiz_create")
    client.predict(quiz["code"], 0, "browser-warm-up", api_name="/quiz_case")
    return client


def _status_ok(client: Any) -> None:
    status = client.predict(api_name="/model_status")
    assert isinstance(status, dict) and "models" in status and "cache" in status


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, warm: Any, tmp_path: Path) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client = warm
    value = case.make(tmp_path)
    arg = handle_file(str(value)) if case.is_file else value
    before = _snapshot()
    if isinstance(case.expect, str):
        job = client.submit(arg, *case.args, api_name=case.api)
        with pytest.raises(AppError) as info:
            # a refusal must be quick too: a slow one ties up a queue slot (denial of service)
            job.result(timeout=REJECT_SECONDS)
        message = str(info.value)
        assert re.search(case.expect, message), f"{case.id}: unclear message {message!r}"
        if case.is_file and case.names_file and not case.expect.startswith("Invalid file type"):
            assert Path(value).name in message, f"{case.id}: the message does not name the file: {message!r}"
        assert "Traceback" not in message and "File \"" not in message
        assert _snapshot() == before, f"{case.id}: a rejected input changed the stored state"
    else:
        result = client.predict(arg, *case.args, api_name=case.api)
        case.expect(result)
    _status_ok(client)  # the process is still up and answering


def test_every_public_endpoint_is_covered(warm: Any) -> None:
    """A new api_name must get bad-input rows here (or be knowingly input-free)."""
    endpoints = warm.view_api(print_info=False, return_format="dict")["named_endpoints"]
    covered = {c.api for c in CASES}
    # endpoints without parameters (status, page-load texts) have no input to malform
    input_free = {n for n, info in endpoints.items() if not info["parameters"]}
    names = set(endpoints)
    missing = names - covered - input_free
    assert not missing, f"no bad-input cases for {sorted(missing)}"
