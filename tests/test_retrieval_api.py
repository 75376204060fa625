"""The retrieval api_names through gradio_client on the live app (tiny CLIPs, real MiniLM)."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_pathology import make_tiles


@pytest.fixture(scope="module")
def indexed(live_app: tuple[str, object], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Tiles indexed for PLIP in the live app's data dir (same process, same env)."""
    from medlab.retrieval import image_index

    folder = tmp_path_factory.mktemp("api-tiles")
    tiles = make_tiles(folder, n=6, seed=21)
    z = folder.parent / "api-tiles.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in tiles + [folder / "captions.csv", folder / "notes.txt"]:
            zf.write(p, p.name)
    from gradio_client import handle_file

    _, client = live_app
    report = client.predict(handle_file(str(z)), api_name="/pathology_index")
    assert "6 added" in report and "notes.txt" in report
    assert image_index.image_collection("plip").count() >= 6
    return tiles


@pytest.fixture(scope="module")
def assistant_client(live_app: tuple[str, object]) -> Iterator[object]:
    """The live app's client when the skin tab already hosts the assistant; else a small app
    with only the assistant (the skin tab mounts it; this keeps the test independent)."""
    _, client = live_app
    if "/assistant_ask" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]:
        yield client
        return
    import gradio as gr
    from gradio_client import Client

    import tabs.assistant
    from tabs.common import finalize_page_load
    from tests.conftest import free_port

    with gr.Blocks() as demo:
        tabs.assistant.build()
        finalize_page_load(demo)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


def test_pathology_search_returns_a_ranked_gallery(live_app: tuple[str, object], indexed: list[Path]) -> None:
    _, client = live_app
    gallery, status = client.predict("tumor epithelium", 4, api_name="/pathology_search")
    assert len(gallery) == 4
    scores = [float(item["caption"].split(" · ")[0]) for item in gallery]
    assert scores == sorted(scores, reverse=True)
    assert all(Path(item["image"]).is_file() for item in gallery)
    assert all(re.match(r"^-?\d\.\d{3} · \S", item["caption"]) for item in gallery)
    assert "4 best matches" in status
    # Other tests may share this data dir; all our tiles (with their CSV captions) are there.
    everything, _ = client.predict("tumor epithelium", 32, api_name="/pathology_search")
    captions = " ".join(item["caption"] for item in everything)
    assert all(f"H&E tile {i} showing" in captions for i in range(6))


def test_pathology_similar_returns_the_query_tile_first(live_app: tuple[str, object], indexed: list[Path]) -> None:
    from gradio_client import handle_file

    _, client = live_app
    gallery, _ = client.predict(handle_file(str(indexed[2])), 3, api_name="/pathology_similar")
    assert len(gallery) == 3
    assert gallery[0]["caption"].startswith("1.000") and "H&E tile 2 " in gallery[0]["caption"]


def test_pathology_zero_shot_gives_both_models_probabilities(live_app: tuple[str, object], indexed: list[Path]) -> None:
    from gradio_client import handle_file

    from medlab.core.specs import KATHER_CLASSES

    _, client = live_app
    plip, clip, notes = client.predict(handle_file(str(indexed[0])), api_name="/pathology_zero_shot")
    for out in (plip, clip):
        labels = [c["label"] for c in out["confidences"]]
        assert sorted(labels) == sorted(KATHER_CLASSES)
        assert sum(c["confidence"] for c in out["confidences"]) == pytest.approx(1.0, abs=1e-4)
    custom, _, _ = client.predict(handle_file(str(indexed[0])), "tumour, stroma, fat",
                                  "A photo of {label}.", api_name="/pathology_zero_shot")
    assert sorted(c["label"] for c in custom["confidences"]) == ["fat", "stroma", "tumour"]
    assert "PLIP" in notes and "General CLIP" in notes


def test_pathology_bad_zip_is_a_clear_error(live_app: tuple[str, object], indexed: list[Path], tmp_path: Path) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from medlab.retrieval import image_index

    _, client = live_app
    before = image_index.image_collection("plip").count()
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("../../evil.png", indexed[0].read_bytes())
    with pytest.raises(AppError, match="unsafe path"):
        client.predict(handle_file(str(z)), api_name="/pathology_index")
    assert image_index.image_collection("plip").count() == before


def test_assistant_ask_answers_with_citations_and_declines_off_topic(assistant_client: object) -> None:
    answer, passages, details = assistant_client.predict("What does the ABCDE rule stand for?", api_name="/assistant_ask")
    assert details["covered"] and "Asymmetry" in answer
    assert details["citations"][0]["document"] == "knowledge/02-abcde-rule.md"
    assert "**Sources**" in answer and "[1]" in passages
    declined, _, info = assistant_client.predict("What is the best pizza in Naples?", api_name="/assistant_ask")
    assert not info["covered"] and "does not cover" in declined and info["citations"] == []


def test_assistant_upload_rejects_a_fake_pdf(assistant_client: object, tmp_path: Path) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    fake = tmp_path / "fake.pdf"
    fake.write_text("just text")
    with pytest.raises(AppError, match="not a PDF"):
        assistant_client.predict(handle_file(str(fake)), api_name="/assistant_add_document")
