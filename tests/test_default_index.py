"""The self-building default pathology index, offline: local folder, zip and Hub-shaped parquet
sources through the same code path as the Hub one; resume after kill -9; bad sources."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from medlab.core.specs import KATHER_CLASSES
from medlab.retrieval import default_index
from medlab.retrieval.encoders import MODELS

CODES = ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")  # NCT-CRC-HE order


def he_tile(seed: int, size: int = 32) -> bytes:
    """An H&E-like PNG: pink eosin background with purple haematoxylin blobs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = np.empty((size, size, 3))
    arr[:] = (235, 170, 200)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(int(rng.integers(2, 6))):
        cy, cx, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(2, 6))]
        arr[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (90, 40, 140)
    arr = np.clip(arr + rng.normal(0, 12, arr.shape), 0, 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_folder(root: Path, n: int, seed: int = 0) -> dict[str, str]:
    """n tiles in Kather class folders; returns sha256 -> expected label text."""
    expected = {}
    for i in range(n):
        data = he_tile(seed * 1000 + i)
        code = CODES[i % len(CODES)]
        (root / code).mkdir(parents=True, exist_ok=True)
        (root / code / f"{code}-{i:04d}.png").write_bytes(data)
        expected[hashlib.sha256(data).hexdigest()] = KATHER_CLASSES[CODES.index(code)]
    return expected


def make_parquet(path: Path, n: int, corrupt: int | None = None, seed: int = 5) -> dict[str, str]:
    """A parquet file shaped like a `datasets` image set on the Hub: image {bytes, path} +
    label (ClassLabel int, names in the `huggingface` schema metadata)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images, labels, expected = [], [], {}
    for i in range(n):
        data = b"\x89PNG\r\n\x1a\n not really" if i == corrupt else he_tile(seed * 1000 + i)
        images.append({"bytes": data, "path": f"{CODES[i % 9]}-{i:04d}.tif"})
        labels.append(i % 9)
        if i != corrupt:
            expected[hashlib.sha256(data).hexdigest()] = KATHER_CLASSES[i % 9]
    hf_meta = {"info": {"features": {"image": {"_type": "Image"},
                                     "label": {"names": list(CODES), "_type": "ClassLabel"}}}}
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("label", pa.int64())], metadata={"huggingface": json.dumps(hf_meta)})
    pq.write_table(pa.Table.from_pydict({"image": images, "label": labels}, schema=schema), path)
    return expected


@pytest.fixture
def ddata(use_tiny_models: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from medlab.retrieval.vectorstore import reset_clients

    monkeypatch.setenv("MEDLAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MEDLAB_PATHOLOGY_SOURCE", raising=False)
    monkeypatch.delenv("MEDLAB_PATHOLOGY_MAX_TILES", raising=False)
    reset_clients()
    yield tmp_path
    default_index.cancel()
    reset_clients()


def stored(key: str) -> dict[str, dict]:
    from medlab.retrieval.image_index import image_collection

    got = image_collection(key).get(include=["metadatas"])
    assert len(got["ids"]) == len(set(got["ids"]))
    return dict(zip(got["ids"], got["metadatas"]))


def assert_whole(ids_by_model: dict[str, dict]) -> None:
    """Every vector has its thumbnail and every thumbnail a vector; no temp files left."""
    from medlab.retrieval.image_index import thumbs_dir

    all_ids = set().union(*ids_by_model.values())
    for rows in ids_by_model.values():
        for sha, meta in rows.items():
            assert Path(meta["thumb"]).is_file() and Path(meta["thumb"]).stem == sha
    thumbs = {p.stem for p in thumbs_dir().rglob("*.jpg")}
    assert thumbs == all_ids
    assert not list(thumbs_dir().rglob("*.part"))


def test_a_local_folder_becomes_a_searchable_index_by_itself(ddata: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medlab.retrieval.image_search import search_text

    expected = make_folder(ddata / "tiles", 20)
    monkeypatch.setenv("MEDLAB_PATHOLOGY_SOURCE", str(ddata / "tiles"))
    default_index.start_background()  # what app start-up does
    deadline = time.time() + 240
    while default_index.status().state not in default_index.FINAL and time.time() < deadline:
        time.sleep(0.2)
    st = default_index.status()
    assert st.state == "done", st
    assert (st.done, st.total, st.failed) == (20, 20, 0)
    rows = {key: stored(key) for key in MODELS}
    for key in MODELS:
        assert set(rows[key]) == set(expected)
        assert {sha: m["label"] for sha, m in rows[key].items()} == expected
        assert st.added[key] == 20
    assert_whole(rows)
    hits = search_text("tumor epithelium", k=5)
    assert len(hits) == 5 and all(h.id in expected for h in hits)
    # A restart with the same setting finds the stamp and reads no tile again.
    again = default_index.build()
    assert again.state == "done" and again.message == "Already built." and again.done == 20
    assert "20 tiles" in " ".join(default_index.doctor_lines())


def test_hub_shaped_parquet_with_a_corrupt_tile_and_a_cap(ddata: Path) -> None:
    expected = make_parquet(ddata / "crc.parquet", 12, corrupt=3)
    st = default_index.build(str(ddata / "crc.parquet"), max_tiles=12, keys=("plip",))
    assert st.state == "done" and st.failed == 1 and st.done == 12 and st.added["plip"] == 11
    assert "skipped 1 that could not be decoded" in st.line()
    rows = stored("plip")
    assert {sha: m["label"] for sha, m in rows.items()} == expected
    assert_whole({"plip": rows})

    capped = make_parquet(ddata / "more.parquet", 9, seed=9)
    st = default_index.build(str(ddata / "more.parquet"), max_tiles=4, keys=("plip",))
    assert st.state == "done" and st.total == 4 and st.added["plip"] == 4
    assert len(set(stored("plip")) & set(capped)) == 4


def test_zip_source_and_duplicates_are_indexed_once(ddata: Path) -> None:
    tile = he_tile(42)
    with zipfile.ZipFile(ddata / "tiles.zip", "w") as zf:
        zf.writestr("TUM/a.png", tile)
        zf.writestr("TUM/copy.png", tile)
        zf.writestr("MUC/b.png", he_tile(43))
        zf.writestr("readme.txt", b"not an image")
    st = default_index.build(str(ddata / "tiles.zip"), keys=("plip",))
    assert st.state == "done" and st.duplicates == 1 and st.added["plip"] == 2
    labels = sorted(m["label"] for m in stored("plip").values())
    assert labels == ["colorectal adenocarcinoma epithelium", "mucus"]


def test_off_does_nothing(ddata: Path) -> None:
    st = default_index.build("off")
    assert st.state == "off" and "off" in st.line()
    assert not (ddata / "data" / "pathology").exists()
    assert not (ddata / "data" / "chroma").exists()


@pytest.mark.parametrize("case", ["missing", "not_images_parquet", "empty_folder", "hub_offline", "garbage"])
def test_bad_sources_say_why_and_what_to_do(ddata: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if case == "missing":
        value, expect = str(ddata / "nowhere"), "no such file or folder"
    elif case == "not_images_parquet":
        pq.write_table(pa.table({"text": ["a", "b"], "score": [1, 2]}), ddata / "t.parquet")
        value, expect = str(ddata / "t.parquet"), "not an image set: no `image` column"
    elif case == "empty_folder":
        (ddata / "empty").mkdir()
        (ddata / "empty" / "notes.txt").write_text("x")
        value, expect = str(ddata / "empty"), "holds no images"
    elif case == "hub_offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        value, expect = "1aurent/NCT-CRC-HE", "HF_HUB_OFFLINE"
    else:
        value, expect = "not a source!", "neither a Hub dataset id"
    monkeypatch.setenv("MEDLAB_PATHOLOGY_SOURCE", value)
    st = default_index.build()
    assert st.state == "error" and expect in st.message and "MEDLAB_PATHOLOGY_SOURCE" in st.message
    assert expect in st.line()
    assert any(expect in line for line in default_index.doctor_lines()) or case == "hub_offline"
    assert not (ddata / "data" / "pathology" / "thumbs").exists()


def test_kill_9_mid_build_resumes_without_duplicates_or_half_tiles(ddata: Path) -> None:
    expected = make_parquet(ddata / "crc.parquet", 40, seed=11)
    script = (
        "import time\n"
        "from medlab.retrieval import default_index\n"
        "def progress(f, m):\n"
        "    print(m, flush=True)\n"
        "    time.sleep(0.3)\n"
        f"default_index.build({str(ddata / 'crc.parquet')!r}, batch_size=4, progress=progress)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ), cwd=Path(__file__).resolve().parent.parent)
    deadline = time.time() + 180
    assert proc.stdout is not None
    for line in proc.stdout:
        if " 12 of 40" in line or time.time() > deadline:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    partial = {key: set(stored(key)) for key in MODELS}
    assert 0 < len(partial["plip"]) < 40

    st = default_index.build(str(ddata / "crc.parquet"), batch_size=4)
    assert st.state == "done" and st.done == 40 and st.failed == 0
    rows = {key: stored(key) for key in MODELS}
    for key in MODELS:
        assert set(rows[key]) == set(expected)  # exactly once each (ids are unique per collection)
        assert st.added[key] == 40 - len(partial[key])  # only what was missing was encoded
    assert_whole(rows)


def test_prepare_command_builds_and_says_so(ddata: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from medlab.__main__ import main

    expected = make_folder(ddata / "tiles", 6, seed=3)
    monkeypatch.setenv("MEDLAB_PATHOLOGY_SOURCE", str(ddata / "tiles"))
    assert main(["prepare"]) == 0
    out = capsys.readouterr().out
    assert "done, 6 of 6 tiles" in out
    assert set(stored("plip")) == set(expected) and set(stored("clip_baseline")) == set(expected)
    monkeypatch.setenv("MEDLAB_PATHOLOGY_SOURCE", str(ddata / "nowhere"))
    assert main(["prepare"]) == 1
    assert "no such file or folder" in capsys.readouterr().out


def test_tab_poll_shows_progress_and_stops_ticking_when_done(ddata: Path) -> None:
    import tabs.pathology as tab

    make_folder(ddata / "tiles", 4, seed=4)
    with default_index._LOCK:  # a build caught half-way, as the timer would see it
        default_index._STATUS = default_index.BuildStatus(state="running", source="folder x", done=5, total=20,
                                                          rate=2.5, eta_s=6.0)
    text, _, timer = tab.poll_default_index()
    assert "5 of 20 tiles, 2.5 tiles/s, about 6 s left" in text and "`[#####..." in text
    assert timer.active is True
    default_index.build(str(ddata / "tiles"), keys=("plip",))
    text, index_text, timer = tab.poll_default_index()
    assert "done, 4 of 4 tiles" in text and timer.active is False
    assert "**4** images" in index_text


def test_hub_source_reads_matching_shards_and_translates_hub_errors(
        ddata: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HubParquetSource through huggingface_hub's own calls, answered locally: it lists the
    dataset's files, downloads only the shards matching the pattern, and turns the library's
    exception classes into messages with a fix."""
    import huggingface_hub
    from huggingface_hub import errors as hf_errors

    from medlab.retrieval.tile_sources import HubParquetSource, TileSourceError

    shard_a = make_parquet(ddata / "a.parquet", 5, seed=21)
    shard_b = make_parquet(ddata / "b.parquet", 4, seed=22)
    files = {"data/CRC_VAL_HE_7K-00000-of-00002.parquet": ddata / "a.parquet",
             "data/CRC_VAL_HE_7K-00001-of-00002.parquet": ddata / "b.parquet",
             "data/NCT_CRC_HE_100K-00000-of-00031.parquet": ddata / "nope.parquet", "README.md": ddata / "x"}
    fetched: list[str] = []

    def download(repo: str, name: str, repo_type: str | None = None, **_: object) -> str:
        assert (repo, repo_type) == ("owner/crc", "dataset")
        fetched.append(name)
        return str(files[name])

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo, repo_type=None: list(files))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    st = default_index.build("owner/crc:data/CRC_VAL_HE_7K-*.parquet", keys=("plip",))
    assert st.state == "done" and st.done == 9 and st.total == 9
    assert fetched == ["data/CRC_VAL_HE_7K-00000-of-00002.parquet", "data/CRC_VAL_HE_7K-00001-of-00002.parquet"]
    assert set(stored("plip")) == set(shard_a) | set(shard_b)

    def gated(self: object, repo: str, repo_type: str | None = None) -> list[str]:
        import httpx

        request = httpx.Request("GET", "https://hub.invalid/api/datasets/owner/crc")
        raise hf_errors.GatedRepoError("gated", response=httpx.Response(403, request=request))

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", gated)
    with pytest.raises(TileSourceError, match="is gated.*hf auth login"):
        HubParquetSource("owner/crc")
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo, repo_type=None: ["README.md"])
    st = default_index.build("owner/crc", keys=("plip",))
    assert st.state == "error" and "not an image set" in st.message


