"""Scale-out against a real chroma server: `chroma run` from the pinned package on 127.0.0.1,
and app processes (python subprocesses importing the engine with MEDLAB_CHROMA_HOST/PORT set)
sharing it.

1. Two processes ingest the same knowledge base and index the same tile folder at the same
   time: every chunk and tile is stored exactly once (ids and counts computed here with
   hashlib and the chunker's own count per document), and both processes answer.
2. The server is killed (SIGKILL) in the middle of an index build and restarted on the same
   path: the app raises StoreUnavailableError (translated from httpx's transport errors,
   naming the server and the fix), and repeating the build resumes: the rows stored before
   the kill are kept, only the rest is encoded, nothing is lost.

Run this file alone with `python -m pytest tests/test_chroma_server.py`; the worker half is
`python -m tests.test_chroma_server worker ...`, started by the tests."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTES = ("02-abcde-rule.md", "03-risk-factors.md", "07-prevention-early-detection.md")


# -- the app process ---------------------------------------------------------------------------
def worker(argv: list[str]) -> int:
    """python -m tests.test_chroma_server worker MODE KNOWLEDGE_DIR TILES_DIR CONTROL_DIR OUT.json"""
    mode, kdir, tiles, control, out = argv
    control_dir = Path(control)
    go = control_dir / "go"
    while not go.exists():  # both processes start their work at the same moment
        time.sleep(0.02)

    from medlab.retrieval import documents, image_index, image_search, knowledge_store
    from medlab.retrieval.vectorstore import StoreUnavailableError

    result: dict[str, object] = {"pid": os.getpid()}
    if mode == "both":
        documents.KNOWLEDGE_DIR = Path(kdir)
        rep = knowledge_store.ensure_ingested()
        result["ingest"] = {"added": rep.added, "unchanged": rep.unchanged, "chunks_embedded": rep.chunks_embedded}
        idx = image_index.index_folder(tiles, batch_size=4)
        result["index"] = {"added": idx.added, "unchanged": idx.unchanged, "total": idx.total}
        result["answer"] = [p.doc for p in knowledge_store.retrieve("What does the ABCDE rule stand for?", k=3)]
        result["search"] = [h.id for h in image_search.search_text("tumor epithelium", k=5)]
    else:  # "interrupted": stop after two batches until the test has killed the server
        seen: list[str] = []

        def progress(fraction: float, message: str) -> None:
            seen.append(message)
            if message.startswith("Encoded 8/") and not (control_dir / "killed").exists():
                (control_dir / "stored-8").write_text("")
                while not (control_dir / "killed").exists():
                    time.sleep(0.02)

        try:
            image_index.index_folder(tiles, batch_size=4, progress=progress)
            result["first"] = "finished without an error"
        except StoreUnavailableError as exc:
            result["error"] = {"type": type(exc).__name__, "message": str(exc),
                               "cause": type(exc.__cause__).__name__}
        (control_dir / "reported").write_text("")
        deadline = time.monotonic() + 90
        while True:  # what a user does: press "index" again once the server is back
            try:
                idx = image_index.index_folder(tiles, batch_size=4)
                break
            except StoreUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        result["resumed"] = {"added": idx.added, "unchanged": idx.unchanged, "total": idx.total}
    Path(out).write_text(json.dumps(result))
    return 0


# -- the test side ------------------------------------------------------------------------------
def _chroma_bin() -> str:
    exe = Path(sys.executable).parent / "chroma"
    assert exe.exists(), f"the pinned chromadb package's CLI is missing: {exe}"
    return str(exe)


class Server:
    def __init__(self, path: Path, port: int, log: Path) -> None:
        self.path, self.port, self.log = path, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        import httpx

        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [_chroma_bin(), "run", "--path", str(self.path), "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/api/v2/heartbeat", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("chroma server did not start:\n" + self.log.read_text()[-2000:])

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    from tests.conftest import free_port

    srv = Server(tmp_path / "chroma-server", free_port(), tmp_path / "chroma.log")
    srv.start()
    yield srv
    srv.kill()


def make_tiles(folder: Path, n: int) -> dict[str, str]:
    """n distinct PNG tiles (plus one byte-identical copy); returns sha256 -> file name."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    shas = {}
    for i in range(n):
        arr = rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
        p = folder / f"tile_{i:03d}.png"
        Image.fromarray(arr).save(p)
        shas[hashlib.sha256(p.read_bytes()).hexdigest()] = p.name
    shutil.copy(folder / "tile_000.png", folder / "copy_of_tile_000.png")
    return shas


