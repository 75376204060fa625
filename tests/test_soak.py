"""Concurrency: a bounded classroom soak against the live app, and the queue policy.

16 students (threads, each with its own gradio_client.Client) send 25 mixed requests each
to a cold app: zero failures, every model loaded exactly once (single flight under load),
and the figures (requests, failures, loads, p50/p95 latency) are printed and written to
tests/_artifacts/soak.json."""

from __future__ import annotations

import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests import bad_files as bf
from tests.conftest import ARTIFACTS

CLIENTS = 16
REQUESTS_PER_CLIENT = 25


def _requests(folder: Path) -> list[tuple[str, tuple[Any, ...]]]:
    from gradio_client import handle_file

    skin = handle_file(str(bf.cmyk_jpeg(folder)))
    ct = handle_file(str(bf.ct_small()))
    tile = handle_file(str(sorted((Path(__file__).resolve().parent.parent / "assets" / "pathology").rglob("*.jpg"))[0]))
    findings = ("FINDINGS: The heart size is normal. The lungs are clear without focal consolidation. "
                "No pleural effusion or pneumothorax.")
    return [
        ("/skin_classify", (skin,)),
        ("/lung_classify", (ct,)),
        ("/pathology_search", ("tumour epithelium", 4)),
        ("/assistant_ask", ("What does the ABCDE rule stand for?",)),
        ("/impression", (findings, "No acute cardiopulmonary process.", 1, 16)),
        ("/pathology_zero_shot", (tile, "tumour, stroma, fat")),
        ("/radiograph_caption", (skin, "Describe.", 0.0, 16)),
        ("/model_status", ()),
    ]


def _check(api: str, result: Any) -> None:
    """Each answer is well-formed (not just 'no exception')."""
    if api == "/skin_classify":
        assert 0.0 <= result[4]["malignant_probability"] <= 1.0
    elif api == "/lung_classify":
        assert len(result[0]["confidences"]) == 3 and Path(result[1]).is_file()
    elif api == "/pathology_search":
        assert isinstance(result[0], list) and result[0]
    elif api == "/assistant_ask":
        assert isinstance(result[0], str) and result[0].strip()
    elif api == "/impression":
        assert isinstance(result[0], str) and isinstance(result[1], dict)
    elif api == "/pathology_zero_shot":
        assert abs(sum(c["confidence"] for c in result[0]["confidences"]) - 1.0) < 1e-3
    elif api == "/radiograph_caption":
        assert isinstance(result, str)
    elif api == "/model_status":
        assert "cache" in result


def test_classroom_soak(live_app: tuple[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gradio_client import Client

    from medlab.retrieval import image_index

    url, client = live_app
    if image_index.image_collection("plip").count() == 0:
        image_index.index_examples("plip")
    # knowledge ingest is a one-off start-up cost, not part of the soak
    client.predict("What does the ABCDE rule stand for?", api_name="/assistant_ask")
    from medlab.core.loaders import reset_cache

    reset_cache()  # cold models: the burst below must trigger exactly one load each
    mix = _requests(tmp_path)
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def student(i: int) -> None:
        c = Client(url, verbose=False)
        for j in range(REQUESTS_PER_CLIENT):
            api, args = mix[(i + j) % len(mix)]
            t0 = time.perf_counter()
            try:
                _check(api, c.predict(*args, api_name=api))
                ok = None
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                ok = f"{api}: {type(exc).__name__}: {exc}"[:300]
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                if ok:
                    failures.append(ok)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(student, range(CLIENTS)))
    wall = time.perf_counter() - t0

    cache = client.predict(api_name="/model_status")["cache"]
    counts = cache["load_counts"]
    lat = sorted(latencies)
    figures = {
        "clients": CLIENTS,
        "requests": len(lat),
        "failures": len(failures),
        "loads": counts,
        "evictions": cache["evictions"],
        "p50_s": round(statistics.median(lat), 3),
        "p95_s": round(lat[int(0.95 * (len(lat) - 1))], 3),
        "max_s": round(lat[-1], 3),
        "wall_s": round(wall, 1),
        "throughput_rps": round(len(lat) / wall, 2),
        "failure_samples": failures[:5],
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "soak.json").write_text(json.dumps(figures, indent=2))
    with capsys.disabled():  # shown in the CI log even though pytest captures output
        print("\nSOAK", json.dumps(figures))
    assert len(lat) == CLIENTS * REQUESTS_PER_CLIENT
    assert not failures, failures[:5]
    expected = {"skin", "lung_ct", "plip", "clip_baseline", "embedder", "impression", "captioner"}
    assert expected <= set(counts), counts
    assert all(n == 1 for n in counts.values()), f"a model loaded more than once: {counts}"
    assert cache["evictions"] == 0


# -- queue policy: what Gradio enforces is observed in tests/test_queue_lanes.py; that every
# model event is registered in a lane is checked in tests/test_app_shell.py.


def test_image_cache_writes_are_atomic(tmp_path: Path) -> None:
    """Identical images saved concurrently (same content-addressed path) never expose a
    partly written file to a reader (the race the soak found in Gradio's PIL cache writes)."""
    from gradio import processing_utils as pu
    from PIL import Image

    import app

    app.atomic_image_cache_writes()
    img = bf._noise_rgb(256, seed=9)
    expected = len(pu.encode_pil_to_bytes(img, "png"))
    path = Path(pu.save_pil_to_cache(img, str(tmp_path), format="png"))
    short: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            n = len(path.read_bytes())
            if n != expected:
                short.append(n)

    def writer() -> None:
        for _ in range(30):
            assert pu.save_pil_to_cache(img, str(tmp_path), format="png") == str(path)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: writer(), range(4)))
    stop.set()
    for t in readers:
        t.join()
    assert not short, f"a reader saw a partly written file: {short[:5]} bytes of {expected}"
    assert Image.open(path).size == (256, 256)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no staging files left
