"""The generation tabs through gradio_client against the live app with tiny checkpoints:
/radiograph_caption and /impression return text and stream, /impression_batch evaluates a file."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

ASSETS = Path(__file__).resolve().parent.parent / "assets"
PHANTOM = ASSETS / "radiograph" / "synthetic_chest_phantom.png"
pytestmark = pytest.mark.filterwarnings("ignore:.*hidden_state.*:FutureWarning")


def _finished(job: Any, timeout: float = 120.0) -> Any:
    result = job.result(timeout=timeout)
    deadline = time.time() + 5
    while not job.done() and time.time() < deadline:  # outputs() is complete once done
        time.sleep(0.05)
    return result


def test_generation_endpoints_are_documented(live_app: tuple[str, Any]) -> None:
    _, client = live_app
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in ("/radiograph_caption", "/impression", "/impression_batch"):
        assert name in endpoints
    params = [p["parameter_name"] for p in endpoints["/radiograph_caption"]["parameters"]]
    assert params[:3] == ["image", "instruction", "temperature"]
    assert all(p["parameter_has_default"] for p in endpoints["/radiograph_caption"]["parameters"][1:])
    assert all(p["parameter_has_default"] for p in endpoints["/impression"]["parameters"][1:])
    assert "/radiograph_compare" not in endpoints  # helper event, private


def test_radiograph_caption_returns_text_with_defaults(live_app: tuple[str, Any]) -> None:
    from gradio_client import handle_file

    _, client = live_app
    text = client.predict(handle_file(str(PHANTOM)), api_name="/radiograph_caption")
    assert isinstance(text, str) and len(text.split()) >= 2


def test_radiograph_caption_streams_several_updates(live_app: tuple[str, Any]) -> None:
    from gradio_client import handle_file

    _, client = live_app
    job = client.submit(handle_file(str(PHANTOM)), "Describe this image.", 0.0, 24, 0.1, True,
                        api_name="/radiograph_caption")
    final = _finished(job)
    outputs = [o for o in job.outputs() if o]
    assert len(outputs) > 1
    assert all(b.startswith(a) for a, b in zip(outputs, outputs[1:]))
    assert outputs[-1] == final

    off = client.predict(handle_file(str(PHANTOM)), "Describe this image.", 0.0, 24, 0.1, False,
                         api_name="/radiograph_caption")
    assert off != final  # the base model (adapter off) writes something else


def test_radiograph_caption_without_image_is_a_clear_error(live_app: tuple[str, Any]) -> None:
    from gradio_client.exceptions import AppError

    _, client = live_app
    with pytest.raises(AppError, match="upload a radiograph image"):
        client.predict(None, api_name="/radiograph_caption")


def test_impression_returns_text_and_rouge(live_app: tuple[str, Any]) -> None:
    _, client = live_app
    text, scores, notes = client.predict("FINDINGS: the lungs are clear . IMPRESSION: no acute process .",
                                         api_name="/impression")
    assert isinstance(text, str) and text
    from tests.test_impression import reference_rouge

    assert scores == pytest.approx(reference_rouge(text, "no acute process ."))
    assert "IMPRESSION section" in notes


def test_impression_streams_when_greedy(live_app: tuple[str, Any]) -> None:
    _, client = live_app
    job = client.submit("small left pleural effusion .", "", 1, 16, api_name="/impression")
    final = _finished(job)
    texts = [o[0] for o in job.outputs() if o and o[0]]
    assert len(texts) > 1
    assert texts[-1] == final[0]
    assert final[1] is None  # no reference, no ROUGE


def test_impression_batch_on_a_20_row_jsonl(live_app: tuple[str, Any], tmp_path: Path) -> None:
    from gradio_client import handle_file

    _, client = live_app
    rows = [json.loads(line) for line in (ASSETS / "impression" / "example_batch.jsonl").read_text().splitlines()]
    assert len(rows) == 20
    summary, _plot, table, csv_file, notes = client.predict(handle_file(str(ASSETS / "impression" / "example_batch.jsonl")),
                                                            1, 12, api_name="/impression_batch")
    assert len(table["data"]) == 20
    headers = table["headers"]
    by_metric = {r[0]: dict(zip(summary["headers"], r)) for r in summary["data"]}
    for name in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        column = [r[headers.index(name)] for r in table["data"]]
        assert by_metric[name]["n"] == 20
        assert by_metric[name]["mean"] == pytest.approx(sum(column) / 20, abs=1e-4)
    assert Path(csv_file).read_text(encoding="utf-8").count("\n") >= 21
    assert "20 impressions generated" in notes


def test_impression_batch_with_wrong_columns_names_them(live_app: tuple[str, Any], tmp_path: Path) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    _, client = live_app
    bad = tmp_path / "bad.csv"
    bad.write_text("id,notes\n1,clear lungs\n", encoding="utf-8")
    with pytest.raises(AppError, match="Columns found: 'id', 'notes'"):
        client.predict(handle_file(str(bad)), api_name="/impression_batch")


def test_cancelling_a_caption_job_stops_the_generation_worker(live_app: tuple[str, Any]) -> None:
    import threading

    from gradio_client import handle_file

    _, client = live_app
    job = client.submit(handle_file(str(PHANTOM)), "Describe this image.", 0.0, 1024, 0.1, True,
                        api_name="/radiograph_caption")
    deadline = time.time() + 60
    while not [o for o in job.outputs() if o] and not job.done() and time.time() < deadline:
        time.sleep(0.05)
    assert [o for o in job.outputs() if o], "no streamed output arrived"
    assert any(t.name == "medlab-generate" and t.is_alive() for t in threading.enumerate())
    job.cancel()  # what the Stop button does
    stopped = time.time()
    deadline = stopped + 6  # 1024 tokens take ~20 s on the tiny model here
    while any(t.name == "medlab-generate" and t.is_alive() for t in threading.enumerate()) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(t.name == "medlab-generate" and t.is_alive() for t in threading.enumerate())


def test_remote_backend_through_the_api(live_app: tuple[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from gradio_client import handle_file

    from tests.test_radiograph import _Stub

    _, client = live_app
    stub = _Stub()
    try:
        monkeypatch.setenv("MEDLAB_CAPTIONER_ENDPOINT", stub.url)
        job = client.submit(handle_file(str(PHANTOM)), api_name="/radiograph_caption")
        final = _finished(job)
    finally:
        stub.close()
    assert final == "".join(_Stub.PIECES)
    assert [o for o in job.outputs() if o][-3:] == ["The chest", "The chest radiograph", final]
    (request,) = stub.requests
    content = request["body"]["messages"][0]["content"]
    assert [part["type"] for part in content] == ["image_url", "text"]


@pytest.mark.parametrize("architecture", ["idefics3", "gemma3"])
def test_other_architectures_caption_through_the_api_streamed(
    live_app: tuple[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, architecture: str
) -> None:
    """Switching the captioner is one environment variable: a tiny Idefics3 (SmolVLM) or
    Gemma 3 (MedGemma) checkpoint answers /radiograph_caption, streamed."""
    from gradio_client import handle_file

    from tests.tiny_generation import tiny_gemma3, tiny_idefics3

    base = {"idefics3": tiny_idefics3, "gemma3": tiny_gemma3}[architecture](tmp_path / architecture)
    _, client = live_app
    monkeypatch.setenv("MEDLAB_MODEL_CAPTIONER", str(base))
    monkeypatch.setenv("MEDLAB_MODEL_CAPTIONER_ADAPTER", "none")
    job = client.submit(handle_file(str(PHANTOM)), "Describe this image.", 0.0, 16, 0.1, True,
                        api_name="/radiograph_caption")
    final = _finished(job)
    outputs = [o for o in job.outputs() if o]
    assert len(outputs) > 1 and outputs[-1] == final
    assert all(b.startswith(a) for a, b in zip(outputs, outputs[1:]))
    from medlab.core.loaders import get_model

    assert get_model("captioner").model.config.model_type == architecture
