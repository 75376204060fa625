"""The one chromadb client factory used by the knowledge assistant and the image index.

Embedded PersistentClient under <MEDLAB_DATA_DIR>/chroma by default; a chroma server
(HttpClient) when MEDLAB_CHROMA_HOST/PORT are set. Collections always use cosine space with
the HNSW settings of HNSW_DEFAULTS, and never chromadb's default embedding function (it would
download a model): callers pass their own embeddings."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medlab.core.config import load_settings
from medlab.core.errors import MedlabError, ServiceUnreachableError, exception_chain

log = logging.getLogger(__name__)

_CLIENTS: dict[tuple[str, ...], Any] = {}
_LOCK = threading.Lock()
_NAME_OK = re.compile(r"[^a-zA-Z0-9._-]+")


class VectorStoreError(MedlabError, RuntimeError):
    """The vector store (embedded or server) cannot be used."""


class StoreUnavailableError(VectorStoreError, ServiceUnreachableError):
    """The chroma server stopped answering (not running, restarting, network down). Writes are
    keyed by content, so repeating the operation once it is back resumes where it stopped."""


def _where() -> str:
    key = _client_key()
    return f"the chroma server {key[1]}:{key[2]}" if key[0] == "http" else f"the store at {key[1]}"


def _lost_connection(exc: BaseException) -> BaseException | None:
    """httpx's transport error on the exception's cause/context chain (chromadb's HttpClient
    raises it as is, or as a ValueError raised while handling it), by class."""
    import httpx

    return next((e for e in exception_chain(exc) if isinstance(e, httpx.TransportError)), None)


def _unavailable(doing: str, lost: BaseException) -> StoreUnavailableError:
    key = _client_key()
    return StoreUnavailableError(
        f"Knowledge store unreachable ({key[1]}:{key[2]}): {_where()} did not answer while {doing} "
        f"({type(lost).__name__}). Fix: start or restart it (`chroma run --path DIR --host HOST --port PORT`) and "
        "check MEDLAB_CHROMA_HOST/MEDLAB_CHROMA_PORT; then repeat the action (no app restart needed): what was "
        "stored is kept and the rest resumes."
    )


@contextmanager
def store_errors(doing: str) -> Iterator[None]:
    """Translate a lost connection (httpx's transport errors, raised by chromadb's HttpClient)
    into StoreUnavailableError with what was being done and how to go on. The cached client is
    dropped, so the next call connects afresh (a server that came back works again without an
    app restart)."""
    try:
        yield
    except VectorStoreError:
        raise
    except Exception as exc:
        lost = _lost_connection(exc)
        if lost is None:
            raise
        with _LOCK:
            _CLIENTS.pop(_client_key(), None)
        raise _unavailable(doing, lost) from exc


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
            lost = _lost_connection(exc) if key[0] == "http" else None
            if lost is not None:
                raise _unavailable("connecting", lost) from exc
            where = f"the chroma server {key[1]}:{key[2]}" if key[0] == "http" else f"the store at {key[1]}"
            fix = ("check MEDLAB_CHROMA_HOST/MEDLAB_CHROMA_PORT and that the server runs"
                   if key[0] == "http" else "check that MEDLAB_DATA_DIR is writable")
            raise VectorStoreError(f"Could not open {where} ({type(exc).__name__}: {exc}). Fix: {fix}.") from exc
        _CLIENTS[key] = client
        return client


def reset_clients() -> None:
    """Close and forget the cached clients (tests simulate a restart with this). Closing
    releases an embedded store's SQLite connections: a client opened on the same path
    afterwards would otherwise find the database locked by the old one."""
    with _LOCK:
        clients = list(_CLIENTS.values())
        _CLIENTS.clear()
    for client in clients:
        try:
            client.close()
        except Exception as exc:  # noqa: BLE001 - a client without close(), or a server already gone
            log.debug("closing a chroma client: %s", exc)
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


# HNSW settings every collection is created with (persisted by chroma with the collection).
# chroma's defaults (max_neighbors 16, ef_construction 100, ef_search 100) give recall@8 well
# under 0.95 at 100k 512-d vectors; a denser graph and a wider beam buy it back for a few ms.
# The beam is 256, not 128: at 1M rows 128 left single queries with none of their true
# neighbours found (bench/results.md, section 4).
HNSW_DEFAULTS: dict[str, Any] = {"space": "cosine", "max_neighbors": 32, "ef_construction": 128, "ef_search": 256}


def hnsw_configuration(**overrides: Any) -> dict[str, Any]:
    """The `configuration` new collections get: HNSW_DEFAULTS with `overrides` applied."""
    unknown = set(overrides) - set(HNSW_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown HNSW setting(s) {sorted(unknown)}; valid: {sorted(HNSW_DEFAULTS)}")
    return {"hnsw": {**HNSW_DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}}}


def get_collection(name: str, metadata: dict[str, Any] | None = None, ef_search: int | None = None,
                   **hnsw: Any) -> Any:
    """Get or create a cosine-space collection with no embedding function of its own.

    A new collection gets HNSW_DEFAULTS (with `hnsw` overrides: max_neighbors, ef_construction);
    those are fixed at creation. `ef_search` (the search beam) can change later, so it is also
    applied to an existing collection: the given value, or at least the default one. chroma
    uses a changed ef_search when it next loads the index, i.e. from this process's first query
    on (an index a process already holds keeps its beam until the client is reopened)."""
    client = get_client()
    config = hnsw_configuration(ef_search=ef_search, **hnsw)
    try:
        with store_errors(f"opening collection {name!r}"):
            col = client.get_or_create_collection(name=name, metadata=metadata or None, configuration=config,
                                                  embedding_function=None)
        current = (getattr(col, "configuration", None) or {}).get("hnsw") or {}
        want = ef_search if ef_search is not None else HNSW_DEFAULTS["ef_search"]
        # an explicit ef_search always applies; otherwise a store made with a narrower beam
        # (chroma's default, before these settings) is widened to the default
        if current.get("ef_search") != want and (ef_search is not None or (current.get("ef_search") or 0) < want):
            with store_errors(f"setting ef_search on {name!r}"):
                col.modify(configuration={"hnsw": {"ef_search": int(want)}})
        return col
    except VectorStoreError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise VectorStoreError(f"Could not open collection {name!r} ({type(exc).__name__}: {exc}).") from exc


def max_batch(collection: Any, default: int = 5000) -> int:
    """Rows per write that the collection's own client accepts (an embedded store: ~5k, bound
    by SQLite's variable limit; a server says what it allows)."""
    try:
        limit = int(collection._client.get_max_batch_size())  # noqa: SLF001 - the client that owns it
    except Exception:  # noqa: BLE001 - a client without the call, or a server that is down
        return default
    return max(1, limit) if limit > 0 else default


