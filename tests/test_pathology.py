"""Pathology search / zero-shot engine on tiny locally built CLIP checkpoints."""

from __future__ import annotations

import csv
import hashlib
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from medlab.core import errors
from medlab.core.specs import KATHER_CLASSES
from medlab.retrieval import encoders, image_index, image_search, zero_shot

LABELS = ("tumor", "stroma", "fat", "mucus", "debris", "lymphocytes")


def make_tiles(folder: Path, n: int = 6, seed: int = 0, size: int = 40) -> list[Path]:
    """n visibly different tiles + a CSV of file,label,caption + a stray non-image."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        base = rng.integers(0, 256, size=3)
        arr = np.clip(base + rng.normal(0, 40, size=(size, size, 3)), 0, 255).astype("uint8")
        p = folder / f"tile_{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    with open(folder / "captions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "caption"])
        for i, p in enumerate(paths):
            w.writerow([p.name, LABELS[i % len(LABELS)], f"H&E tile {i} showing {LABELS[i % len(LABELS)]}"])
    (folder / "notes.txt").write_text("not an image")
    return paths


@pytest.fixture
def pdata(use_tiny_models: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from medlab.retrieval.vectorstore import reset_clients

    monkeypatch.setenv("MEDLAB_DATA_DIR", str(tmp_path / "data"))
    reset_clients()
    yield tmp_path
    reset_clients()


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()  # independent of the code under test


def test_indexing_a_folder_is_idempotent_and_follows_the_folder(pdata: Path) -> None:
    folder = pdata / "tiles"
    paths = make_tiles(folder)
    shutil.copy(paths[0], folder / "copy_of_tile_0.png")  # same bytes: one document

    first = image_index.index_folder(folder)
    assert (first.added, first.total) == (6, 6)
    assert ("notes.txt", "not an image file") in first.skipped
    thumbs = list(image_index.thumbs_dir().rglob("*.jpg"))
    assert len(thumbs) == 6

    again = image_index.index_folder(folder)
    assert (again.added, again.unchanged, again.removed, again.total) == (0, 6, 0, 6)

    col = image_index.image_collection("plip")
    meta = col.get(ids=[_sha(paths[2])], include=["metadatas"])["metadatas"][0]
    assert meta["label"] == LABELS[2] and meta["caption"] == f"H&E tile 2 showing {LABELS[2]}"
    assert Path(meta["thumb"]).is_file()

    gone = _sha(paths[5])
    paths[5].unlink()
    (folder / "copy_of_tile_0.png").unlink()
    rows = (folder / "captions.csv").read_text().replace("H&E tile 3 showing", "Re-labelled tile 3 showing")
    (folder / "captions.csv").write_text(rows)
    changed = image_index.index_folder(folder)
    # updated: tile 3's caption, and tile 0 whose stored file name was its (deleted) copy's
    assert (changed.added, changed.removed, changed.updated, changed.total) == (0, 1, 2, 5)
    assert col.get(ids=[gone], include=[])["ids"] == []
    assert col.get(ids=[_sha(paths[3])], include=["metadatas"])["metadatas"][0]["caption"].startswith("Re-labelled")


def test_image_to_image_returns_the_query_image_first(pdata: Path) -> None:
    paths = make_tiles(pdata / "tiles", n=8, seed=3)
    image_index.index_folder(pdata / "tiles")
    for p in paths[:4]:
        by_file = image_search.search_image(str(p), k=5)
        assert by_file[0].id == _sha(p) and by_file[0].score == pytest.approx(1.0, abs=1e-3)
        by_id = image_search.search_image(item_id=_sha(p), k=3)
        assert by_id[0].id == _sha(p) and len(by_id) == 3
    # A new image (not indexed) is encoded; results are sorted by similarity.
    from PIL import Image

    novel = Image.fromarray(np.full((40, 40, 3), 90, dtype="uint8"))
    hits = image_search.search_image(novel, k=8)
    assert len(hits) == 8 and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_text_search_is_ranked_by_cosine_similarity(pdata: Path) -> None:
    paths = make_tiles(pdata / "tiles", n=6, seed=5)
    image_index.index_folder(pdata / "tiles")
    hits = image_search.search_text("tumor epithelium with glands", k=4)
    assert len(hits) == 4
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    # Same numbers computed independently from the encoders.
    q = encoders.encode_texts("plip", ["tumor epithelium with glands"])[0]
    from PIL import Image

    by_id = {_sha(p): p for p in paths}
    for h in hits:
        img = encoders.encode_images("plip", [Image.open(by_id[h.id]).convert("RGB")])[0]
        assert h.score == pytest.approx(float(img @ q), abs=1e-3)
    assert all(h.caption.startswith("H&E tile") and Path(h.thumb).is_file() for h in hits)
    with pytest.raises(errors.InputError, match="k must be"):
        image_search.search_text("tumor", k=0)


def test_empty_index_says_how_to_add_images(pdata: Path) -> None:
    with pytest.raises(image_search.EmptyIndexError, match="is empty.*build_pathology_index"):
        image_search.search_text("tumor")


def test_plip_and_clip_indexes_are_separate_collections(pdata: Path, monkeypatch: pytest.MonkeyPatch,
                                                        use_tiny_models: dict[str, str]) -> None:
    paths = make_tiles(pdata / "tiles", n=5, seed=7)
    plip = image_index.index_folder(pdata / "tiles", key="plip")
    sub = pdata / "subset"
    sub.mkdir()
    for p in paths[:2]:
        shutil.copy(p, sub / p.name)
    clip = image_index.index_folder(sub, key="clip_baseline")
    assert plip.collection != clip.collection
    assert "plip" in plip.collection and "clip_baseline" in clip.collection
    assert image_index.image_collection("plip").count() == 5
    assert image_index.image_collection("clip_baseline").count() == 2
    # Searching CLIP never returns an image only PLIP indexed.
    assert {h.id for h in image_search.search_text("tissue", k=10, key="clip_baseline")} == {_sha(p) for p in paths[:2]}

    # A different checkpoint (same architecture, new weights) gets a new, empty collection.
    moved = pdata / "plip-v2"
    shutil.copytree(use_tiny_models["MEDLAB_MODEL_PLIP"], moved)
    (moved / "model.safetensors").touch()
    monkeypatch.setenv("MEDLAB_MODEL_PLIP", str(moved))
    info = image_index.index_info("plip")
    assert info["collection"] != plip.collection and info["count"] == 0


def test_zero_shot_uses_each_models_logit_scale(pdata: Path) -> None:
    from PIL import Image

    tile = Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 48, 3), dtype="uint8"))
    out = zero_shot.zero_shot(tile)
    for key in ("plip", "clip_baseline"):
        probs = out[key]["probs"]
        assert out[key]["error"] is None and list(probs) == list(KATHER_CLASSES)
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    # PLIP's numbers recomputed directly with transformers.
    import os

    import torch
    from transformers import CLIPModel, CLIPProcessor

    d = os.environ["MEDLAB_MODEL_PLIP"]  # the tiny checkpoint the engine loaded
    model, proc = CLIPModel.from_pretrained(d).eval(), CLIPProcessor.from_pretrained(d)
    labels = ["fat", "tumour"]
    with torch.no_grad():
        prompts = [f"An H&E image of {label}." for label in labels]
        res = model(**proc(text=prompts, images=tile, return_tensors="pt", padding=True))
    expect = res.logits_per_image.softmax(-1)[0].tolist()
    got = zero_shot.zero_shot(tile, "fat, tumour", keys=("plip",))["plip"]["probs"]
    assert [got["fat"], got["tumour"]] == pytest.approx(expect, abs=1e-4)

    with pytest.raises(errors.InputError, match="at least two"):
        zero_shot.zero_shot(tile, "fat")
    with pytest.raises(errors.InputError, match="label"):
        zero_shot.zero_shot(tile, "a, b", template="An image of {thing}")


def test_clip_unavailable_plip_still_answers(pdata: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    monkeypatch.setenv("MEDLAB_MODEL_CLIP_BASELINE", str(pdata / "no-such-model"))
    out = zero_shot.zero_shot(Image.new("RGB", (40, 40), (200, 100, 150)), "a, b, c")
    assert sum(out["plip"]["probs"].values()) == pytest.approx(1.0, abs=1e-5)
    assert out["clip_baseline"]["probs"] is None and "does not exist" in out["clip_baseline"]["error"]


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("case", ["traversal", "absolute", "symlink", "bomb", "only_non_images", "not_zip"])
def test_bad_zips_are_refused_and_change_nothing(pdata: Path, case: str) -> None:
    tiles = make_tiles(pdata / "tiles", n=3, seed=11)
    image_index.index_folder(pdata / "tiles")
    col = image_index.image_collection("plip")
    before = sorted(col.get(include=[])["ids"])
    png = tiles[0].read_bytes()
    z = pdata / f"{case}.zip"
    if case == "traversal":
        _zip(z, {"ok.png": png, "../evil.png": png})
        expect = "unsafe path"
    elif case == "absolute":
        _zip(z, {"/tmp/evil.png": png})
        expect = "unsafe path"
    elif case == "symlink":
        with zipfile.ZipFile(z, "w") as zf:
            info = zipfile.ZipInfo("link.png")
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
        expect = "symbolic link"
    elif case == "bomb":
        _zip(z, {"huge.png": b"\0" * (40 * 1024 * 1024)})
        expect = "zip bomb"
    elif case == "only_non_images":
        _zip(z, {"readme.txt": b"hello", "data/table.json": b"{}"})
        expect = "No images found"
    else:
        z.write_bytes(b"PK not really a zip")
        expect = "not a zip"
    with pytest.raises(errors.InputError, match=expect):
        image_index.index_zip(z)
    assert sorted(col.get(include=[])["ids"]) == before
    assert not (pdata / "evil.png").exists() and not Path("/tmp/evil.png").exists()


def test_zip_upload_indexes_images_and_reports_skipped_files(pdata: Path) -> None:
    tiles = make_tiles(pdata / "tiles", n=3, seed=13)
    members = {f"set/{p.name}": p.read_bytes() for p in tiles}
    members["set/captions.csv"] = (pdata / "tiles" / "captions.csv").read_bytes()
    members["set/notes.docx"] = b"not an image"
    members["set/broken.png"] = b"\x89PNG\r\n\x1a\n garbage"
    report = image_index.index_zip(_zip(pdata / "upload.zip", members))
    assert report.added == 3 and report.total == 3
    skipped = dict(report.skipped)
    assert skipped["set/notes.docx"] == "not an image file"
    assert "set/broken.png" in skipped
    again = image_index.index_zip(pdata / "upload.zip")
    assert again.added == 0 and again.unchanged == 3


def test_build_script_indexes_a_local_folder(pdata: Path) -> None:
    from training.build_pathology_index import main

    make_tiles(pdata / "tiles", n=4, seed=17)
    assert main(["--folder", str(pdata / "tiles"), "--models", "plip,clip_baseline"]) == 0
    assert image_index.image_collection("plip").count() == 4
    assert image_index.image_collection("clip_baseline").count() == 4
    assert main(["--folder", str(pdata / "tiles"), "--models", "nope"]) == 2


def test_bundled_example_tiles_index_and_server_folders_are_restricted(pdata: Path) -> None:
    report = image_index.index_examples("plip")
    assert report.added == 4 and not report.skipped
    hit = image_search.search_text("colonic glands", k=1)[0]
    assert "immunohistochemistry" in hit.caption
    with pytest.raises(errors.InputError, match="outside the folders"):
        image_index.check_index_root("/etc")


def test_kill_9_during_indexing_leaves_a_resumable_index(pdata: Path) -> None:
    """A SIGKILL mid-run must not leave half state: the re-run completes the index exactly."""
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = pdata / "many"
    paths = make_tiles(folder, n=48, seed=23, size=32)
    script = (
        "import sys\n"
        "from medlab.retrieval.image_index import index_folder\n"
        "def progress(f, m):\n"
        "    print(m, flush=True)\n"
        "    if 'Encoded' in m: __import__('time').sleep(0.3)\n"
        f"index_folder({str(folder)!r}, batch_size=4, progress=progress)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ), cwd=Path(__file__).resolve().parent.parent)
    deadline = time.time() + 120
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("Encoded 12/") or time.time() > deadline:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    report = image_index.index_folder(folder)  # resumes
    assert report.total == 48 and 0 < report.unchanged < 48 and report.added == 48 - report.unchanged
    col = image_index.image_collection("plip")
    got = col.get(include=["metadatas"])
    assert sorted(got["ids"]) == sorted({_sha(p) for p in paths})
    assert all(Path(m["thumb"]).is_file() for m in got["metadatas"])


def test_open_clip_hub_source_loads_safetensors_from_the_hf_cache(
        use_tiny_models: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default (Hub) clip_baseline path: open_clip_config.json + open_clip_model.safetensors
    fetched with hf_hub_download (here served offline from a hand-made HF cache) and loaded as
    open_clip "local-dir"; a repo without safetensors is unavailable (never random weights)."""
    import torch

    from medlab.core.loaders import get_model, reset_cache
    from medlab.core.registry import get_spec

    repo = get_spec("clip_baseline").default_source
    tiny = Path(use_tiny_models["MEDLAB_MODEL_CLIP_BASELINE"])
    hub = tmp_path / "hub"
    snap = hub / f"models--{repo.replace('/', '--')}" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("a" * 40)
    shutil.copy(tiny / "open_clip_config.json", snap / "open_clip_config.json")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.delenv("MEDLAB_MODEL_CLIP_BASELINE")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(hub))

    with pytest.raises(errors.ModelUnavailableError, match="not in the local Hugging Face cache"):
        get_model("clip_baseline")  # config cached, weights missing: refused, not random weights
    reset_cache()
    shutil.copy(tiny / "open_clip_model.safetensors", snap / "open_clip_model.safetensors")
    lm = get_model("clip_baseline")
    from safetensors.torch import load_file

    expected = load_file(str(tiny / "open_clip_model.safetensors"))
    assert torch.equal(lm.model.state_dict()["text_projection"].cpu(), expected["text_projection"])