@pytest.mark.browser
def test_screenshot_of_the_tab_while_the_index_builds(ddata: Path, monkeypatch: pytest.MonkeyPatch,
                                                      use_tiny_models: dict[str, str]) -> None:
    """The live app with a local source on a fresh data dir: the tab shows n of N, rate and time
    left while tiles arrive, and search already answers from the tiles indexed so far."""
    from playwright.sync_api import sync_playwright

    from tests.browser_support import ARGS, chromium_path
    from tests.conftest import ARTIFACTS, serve_app
    from tests.test_browser import _click_visible, _open_tab, _wait_text

    make_folder(ddata / "tiles", 320, seed=8)
    slow = default_index._index_batch

    def slowly(*args: object, **kwargs: object) -> None:  # slow enough to watch it build
        slow(*args, **kwargs)
        time.sleep(0.8)

    monkeypatch.setattr(default_index, "_index_batch", slowly)
    env = {"MEDLAB_PATHOLOGY_SOURCE": str(ddata / "tiles"), "MEDLAB_DATA_DIR": str(ddata / "data")}
    shots = ARTIFACTS / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with serve_app(env) as url, sync_playwright() as p:
        default_index.start_background()  # what app.main does before launch
        browser = p.chromium.launch(executable_path=chromium_path(), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_selector("[role=tab]", timeout=30_000)
            _open_tab(page, "Pathology search")
            _wait_text(page, "tiles/s")
            _click_visible(page, "button", "lymphocytes")
            _click_visible(page, "button", "Search")
            _wait_text(page, "best matches for")
            text = page.locator("body").inner_text()
            assert "of 320 tiles" in text and "left" in text
            page.wait_for_timeout(1500)  # let the gallery thumbnails load
            assert default_index.status().state == "running"  # the shot shows a build in progress
            page.screenshot(path=str(shots / "pathology_building.png"), full_page=False)
        finally:
            browser.close()
            default_index.cancel()


def test_a_model_that_cannot_load_is_reported_and_the_other_still_builds(
        ddata: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = make_folder(ddata / "tiles", 5, seed=6)
    monkeypatch.setenv("MEDLAB_MODEL_CLIP_BASELINE", str(ddata / "no-such-model"))
    st = default_index.build(str(ddata / "tiles"))
    assert st.state == "done" and st.added["plip"] == 5 and st.added.get("clip_baseline", 0) == 0
    assert "clip_baseline" in st.model_errors and "General CLIP (baseline) not indexed" in st.line()
    assert_whole({"plip": stored("plip")})
    assert set(stored("plip")) == set(expected)