def upsert(
    collection: Any,
    ids: Sequence[str],
    embeddings: Any,
    metadatas: Sequence[dict[str, Any]],
    documents: Sequence[str] | None = None,
) -> None:
    """Upsert in store-sized batches. Ids are content hashes, so a crashed run that is
    re-run overwrites the same rows instead of duplicating them."""
    import numpy as np

    n = len(ids)
    vecs = np.asarray(embeddings, dtype=np.float32)  # chroma takes the array as is: no lists of floats
    step = max_batch(collection)
    for i in range(0, n, step):
        kwargs: dict[str, Any] = {
            "ids": list(ids[i : i + step]),
            "embeddings": vecs[i : i + step],
            "metadatas": list(metadatas[i : i + step]),
        }
        if documents is not None:
            kwargs["documents"] = list(documents[i : i + step])
        with store_errors(f"storing rows {i + 1}-{min(n, i + step)} of {n}"):
            collection.upsert(**kwargs)


def existing_ids(collection: Any, ids: Sequence[str]) -> set[str]:
    """Which of `ids` are already stored."""
    found: set[str] = set()
    ids = list(ids)
    step = max_batch(collection)
    for i in range(0, len(ids), step):
        with store_errors("checking which rows are stored"):
            got = collection.get(ids=ids[i : i + step], include=[])
        found.update(got["ids"])
    return found


def model_fingerprint(key: str) -> str:
    """Short hash of where model `key`'s weights come from (location, revision, and for a
    local dir the weight files' names, sizes and mtimes). It goes into collection names so
    embeddings of a changed model never mix with the old ones."""
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
