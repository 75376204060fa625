"""Which documents the knowledge base holds: one record per document in the store itself
(collection `kb_documents`), so every replica sharing a chroma server sees the same list.

A record's id is the document id (`knowledge/<file>` or `uploads/<file>`); its metadata:
  sha256    content hash of the stored version
  version   1, 2, ... (+1 at each content change)
  kind      "bundled" (knowledge/ of a release) or "upload" (a PDF an educator added)
  release   the medlab version that wrote a bundled document (newer releases win)
  replica   the replica that wrote this version (MEDLAB_REPLICA_ID or the data dir's own id)
  time      when (seconds since the epoch)
  status    "active", or "removed" (a tombstone: an explicit removal, kept so that no replica
            brings the document back from its own folder)
  n_chunks  the chunk count of this version
  reason    for a tombstone: "explicit" (remove_document) or "release" (a release dropped it)
A record is written only after all chunks of its version are stored (default embedder).

Records carry a constant 1-d vector: chroma stores rows with an embedding, and these rows are
only ever read by id or listed, never searched."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import uuid
from typing import Any

from medlab.core.config import load_settings

log = logging.getLogger(__name__)

RECORDS = "kb_documents"
ACTIVE, REMOVED = "active", "removed"
BUNDLED, UPLOAD = "bundled", "upload"
REPLICA_ENV = "MEDLAB_REPLICA_ID"
_REPLICA_FILE = "replica_id"


def replica_id() -> str:
    """MEDLAB_REPLICA_ID, else an id made once per data dir (hostname + random) and kept in
    <MEDLAB_DATA_DIR>/replica_id, so a restarted replica keeps its id."""
    env = os.environ.get(REPLICA_ENV, "").strip()
    if env:
        return env
    path = load_settings().data_dir / _REPLICA_FILE
    try:
        value = path.read_text().strip()
        if value:
            return value
    except OSError:
        pass
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", socket.gethostname())[:40] + "-" + uuid.uuid4().hex[:8]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{_REPLICA_FILE}.{os.getpid()}")
        tmp.write_text(value + "\n")
        os.replace(tmp, path)
    except OSError as exc:  # a read-only data dir: the id lives as long as the process
        log.warning("could not keep the replica id under %s: %s", path, exc)
    return value


def release() -> str:
    from medlab import __version__

    return __version__


def _release_key(value: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", value or "0"))


def newer_release(a: str, b: str) -> bool:
    """Is release `a` newer than release `b`?"""
    return _release_key(a) > _release_key(b)


def kind_of(doc: str) -> str:
    return UPLOAD if doc.startswith("uploads/") else BUNDLED


def records_collection() -> Any:
    from medlab.retrieval.vectorstore import get_collection

    return get_collection(RECORDS, metadata={"medlab:kind": "knowledge-records"})


def read_all(col: Any | None = None) -> dict[str, dict[str, Any]]:
    """doc -> record metadata (tombstones included)."""
    from medlab.retrieval.vectorstore import store_errors

    col = col or records_collection()
    with store_errors("reading the document records"):
        got = col.get(include=["metadatas"])
    return {i: dict(m or {}) for i, m in zip(got["ids"], got["metadatas"] or [], strict=False)}


def read(doc: str, col: Any | None = None) -> dict[str, Any] | None:
    from medlab.retrieval.vectorstore import store_errors

    col = col or records_collection()
    with store_errors(f"reading the record of {doc}"):
        got = col.get(ids=[doc], include=["metadatas"])
    return dict(got["metadatas"][0]) if got["ids"] else None


def write(doc: str, sha256: str, n_chunks: int, previous: dict[str, Any] | None, status: str = ACTIVE,
          col: Any | None = None, reason: str = "") -> dict[str, Any]:
    """Upsert the record of `doc` (version +1 when the content changed)."""
    from medlab.retrieval.vectorstore import store_errors

    col = col or records_collection()
    version = int((previous or {}).get("version") or 0)
    if not previous or previous.get("sha256") != sha256 or previous.get("status") != status:
        version += 1
    meta = {"doc": doc, "sha256": sha256, "version": max(1, version), "kind": kind_of(doc),
            "release": release(), "replica": replica_id(), "time": time.time(), "status": status,
            "n_chunks": int(n_chunks), "reason": reason}
    with store_errors(f"writing the record of {doc}"):
        col.upsert(ids=[doc], embeddings=[[1.0]], metadatas=[meta])
    return meta
