"""Two app replicas share one real `chroma run` server but NOT a data dir (separate
MEDLAB_DATA_DIRs, as two Spaces or two containers have): neither loses the other's documents.

Each replica is a worker process (`python -m tests.test_replicas worker ...`) that the test
steps through (both replicas at once); a new run of processes is a restart of both:
 1. R1 uploads a.pdf, R2 uploads b.pdf;
 2. both restart and run a full ingest (the one each runs at its first use);
 3. both upload the same c.pdf at the same moment;
 4. both restart and run a full ingest again (run 3).
Then every document (two bundled notes, a, b, c) has chunks 0..n-1 exactly once, with n the
page count for the PDFs (each page is one short chunk: the test writes them) and the chunker's
count for the notes; each record names its content hash (hashlib here) and its uploader.
 5. (still run 3) R1 removes R2's b.pdf explicitly: its chunks are gone for both; R2's full re-ingest (it
    still has b.pdf in its own folder) does not bring it back; R2's listing no longer shows it;
 6. R2 uploads b.pdf again (an explicit upload): it is back, once."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.test_chroma_server import ROOT, Server, _env, server  # noqa: F401 - the fixture

NOTES = ("02-abcde-rule.md", "03-risk-factors.md")
PAGES = {
    "a.pdf": [f"Replica one page {i}: the Okavango mole protocol step {i} uses a green card." for i in range(3)],
    "b.pdf": [f"Replica two page {i}: the Zambezi lesion log entry {i} records the date and size." for i in range(4)],
    "c.pdf": [f"Shared page {i}: the Limpopo dermoscopy drill number {i} is done twice a week." for i in range(2)],
}


# -- the replica process -----------------------------------------------------------------------
def worker(argv: list[str]) -> int:
    """python -m tests.test_replicas worker KNOWLEDGE_DIR CONTROL_DIR NAME STEP... where a STEP is
    ACTION[:ARG] (ACTION: upload, ingest, remove, wait). Before each step the worker waits for
    CONTROL_DIR/go-<i> (the test writes it, after checking the store); after it, it writes
    CONTROL_DIR/<NAME>-<i>.json."""
    kdir, control, name, *steps = argv
    from medlab.retrieval import doc_records, documents, knowledge_store, uploads

    documents.KNOWLEDGE_DIR = Path(kdir)
    for i, step in enumerate(steps):
        action, _, arg = step.partition(":")
        while not (Path(control) / f"go-{i}").exists():  # both replicas act at the same moment
            time.sleep(0.02)
        result: dict[str, object] = {"replica": doc_records.replica_id()}
        if action == "upload":
            doc, report = uploads.add_document(arg)
            result.update(doc=doc, added=report.added, unchanged=report.unchanged)
        elif action == "ingest":
            report = knowledge_store.ingest()
            result.update(added=report.added, removed=report.removed, skipped=report.skipped, failed=report.failed)
        elif action == "remove":
            result["deleted"] = knowledge_store.remove_document(arg)
        result["listed"] = knowledge_store.knowledge_summary()["documents"]
        out = Path(control) / f"{name}-{i}.json"
        tmp = out.with_suffix(".part")
        tmp.write_text(json.dumps(result))
        tmp.replace(out)
    return 0


# -- the test side ------------------------------------------------------------------------------
def _make_pdf(path: Path, pages: list[str]) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for body in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, body)
    pdf.output(str(path))
    return path


class Run:
    """One process per replica (a start, or a restart when the previous run has ended);
    `step()` releases the next step of every process at once and returns their results."""

    def __init__(self, tmp: Path, env: dict[str, str], kdir: Path, label: str,
                 plans: dict[int, list[str]]) -> None:
        self.control = tmp / f"control-{label}"
        self.control.mkdir()
        self.i = 0
        self.procs = {}
        for replica, steps in plans.items():
            self.procs[replica] = subprocess.Popen(
                [sys.executable, "-m", "tests.test_replicas", "worker", str(kdir), str(self.control), f"r{replica}",
                 *steps],
                cwd=ROOT, env={**env, "MEDLAB_DATA_DIR": str(tmp / f"data-{replica}")},
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.plans = plans

    def step(self) -> dict[int, dict]:
        (self.control / f"go-{self.i}").write_text("")
        deadline = time.monotonic() + 240
        results = {}
        for replica, proc in self.procs.items():
            if len(self.plans[replica]) <= self.i:
                continue
            out = self.control / f"r{replica}-{self.i}.json"
            while not out.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise AssertionError(proc.communicate()[0][-3000:])
                time.sleep(0.05)
            results[replica] = json.loads(out.read_text())
        self.i += 1
        return results

    def end(self) -> None:
        for proc in self.procs.values():
            log, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, log[-3000:]


def _store(port: int) -> tuple[dict[str, Counter], dict[str, dict]]:
    """(doc -> Counter of chunk indices, doc -> record), read with a plain HttpClient."""
    import chromadb

    client = chromadb.HttpClient(host="127.0.0.1", port=port)
    [name] = [c.name for c in client.list_collections() if c.name.startswith("knowledge")]
    got = client.get_collection(name, embedding_function=None).get(include=["metadatas"])
    assert len(got["ids"]) == len(set(got["ids"]))
    chunks: dict[str, Counter] = {}
    for meta in got["metadatas"]:
        chunks.setdefault(meta["doc"], Counter())[int(meta["chunk"])] += 1
    recs = client.get_collection("kb_documents", embedding_function=None).get(include=["metadatas"])
    return chunks, dict(zip(recs["ids"], recs["metadatas"], strict=True))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_replicas_without_a_shared_volume_keep_every_document(server: Server,  # noqa: F811
                                                              tiny_model_env: dict[str, str], tmp_path: Path) -> None:
    from medlab.retrieval import documents

    kdir = tmp_path / "knowledge"
    kdir.mkdir()
    for name in NOTES:
        shutil.copy(ROOT / "knowledge" / name, kdir / name)
    pdfs = {name: _make_pdf(tmp_path / name, pages) for name, pages in PAGES.items()}
    expected = {f"uploads/{name}": len(pages) for name, pages in PAGES.items()}
    expected.update({f"knowledge/{n}": len(documents.chunk_document(f"knowledge/{n}", kdir / n)) for n in NOTES})
    env = _env(server, tiny_model_env)
    a, b, c = (str(pdfs[n]) for n in ("a.pdf", "b.pdf", "c.pdf"))

    first = Run(tmp_path, env, kdir, "first", {1: [f"upload:{a}"], 2: [f"upload:{b}"]})
    r = first.step()
    first.end()
    assert (r[1]["doc"], r[2]["doc"]) == ("uploads/a.pdf", "uploads/b.pdf")
    id1, id2 = r[1]["replica"], r[2]["replica"]
    assert id1 != id2
    # both restart: a full ingest each (concurrently), then the same c.pdf at the same moment
    second = Run(tmp_path, env, kdir, "second", {1: ["ingest", f"upload:{c}"], 2: ["ingest", f"upload:{c}"]})
    r = second.step()
    assert r[1]["removed"] == r[2]["removed"] == [] and not r[1]["failed"] and not r[2]["failed"]
    r = second.step()
    second.end()
    assert r[1]["doc"] == r[2]["doc"] == "uploads/c.pdf"
    # both restart again: full ingests; then R1 removes b, R2 re-ingests, R2 uploads b again
    third = Run(tmp_path, env, kdir, "third", {1: ["ingest", "remove:uploads/b.pdf"],
                                                2: ["ingest", "wait", "ingest", f"upload:{b}"]})
    r = third.step()
    assert r[1]["replica"] == id1 and r[2]["replica"] == id2  # a restart keeps its replica id
    assert r[1]["removed"] == r[2]["removed"] == [] and not r[1]["failed"] and not r[2]["failed"]

    chunks, records = _store(server.port)
    assert set(chunks) == set(expected)
    for doc, n in expected.items():
        assert n > 0 and chunks[doc] == Counter(range(n)), (doc, chunks[doc])  # 0..n-1, each once
        assert records[doc]["status"] == "active" and records[doc]["n_chunks"] == n
    assert records["uploads/a.pdf"]["sha256"] == _sha(pdfs["a.pdf"]) and records["uploads/a.pdf"]["replica"] == id1
    assert records["uploads/b.pdf"]["sha256"] == _sha(pdfs["b.pdf"]) and records["uploads/b.pdf"]["replica"] == id2
    assert records["uploads/c.pdf"]["sha256"] == _sha(pdfs["c.pdf"]) and records["uploads/c.pdf"]["version"] == 1
    assert records["knowledge/02-abcde-rule.md"]["sha256"] == _sha(kdir / "02-abcde-rule.md")
    for replica in (1, 2):  # each replica lists every document, its own folder notwithstanding
        assert r[replica]["listed"] == sorted(expected)
    assert not (tmp_path / "data-1" / "knowledge_uploads" / "b.pdf").exists()  # R1 never had b.pdf

    # an explicit removal holds for everyone; R2's own copy does not bring it back
    r = third.step()
    assert r[1]["deleted"] == expected["uploads/b.pdf"]
    r = third.step()
    assert "uploads/b.pdf" in r[2]["skipped"] and "uploads/b.pdf" not in r[2]["listed"]
    assert (tmp_path / "data-2" / "knowledge_uploads" / "b.pdf").exists()
    chunks, records = _store(server.port)
    assert "uploads/b.pdf" not in chunks and records["uploads/b.pdf"]["status"] == "removed"
    assert records["uploads/b.pdf"]["replica"] == id1 and records["uploads/b.pdf"]["reason"] == "explicit"
    for doc in set(expected) - {"uploads/b.pdf"}:
        assert chunks[doc] == Counter(range(expected[doc]))

    # an explicit upload brings it back, once
    r = third.step()
    third.end()
    assert r[2]["doc"] == "uploads/b.pdf" and r[2]["added"] == ["uploads/b.pdf"]
    chunks, records = _store(server.port)
    assert chunks["uploads/b.pdf"] == Counter(range(expected["uploads/b.pdf"]))
    assert records["uploads/b.pdf"]["status"] == "active" and records["uploads/b.pdf"]["replica"] == id2


def test_a_store_without_records_is_migrated_and_embedded_mode_follows_the_same_rules(
        tmp_path: Path, use_tiny_models: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Embedded store (no server): chunks written before document records get a record at the
    next ingest without re-embedding; a bundled note this release no longer ships is removed
    (tombstone reason "release") and comes back when the file does; an upload is never removed
    because the folder lost the file; `python -m medlab kb remove` removes it."""
    from medlab.retrieval import doc_records, documents, knowledge_store, uploads
    from medlab.retrieval.vectorstore import get_client, reset_clients

    kdir = tmp_path / "knowledge"
    kdir.mkdir()
    for name in NOTES:
        shutil.copy(ROOT / "knowledge" / name, kdir / name)
    monkeypatch.setenv("MEDLAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(documents, "KNOWLEDGE_DIR", kdir)
    reset_clients()
    knowledge_store.reset_ready()
    try:
        doc, _ = uploads.add_document(_make_pdf(tmp_path / "a.pdf", PAGES["a.pdf"]))
        get_client().delete_collection(doc_records.RECORDS)  # a store from before records
        reset_clients()
        report = knowledge_store.ingest()
        assert report.chunks_embedded == 0 and sorted(report.unchanged) == sorted([doc] + [f"knowledge/{n}" for n in NOTES])
        records = doc_records.read_all()
        assert records[doc]["sha256"] == _sha(tmp_path / "a.pdf") and records[doc]["status"] == "active"

        (documents.uploads_dir() / "a.pdf").unlink()  # the folder lost the upload: it stays
        (kdir / NOTES[1]).rename(tmp_path / NOTES[1])  # this "release" no longer ships note 03
        report = knowledge_store.ingest()
        assert report.removed == [f"knowledge/{NOTES[1]}"]
        records = doc_records.read_all()
        assert records[doc]["status"] == "active" and records[f"knowledge/{NOTES[1]}"]["reason"] == "release"
        assert knowledge_store.knowledge_summary()["documents"] == sorted([doc, f"knowledge/{NOTES[0]}"])
        col = knowledge_store.collection()
        assert len(col.get(where={"doc": doc}, include=[])["ids"]) == len(PAGES["a.pdf"])

        (tmp_path / NOTES[1]).rename(kdir / NOTES[1])
        back = knowledge_store.ingest()
        assert back.added == [f"knowledge/{NOTES[1]}"], back

        from medlab.__main__ import main  # the CLI: `python -m medlab kb list|remove DOC`

        assert main(["kb", "remove", doc]) == 0
        assert main(["kb", "list"]) == 0
        listed = capsys.readouterr().out
        assert f"removed {doc} ({len(PAGES['a.pdf'])} chunks)" in listed
        assert f"removed  v2 {doc}" in listed and f"active   v1 knowledge/{NOTES[0]}" in listed
        assert col.get(where={"doc": doc}, include=[])["ids"] == []
    finally:
        reset_clients()
        knowledge_store.reset_ready()


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    sys.exit(worker(sys.argv[2:]))
