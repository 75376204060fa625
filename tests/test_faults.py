"""Faults a deployment meets, each injected for real, with what the visitor sees and what is
left behind checked:

a) the chroma server is killed mid-session and started again on the same port and path;
b) the data dir's disk fills up (a size-capped tmpfs, mounted here: the test fails loudly if
   it cannot mount) during an index build and during an upload;
c) a model's weights file is truncated or has bytes flipped in its header, in a local model
   dir and in the Hugging Face cache (the local Hub stand-in);
d) SIGTERM to a served app while requests are in flight."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, hub_env
from tests.test_chroma_server import ROOT, Server, make_tiles, server  # noqa: F401 - the fixture

NOTES = ("02-abcde-rule.md", "03-risk-factors.md")


@pytest.fixture
def small_kb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from medlab.retrieval import documents

    kdir = tmp_path / "knowledge"
    kdir.mkdir()
    for name in NOTES:
        shutil.copy(ROOT / "knowledge" / name, kdir / name)
    monkeypatch.setattr(documents, "KNOWLEDGE_DIR", kdir)
    return kdir


def _fresh_store() -> None:
    from medlab.retrieval import image_index, knowledge_store
    from medlab.retrieval.vectorstore import reset_clients

    reset_clients()
    knowledge_store.reset_ready()
    image_index._NONEMPTY.clear()  # noqa: SLF001 - per-process memo of non-empty collections


# -- a) the chroma server goes away and comes back ------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_chroma_server_down_then_back_without_an_app_restart(server: Server, use_tiny_models: dict[str, str],  # noqa: F811
                                                             small_kb: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import gradio as gr

    from medlab.retrieval import image_index
    from medlab.retrieval.vectorstore import StoreUnavailableError
    from tabs.assistant import assistant_ask
    from tabs.pathology import pathology_search

    monkeypatch.setenv("MEDLAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MEDLAB_CHROMA_HOST", "127.0.0.1")
    monkeypatch.setenv("MEDLAB_CHROMA_PORT", str(server.port))
    _fresh_store()
    try:
        shas = make_tiles(tmp_path / "tiles", 6)
        image_index.index_folder(tmp_path / "tiles", batch_size=4)
        question = "What does the ABCDE rule stand for?"
        answer_before = assistant_ask(question)
        _, ids_before, _ = pathology_search("tumor epithelium", 3)
        assert answer_before[2]["citations"] and set(ids_before) <= set(shas) and len(ids_before) == 3

        server.kill()  # SIGKILL: the server vanishes mid-session
        for call in (lambda: assistant_ask(question), lambda: pathology_search("tumor epithelium", 3)):
            with pytest.raises(gr.Error) as err:
                call()
            msg = str(err.value.message)
            assert msg.startswith(f"Knowledge store unreachable (127.0.0.1:{server.port})"), msg
            assert "chroma run" in msg and "MEDLAB_CHROMA_HOST" in msg and "no app restart" in msg
            assert isinstance(err.value.__cause__, StoreUnavailableError)

        server.start()  # same port, same persist dir; the app process is the same
        assert assistant_ask(question) == answer_before
        _, ids_after, _ = pathology_search("tumor epithelium", 3)
        assert ids_after == ids_before
    finally:
        _fresh_store()


# -- b) the disk fills up ---------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs (as root; CI runs as root). No fallback: a test that cannot mount fails."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    assert got.returncode == 0, (f"cannot mount a size-capped tmpfs at {mnt} (uid {os.getuid()}): "
                                 f"{got.stderr.strip()}; the disk-full test needs root (or CAP_SYS_ADMIN)")
    try:
        yield mnt
    finally:
        _fresh_store()
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path) -> Path:
    """Write a filler file until the volume is full."""
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == 28, exc
    finally:
        os.close(fd)
    return filler


def _noise_tiles(folder: Path, n: int, seed: int = 11) -> set[str]:
    """n noise tiles: their JPEG thumbnails are ~33 KB each, so a 3 MiB volume less the 1 MiB
    reserve holds ~50."""
    import numpy as np
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(seed)
    shas = set()
    for i in range(n):
        p = folder / f"tile_{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, size=(192, 192, 3), dtype=np.uint8)).save(p)
        shas.add(hashlib.sha256(p.read_bytes()).hexdigest())
    return shas


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and (p.suffix in (".part", ".tmp") or p.name.startswith(".") and "part" in p.name))


@pytest.mark.timeout(300)
def test_disk_full_during_an_index_build_and_an_upload(small_disk: Path, use_tiny_models: dict[str, str],
                                                       small_kb: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import chromadb.errors

    from medlab.core.errors import DiskFullError
    from medlab.io import diskspace
    from medlab.retrieval import doc_records, image_index, image_search, knowledge_store, uploads
    from tests.test_replicas import PAGES, _make_pdf

    data = small_disk / "data"
    monkeypatch.setenv("MEDLAB_DATA_DIR", str(data))
    monkeypatch.delenv("MEDLAB_CHROMA_HOST", raising=False)
    _fresh_store()
    tiles = tmp_path / "tiles"
    shas = _noise_tiles(tiles, 72)

    # 1. the build overflows the volume: a clear message, not a stack trace
    full = r"^Disk full: \d+\.\d MB free under .*small-disk/data while indexing \d+ more images"
    with pytest.raises(DiskFullError, match=full):
        image_index.index_folder(tiles, batch_size=4)
    # 2. the store stays readable (a fresh client, as after a restart): whole rows, searchable
    _fresh_store()
    col = image_index.image_collection("plip")
    stored = set(col.get(include=[])["ids"])
    assert 0 < len(stored) < len(shas) and stored <= shas
    assert all(image_index.thumb_path(s).is_file() for s in stored)  # every row has its thumbnail
    assert len(image_search.search_text("tumor epithelium", k=5)) == min(5, len(stored))
    assert _leftovers(data) == []
    # 3. a bigger volume: the next run resumes (nothing encoded twice, nothing duplicated)
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    report = image_index.index_folder(tiles, batch_size=4)
    assert (report.added, report.unchanged, report.total) == (len(shas) - len(stored), len(stored), len(shas))
    assert sorted(image_index.image_collection("plip").get(include=[])["ids"]) == sorted(shas)

    # 4. an upload on a full disk: a clear message, no partial file, no record, no chunks
    knowledge_store.ensure_ingested()
    filler = _fill(small_disk)
    pdf = _make_pdf(tmp_path / "a.pdf", PAGES["a.pdf"])
    with pytest.raises(DiskFullError, match=r"^Disk full: 0\.0 MB free under .* while adding a\.pdf"):
        uploads.add_document(pdf)
    assert not any(uploads.uploads_dir().glob("*")), list(uploads.uploads_dir().glob("*"))
    assert _leftovers(data) == []
    assert "uploads/a.pdf" not in doc_records.read_all()
    # 5. without the reserve check, the writes themselves meet the full disk (chroma's InternalError,
    #    or ENOSPC on a thumbnail): the same message, and the batch's files leave
    monkeypatch.setattr(diskspace, "ensure_space", lambda where, need, doing: None)
    more = tmp_path / "more"
    more_shas = _noise_tiles(more, 3, seed=12)
    with pytest.raises(DiskFullError, match=r"^Disk full: 0\.0 MB free") as err:
        image_index.index_folder(more, batch_size=4)
    cause = err.value.__cause__  # whichever write came first: chroma's own (untyped) or a thumbnail's
    assert isinstance(cause, chromadb.errors.InternalError) or (isinstance(cause, OSError) and cause.errno == errno.ENOSPC)
    assert not any(image_index.thumb_path(s).exists() for s in more_shas) and _leftovers(data) == []

    filler.unlink()
    doc, report = uploads.add_document(pdf)  # space again: the same upload goes through
    assert doc == "uploads/a.pdf" and report.chunks_embedded == len(PAGES["a.pdf"])


# -- c) damaged weights -------------------------------------------------------------------------------
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])


def _flip_header(path: Path) -> None:
    """Flip bytes inside the JSON header (after the 8-byte length)."""
    data = bytearray(path.read_bytes())
    for i in range(9, 15):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip_header], ids=["truncated", "header-flipped"])
def test_damaged_weights_in_a_model_dir_are_refused_with_the_fix(damage, tiny_model_env: dict[str, str],
                                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gradio as gr
    import safetensors.torch
    from PIL import Image

    from medlab.core.errors import WeightsDamagedError
    from medlab.core.load_errors import translate
    from medlab.core.loaders import get_cache, get_model
    from medlab.core.registry import resolve_source
    from tabs.skin import skin_classify

    model_dir = tmp_path / "skin"
    shutil.copytree(tiny_model_env["MEDLAB_MODEL_SKIN"], model_dir)
    weights = model_dir / "model.safetensors"
    damage(weights)
    monkeypatch.setenv("MEDLAB_MODEL_SKIN", str(model_dir))
    with pytest.raises(WeightsDamagedError) as err:
        get_model("skin")
    msg = str(err.value)
    assert f"weights damaged: {weights.resolve()}" in msg and "`python -m medlab download skin`" in msg
    assert "MEDLAB_MODEL_SKIN points at" in msg  # a local folder: a download would not repair it
    assert get_cache().loaded_keys() == []
    # the UI shows the same message (a gr.Error, no stack trace)
    img = tmp_path / "x.png"
    Image.new("RGB", (64, 64), (180, 120, 100)).save(img)
    with pytest.raises(gr.Error) as ui:
        skin_classify(str(img))
    assert "weights damaged" in ui.value.message and "Traceback" not in ui.value.message
    # safetensors' own error class, should a loader read the file first, means the same
    with pytest.raises(Exception) as raw:  # noqa: PT011 - the class is checked right below
        safetensors.torch.load_file(str(weights))
    assert type(raw.value).__name__ == "SafetensorError"
    assert isinstance(translate(resolve_source("skin"), raw.value), WeightsDamagedError)


TRY_LOAD = r'''
import json, sys
from medlab.core.errors import ModelUnavailableError
from medlab.core.loaders import get_model
try:
    get_model("skin")
    print("RESULT" + json.dumps({"ok": True}))
except ModelUnavailableError as exc:
    print("RESULT" + json.dumps({"ok": False, "type": type(exc).__name__, "msg": str(exc)}))
'''


def _load_in_subprocess(env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", TRY_LOAD], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))[6:])


def test_damaged_weights_in_the_hub_cache_are_refused_and_download_repairs_them(hub_standin, tmp_path: Path) -> None:
    home = tmp_path / "hf"
    env = hub_env(hub_standin, home, MEDLAB_MODEL_SKIN="org/skin", MEDLAB_DATA_DIR=str(tmp_path / "data"))
    got = subprocess.run([sys.executable, "-m", "medlab", "download", "skin"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert got.returncode == 0 and "[ ok ] skin" in got.stdout, got.stdout + got.stderr
    [link] = (home / "hub" / "models--org--skin" / "snapshots").glob("*/model.safetensors")
    blob = link.resolve()
    good = blob.read_bytes()
    assert blob.name == hashlib.sha256(good).hexdigest()  # the Hub's etag names the blob
    _truncate(blob)

    offline = {**env, "HF_HUB_OFFLINE": "1"}
    out = _load_in_subprocess(offline)
    assert out["type"] == "WeightsDamagedError", out
    assert f"weights damaged: {blob}" in out["msg"] and "`python -m medlab download skin`" in out["msg"]

    again = subprocess.run([sys.executable, "-m", "medlab", "download", "skin"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "[fix ] skin: model.safetensors" in again.stdout and "[ ok ] skin" in again.stdout
    assert link.resolve().read_bytes() == good
    assert _load_in_subprocess(offline) == {"ok": True}
    # bytes flipped inside the tensor data keep the header whole: only the Hub's sha256 shows it
    data = bytearray(link.resolve().read_bytes())
    data[-10] ^= 0xFF
    link.resolve().write_bytes(bytes(data))
    third = subprocess.run([sys.executable, "-m", "medlab", "download", "skin"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert "sha256 differs" in third.stdout and link.resolve().read_bytes() == good, third.stdout


# -- d) SIGTERM with requests in flight ---------------------------------------------------------------
def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        try:
            if httpx.get(url + "config", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError("the app did not come up")


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_sigterm_finishes_in_flight_requests_and_leaves_nothing_half_written(tiny_model_env: dict[str, str],
                                                                             tmp_path: Path) -> None:
    import sqlite3

    import chromadb
    from gradio_client import Client, handle_file
    from gradio_client.utils import Status

    from tests.test_replicas import _make_pdf

    data = tmp_path / "data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDLAB_")}
    env.update(tiny_model_env)
    env.update(MEDLAB_DATA_DIR=str(data), MEDLAB_PATHOLOGY_SOURCE="off", MEDLAB_SHUTDOWN_GRACE_S="45",
               GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    log_path = tmp_path / "app.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_http(url, proc)
        client = Client(url, verbose=False, httpx_kwargs={"timeout": 120})
        pages = [f"Page {i}: the Okavango mole protocol step {i} uses a green calibration card." for i in range(40)]
        pdf = _make_pdf(tmp_path / "protocol.pdf", pages)
        upload = client.submit(handle_file(str(pdf)), api_name="/assistant_add_document")
        impression = client.submit("FINDINGS: The lungs are clear. No pleural effusion.", api_name="/impression")
        deadline = time.monotonic() + 120
        while upload.status().code != Status.PROCESSING:  # the upload is running in the app
            assert time.monotonic() < deadline and not upload.done(), upload.status()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert not upload.done()
        time.sleep(0.5)
        late = client.submit("FINDINGS: Heart size normal.", api_name="/impression")  # after SIGTERM: refused
        outcomes: dict[str, object] = {}

        def collect(name: str, job: object) -> None:
            try:
                outcomes[name] = ("ok", job.result(timeout=120))  # type: ignore[attr-defined]
            except Exception as exc:  # noqa: BLE001 - what the client saw is asserted below
                outcomes[name] = ("error", f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=collect, args=item) for item in
                   (("upload", upload), ("impression", impression), ("late", late))]
        for t in threads:
            t.start()
        rc = proc.wait(timeout=90)
        exited_after = time.monotonic() - sent
        for t in threads:
            t.join(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log_text = log_path.read_text()
    assert rc == 0, log_text[-3000:]
    assert exited_after < 60, exited_after
    assert "SIGTERM: finishing" in log_text and "Traceback" not in log_text, log_text[-3000:]
    # the request that was running finished (the grace period let it), and so did the waiting one
    assert outcomes["upload"][0] == "ok" and "protocol.pdf" in str(outcomes["upload"][1]), outcomes
    assert outcomes["impression"][0] == "ok", outcomes
    assert outcomes["late"][0] == "error", outcomes  # refused once the drain began
    # nothing half-written: no partial files; the sqlite store is intact; every document whole
    assert _leftovers(data) == []
    with sqlite3.connect(data / "chroma" / "chroma.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = chromadb.PersistentClient(path=str(data / "chroma"))
    [name] = [c.name for c in store.list_collections() if c.name.startswith("knowledge")]
    chunks: dict[str, list[int]] = {}
    for meta in store.get_collection(name, embedding_function=None).get(include=["metadatas"])["metadatas"]:
        chunks.setdefault(meta["doc"], []).append(int(meta["chunk"]))
    records = store.get_collection("kb_documents", embedding_function=None).get(include=["metadatas"])
    active = {i: m for i, m in zip(records["ids"], records["metadatas"], strict=True) if m["status"] == "active"}
    assert set(active) == set(chunks) and "uploads/protocol.pdf" in active
    for doc, meta in active.items():
        assert sorted(chunks[doc]) == list(range(meta["n_chunks"])), doc
    assert len(chunks["uploads/protocol.pdf"]) == len(pages)  # one short page, one chunk
