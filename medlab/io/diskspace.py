"""A full disk, recognised from the exception classes and codes the libraries raise (OSError's
errno ENOSPC/EDQUOT, sqlite3's SQLITE_FULL) or, for a store whose own error class does not
say why (chromadb's Rust core reports "database or disk is full" as a generic error), from
the free space actually left on the volume, never from message text."""

from __future__ import annotations

import errno
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medlab.core.errors import DiskFullError, MedlabError, ServiceUnreachableError, exception_chain

# Below this much free space, a failed write on the volume counts as "disk full".
LOW_SPACE_BYTES = 2 * 2**20
# Writers (index batches, uploads) leave this much free: chroma's embedded store needs room
# to apply its log when it is next opened, and on a disk filled to the last byte even reading
# it fails ("Failed to apply logs to the metadata segment") until space is freed.
STORE_RESERVE_BYTES = 2**20
_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_SQLITE_FULL = 13


def free_bytes(where: Path) -> int | None:
    p = Path(where)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def is_disk_full(exc: BaseException, where: Path) -> bool:
    for e in exception_chain(exc):
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        if isinstance(e, sqlite3.Error) and getattr(e, "sqlite_errorcode", None) == _SQLITE_FULL:
            return True
    free = free_bytes(where)
    return free is not None and free < LOW_SPACE_BYTES


def disk_full_error(where: Path, doing: str) -> DiskFullError:
    free = free_bytes(where)
    left = f"{(free or 0) / 2**20:.1f} MB free" if free is not None else "no free space"
    return DiskFullError(
        f"Disk full: {left} under {where} while {doing} (the app keeps {STORE_RESERVE_BYTES / 2**20:.0f} MB free "
        "for the store). Nothing half-written was kept and what was stored "
        "before stays readable. Fix: free space on that volume (or give MEDLAB_DATA_DIR a larger one), "
        "then repeat the action: it resumes where it stopped."
    )


def ensure_space(where: Path, need: int, doing: str) -> None:
    """DiskFullError before writing `need` bytes under `where` if that would leave less than
    STORE_RESERVE_BYTES free."""
    free = free_bytes(where)
    if free is not None and free - need < STORE_RESERVE_BYTES:
        raise disk_full_error(where, doing)


def raise_if_disk_full(exc: BaseException, where: Path, doing: str) -> None:
    if not isinstance(exc, DiskFullError) and is_disk_full(exc, where):
        raise disk_full_error(where, doing) from exc


@contextmanager
def disk_errors(where: Path, doing: str) -> Iterator[None]:
    """Re-raise a failure inside the block as DiskFullError when the disk under `where` is full."""
    try:
        yield
    except DiskFullError:
        raise
    except MedlabError as exc:
        if exc.__cause__ is not None and not isinstance(exc, ServiceUnreachableError):
            raise_if_disk_full(exc, where, doing)
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised unless the disk is full
        raise_if_disk_full(exc, where, doing)
        raise