def _start_workers(mode: str, n: int, env: dict[str, str], kdir: Path, tiles: Path, control: Path,
                   tmp: Path) -> list[tuple[subprocess.Popen[str], Path]]:
    procs = []
    for i in range(n):
        out = tmp / f"worker-{i}.json"
        data = tmp / f"data-{i}"  # per-process: model cache, thumbnails, uploads
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.test_chroma_server", "worker", mode, str(kdir), str(tiles), str(control),
             str(out)],
            cwd=ROOT, env={**env, "MEDLAB_DATA_DIR": str(data)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        procs.append((proc, out))
    return procs


def _env(server: Server, tiny_model_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDLAB_")}
    env.update(tiny_model_env)
    env.update({"MEDLAB_CHROMA_HOST": "127.0.0.1", "MEDLAB_CHROMA_PORT": str(server.port), "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False", "OMP_NUM_THREADS": "1",
                "PYTHONPATH": str(ROOT)})
    return env


def _collection_rows(port: int, prefix: str) -> dict[str, dict]:
    """id -> metadata of the one collection whose name starts with `prefix`, read with a
    separate plain HttpClient (not the app's code)."""
    import chromadb

    client = chromadb.HttpClient(host="127.0.0.1", port=port)
    names = [c.name for c in client.list_collections() if c.name.startswith(prefix)]
    assert len(names) == 1, names
    got = client.get_collection(names[0], embedding_function=None).get(include=["metadatas"])
    assert len(got["ids"]) == len(set(got["ids"]))
    return dict(zip(got["ids"], got["metadatas"]))


def test_hnsw_settings_are_set_at_creation_and_persist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Embedded store: a new collection carries the app's HNSW settings after a restart; a
    collection made with chroma's defaults gets its search beam widened; batches follow the
    collection's own client; numpy embeddings round-trip."""
    import chromadb
    import numpy as np

    from medlab.retrieval import vectorstore

    monkeypatch.setenv("MEDLAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MEDLAB_CHROMA_HOST", raising=False)
    vectorstore.reset_clients()
    col = vectorstore.get_collection("tuned-col")
    vecs = np.random.default_rng(0).standard_normal((7, 16)).astype(np.float32)
    vectorstore.upsert(col, [f"r{i}" for i in range(7)], vecs, [{"i": i} for i in range(7)])
    # an "old" store, made the way chroma makes it by default
    old = vectorstore.get_client().create_collection("old-col", embedding_function=None)
    assert old.configuration["hnsw"]["ef_search"] == 100
    vectorstore.reset_clients()  # a restart: settings must come back from disk

    client = chromadb.PersistentClient(path=str(tmp_path / "data" / "chroma"))
    hnsw = client.get_collection("tuned-col", embedding_function=None).configuration["hnsw"]
    assert (hnsw["space"], hnsw["max_neighbors"], hnsw["ef_construction"], hnsw["ef_search"]) == ("cosine", 32, 128, 256)
    assert vectorstore.get_collection("old-col").configuration["hnsw"]["ef_search"] == 256
    col = vectorstore.get_collection("tuned-col")
    got = col.get(ids=["r3"], include=["embeddings"])
    assert np.allclose(got["embeddings"][0], vecs[3])
    assert vectorstore.max_batch(col) == client.get_max_batch_size() > 1000
    assert vectorstore.existing_ids(col, ["r1", "zz", "r6"]) == {"r1", "r6"}
    vectorstore.reset_clients()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_app_processes_share_one_chroma_server(server: Server, tiny_model_env: dict[str, str],
                                                   tmp_path: Path) -> None:
    from medlab.retrieval import documents

    kdir = tmp_path / "knowledge"
    kdir.mkdir()
    for name in NOTES:
        shutil.copy(ROOT / "knowledge" / name, kdir / name)
    tiles = tmp_path / "tiles"
    shas = make_tiles(tiles, 24)
    control = tmp_path / "control"
    control.mkdir()
    procs = _start_workers("both", 2, _env(server, tiny_model_env), kdir, tiles, control, tmp_path)
    (control / "go").write_text("")
    results = []
    for proc, out in procs:
        log, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, log[-3000:]
        results.append(json.loads(out.read_text()))

    # Knowledge: every chunk of every document once, each document complete.
    chunks = _collection_rows(server.port, "knowledge")
    want = {}
    for name in NOTES:
        digest = hashlib.sha256((kdir / name).read_bytes()).hexdigest()
        doc = hashlib.sha256(f"knowledge/{name}".encode()).hexdigest()[:16]  # ids per (document, version, chunk)
        n = len(documents.chunk_document(f"knowledge/{name}", kdir / name))
        want.update({f"{doc}-{digest[:24]}-{i}": name for i in range(n)})
    assert set(chunks) == set(want)
    # Tiles: one row per distinct image content (the byte-identical copy is the same row).
    rows = _collection_rows(server.port, "pathology-plip")
    assert set(rows) == set(shas)
    # Both processes did the work concurrently (idempotent writes), and both answer.
    assert sum(r["ingest"]["chunks_embedded"] for r in results) >= len(want)
    for r in results:
        assert r["index"]["total"] == len(shas)
        assert r["answer"] and r["answer"][0].endswith("02-abcde-rule.md"), r["answer"]
        assert len(r["search"]) == 5 and set(r["search"]) <= set(shas)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_server_killed_mid_index_is_reported_and_the_build_resumes(server: Server, tiny_model_env: dict[str, str],
                                                                   tmp_path: Path) -> None:
    tiles = tmp_path / "tiles"
    shas = make_tiles(tiles, 20)
    control = tmp_path / "control"
    control.mkdir()
    [(proc, out)] = _start_workers("interrupted", 1, _env(server, tiny_model_env), tmp_path, tiles, control,
                                   tmp_path)
    (control / "go").write_text("")
    deadline = time.monotonic() + 180
    while not (control / "stored-8").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    server.kill()
    (control / "killed").write_text("")
    while not (control / "reported").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    server.start()
    log, _ = proc.communicate(timeout=150)
    assert proc.returncode == 0, log[-3000:]
    result = json.loads(out.read_text())

    err = result["error"]
    assert err["type"] == "StoreUnavailableError"
    assert err["cause"] in ("ConnectError", "ReadError", "RemoteProtocolError", "WriteError")
    assert f"chroma server 127.0.0.1:{server.port}" in err["message"] and "MEDLAB_CHROMA_HOST" in err["message"]
    # The 8 tiles stored before the kill survived the restart and were not encoded again.
    assert result["resumed"] == {"added": len(shas) - 8, "unchanged": 8, "total": len(shas)}
    assert set(_collection_rows(server.port, "pathology-plip")) == set(shas)


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    sys.exit(worker(sys.argv[2:]))
