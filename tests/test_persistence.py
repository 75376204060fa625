"""Persistence under crashes: SIGKILL a knowledge ingest mid-way, restart, check the store.

A subprocess ingests a folder of 24 documents into the same MEDLAB_DATA_DIR as this test and
is killed with SIGKILL part-way. Then, as after a restart: every stored document is whole
(all its chunks, once), nothing indexed before the crash is lost (including a document whose
new version was still waiting when the process died), and a re-run resumes: it embeds only
what is missing and ends with exactly the documents on disk.

kill -9 during IMAGE indexing is covered by
tests/test_pathology.py::test_kill_9_during_indexing_leaves_a_resumable_index."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from medlab.retrieval import documents
from medlab.retrieval import knowledge_store as kstore

ROOT = Path(__file__).resolve().parent.parent
N_DOCS = 24
TOPICS = ["sunscreen", "dermoscopy", "biopsy", "staging", "follow-up", "immunotherapy", "nevi", "screening"]


def _doc_text(i: int, version: int = 1) -> str:
    topic = TOPICS[i % len(TOPICS)]
    body = []
    for s in range(3):
        sentences = " ".join(
            f"Note {i}.{s}.{k} (v{version}) about {topic}: students record finding number {i * 100 + s * 10 + k} "
            f"and compare it with the teaching atlas before discussing it with the tutor."
            for k in range(4)
        )
        body.append(f"## Section {s} on {topic}\n\n{sentences}\n")
    return f"# Teaching note {i:02d}: {topic}\n\n" + "\n".join(body)


def _doc(path: Path) -> str:
    return f"knowledge/{path.name}"  # doc id of a file in the knowledge folder


def _file(kdir: Path, doc: str) -> Path:
    return kdir / Path(doc).name


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _state(col: Any) -> dict[str, Any]:
    got = col.get(include=["metadatas"])
    ids, metas = got["ids"], got["metadatas"]
    per: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for m in metas:
        per[(m["doc"], m["doc_hash"])].append(m)
    return {"ids": ids, "per": per}


def _assert_whole(state: dict[str, Any]) -> None:
    ids = state["ids"]
    assert len(ids) == len(set(ids)), "duplicate chunk ids"
    for (doc, _hash), metas in state["per"].items():
        chunks = Counter(m["chunk"] for m in metas)
        assert all(n == 1 for n in chunks.values()), f"{doc}: a chunk stored twice"
        assert len(metas) == metas[0]["n_chunks"], f"{doc}: half a document ({len(metas)}/{metas[0]['n_chunks']} chunks)"
        assert sorted(chunks) == list(range(metas[0]["n_chunks"])), f"{doc}: chunk numbers with gaps"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    from medlab.retrieval.vectorstore import reset_clients

    data, kdir = tmp_path / "data", tmp_path / "knowledge"
    kdir.mkdir()
    monkeypatch.setenv("MEDLAB_DATA_DIR", str(data))
    monkeypatch.setattr(documents, "KNOWLEDGE_DIR", kdir)
    reset_clients()
    kstore.reset_ready()
    yield data, kdir
    reset_clients()
    kstore.reset_ready()


def _restart() -> None:
    """What a restart drops for the store: chroma clients and the 'ingested' memo (the
    embedder stays loaded: it holds no state about the store, and reloading costs time)."""
    from medlab.retrieval.vectorstore import reset_clients

    reset_clients()
    kstore.reset_ready()


def test_kill_9_during_knowledge_ingest_keeps_documents_whole_and_resumes(store: tuple[Path, Path]) -> None:
    data, kdir = store
    # 1. six documents indexed before the crash
    first = [kdir / f"{i:02d}-note.md" for i in range(6)]
    for i, p in enumerate(first):
        p.write_text(_doc_text(i))
    report = kstore.ingest()
    assert sorted(report.added) == sorted(_doc(p) for p in first)
    before = _state(kstore.collection())
    before_docs = {doc for doc, _ in before["per"]}
    # 2. 18 more, and a new version of note 05 (its old version must survive the crash)
    for i in range(6, N_DOCS):
        (kdir / f"{i:02d}-note.md").write_text(_doc_text(i))
    (kdir / "05-note.md").write_text(_doc_text(5, version=2))
    _restart()

    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from medlab.retrieval import documents, knowledge_store\n"
        "documents.KNOWLEDGE_DIR = Path(sys.argv[1])\n"
        "knowledge_store.ingest(progress=lambda f, m: print(m, flush=True))\n"
        "print('FINISHED', flush=True)\n"
    )
    env = dict(os.environ, MEDLAB_DATA_DIR=str(data), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", script, str(kdir)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    assert proc.stdout is not None
    deadline = time.time() + 180
    seen = []
    for line in proc.stdout:
        seen.append(line.strip())
        if "(8/" in line or time.time() > deadline:  # mid-way: embedding the 8th of 19
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not any(s.startswith("FINISHED") for s in seen), "the ingest finished before the kill"

    # 3. after the crash: whole documents only, nothing previously indexed lost
    _restart()
    crashed = _state(kstore.collection())
    _assert_whole(crashed)
    crashed_docs = {doc for doc, _ in crashed["per"]}
    assert before_docs <= crashed_docs, f"lost in the crash: {before_docs - crashed_docs}"
    for key in before["per"]:
        if key[0] != "knowledge/05-note.md":
            assert key in crashed["per"], f"{key[0]} changed although its file did not"
    assert 6 <= len(crashed_docs) < N_DOCS

    # 4. resume: only what is missing is embedded; the store matches the folder exactly
    report = kstore.ingest()
    assert not report.failed
    assert len(report.unchanged) + len(report.added) + len(report.updated) == N_DOCS
    complete_before = {doc for (doc, h) in crashed["per"] if h == _sha(_file(kdir, doc))}
    assert set(report.unchanged) == complete_before, "a whole document was embedded again"
    final = _state(kstore.collection())
    _assert_whole(final)
    docs = Counter(doc for doc, _ in final["per"])
    assert set(docs) == {_doc(p) for p in kdir.glob("*.md")}
    assert all(n == 1 for n in docs.values()), "a document is stored in two versions"
    for (doc, h) in final["per"]:
        assert h == _sha(_file(kdir, doc)), f"{doc}: stale version kept"
    # and a restarted process sees the same, complete store
    _restart()
    assert kstore.collection().count() == sum(len(m) for m in final["per"].values())
    assert kstore.ingest().unchanged and not kstore.ingest().chunks_embedded
