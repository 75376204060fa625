"""The one chromadb client factory used by the knowledge assistant and the image index.

Embedded PersistentClient under <MEDLAB_DATA_DIR>/chroma by default; a chroma server
(HttpClient) when MEDLAB_CHROMA_HOST/PORT are set. Collections always use cosine space and
never chromadb's default embedding function (it would download a model): callers pass their
own embeddings."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medlab.core.config import load_settings
from medlab.core.errors import MedlabError

log = logging.getLogger(__name__)

_CLIENTS: dict[tuple[str, ...], Any] = {}
_LOCK = threading.Lock()
_NAME_OK = re.compile(r"[^a-zA-Z0-9._-]+")


class VectorStoreError(MedlabError, RuntimeError):
    """The vector store (embedded or server) cannot be used."""


def _client_key() -> tuple[str, ...]:
    s = load_settings()
    if s.chroma_host:
        return ("http", s.chroma_host, str(s.chroma_port))
    return ("local", str((s.data_dir / "chroma").resolve()))


def get_client() -> Any:
    """The chromadb client for the current settings (one per location per process)."""
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    key = _client_key()
    with _LOCK:
        client = _CLIENTS.get(key)
        if client is not None:
            return client
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        chroma_settings = ChromaSettings(anonymized_telemetry=False)
        try:
            if key[0] == "http":
                client = chromadb.HttpClient(host=key[1], port=int(key[2]), settings=chroma_settings)
            else:
                path = key[1]
                os.makedirs(path, exist_ok=True)
                client = chromadb.PersistentClient(path=path, settings=chroma_settings)
        except Exception as exc:  # noqa: BLE001 - reported with its cause and the fix
            where = f"the chroma server {key[1]}:{key[2]}" if key[0] == "http" else f"the store at {key[1]}"
            fix = ("check MEDLAB_CHROMA_HOST/MEDLAB_CHROMA_PORT and that the server runs"
                   if key[0] == "http" else "check that MEDLAB_DATA_DIR is writable")
            raise VectorStoreError(f"Could not open {where} ({type(exc).__name__}: {exc}). Fix: {fix}.") from exc
        _CLIENTS[key] = client
        return client


def reset_clients() -> None:
    """Forget the cached clients (tests simulate a restart with this)."""
    with _LOCK:
        _CLIENTS.clear()
    try:  # chromadb also caches one System per path; clear it so a new client re-reads disk
        from chromadb.api.shared_system_client import SharedSystemClient

        SharedSystemClient.clear_system_cache()
    except Exception:  # noqa: BLE001 - older/newer chromadb without this hook
        pass


def collection_name(*parts: str) -> str:
    """A valid chroma collection name (3-512 chars of [a-zA-Z0-9._-], alnum at both ends)."""
    raw = "-".join(p for p in parts if p)
    name = _NAME_OK.sub("-", raw).strip("-._")
    if len(name) > 120:  # keep names readable; the hash keeps them unique
        name = name[:100].rstrip("-._") + "-" + hashlib.sha256(raw.encode()).hexdigest()[:12]
    return name if len(name) >= 3 else (name + "-col")


def file_sha256(path: Path) -> str:
    """Content hash of a file, streamed: the id both stores give a document or image, so
    re-adding the same bytes adds nothing."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def get_collection(name: str, metadata: dict[str, Any] | None = None, ef_search: int | None = None) -> Any:
    """Get or create a cosine-space collection with no embedding function of its own.

    `ef_search` widens HNSW's search beam (chroma's default is 100) where recall matters more
    than microseconds; it is applied to existing collections too."""
    client = get_client()
    meta = {"hnsw:space": "cosine", **(metadata or {})}
    try:
        col = client.get_or_create_collection(name=name, metadata=meta, embedding_function=None)
        if ef_search is not None:
            hnsw = (getattr(col, "configuration", None) or {}).get("hnsw") or {}
            if hnsw.get("ef_search") != ef_search:
                col.modify(configuration={"hnsw": {"ef_search": int(ef_search)}})
        return col
    except Exception as exc:  # noqa: BLE001
        raise VectorStoreError(f"Could not open collection {name!r} ({type(exc).__name__}: {exc}).") from exc


def delete_collection(name: str) -> bool:
    client = get_client()
    try:
        client.delete_collection(name)
        return True
    except Exception:  # noqa: BLE001 - not there
        return False


def list_collection_names() -> list[str]:
    client = get_client()
    out = []
    for c in client.list_collections():
        out.append(c if isinstance(c, str) else c.name)
    return out


def max_batch(collection: Any, default: int = 1000) -> int:
    try:
        return max(1, min(default, int(get_client().get_max_batch_size())))
    except Exception:  # noqa: BLE001 - HttpClient without the call
        return default


def upsert(
    collection: Any,
    ids: Sequence[str],
    embeddings: Any,
    metadatas: Sequence[dict[str, Any]],
    documents: Sequence[str] | None = None,
) -> None:
    """Upsert in store-sized batches. Ids are content hashes, so a crashed run that is
    re-run overwrites the same rows instead of duplicating them."""
    n = len(ids)
    step = max_batch(collection)
    for i in range(0, n, step):
        kwargs: dict[str, Any] = {
            "ids": list(ids[i : i + step]),
            "embeddings": [list(map(float, e)) for e in embeddings[i : i + step]],
            "metadatas": list(metadatas[i : i + step]),
        }
        if documents is not None:
            kwargs["documents"] = list(documents[i : i + step])
        collection.upsert(**kwargs)


def existing_ids(collection: Any, ids: Sequence[str]) -> set[str]:
    """Which of `ids` are already stored."""
    found: set[str] = set()
    ids = list(ids)
    for i in range(0, len(ids), 500):
        got = collection.get(ids=ids[i : i + 500], include=[])
        found.update(got["ids"])
    return found


def model_fingerprint(key: str) -> str:
    """Short hash of where model `key`'s weights come from (location, revision, and for a
    local dir the weight files' names, sizes and mtimes). It goes into collection names so
    embeddings of a changed model never mix with the old ones."""
    from pathlib import Path

    from medlab.core.registry import resolve_source

    source = resolve_source(key)
    h = hashlib.sha256(f"{source.location}|{source.revision or ''}".encode())
    if source.is_local:
        root = Path(source.location)
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".json"):
                st = p.stat()
                h.update(f"{p.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:10]
