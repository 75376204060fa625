"""Safe zip handling for anything a visitor uploads (image index, "teach a classifier").

An archive is checked as a whole BEFORE anything is extracted, and refused as a whole when it
could write outside its folder (absolute paths, drive letters, `..`), holds symbolic links, is
encrypted, or is a decompression bomb (too many members, too large once expanded, or an
expansion ratio no image archive has). Extraction then re-checks every target path and stops a
member that inflates beyond the size it declared.

    with zipfile.ZipFile(path) as zf:
        members = safe_members(zf, "upload.zip")          # raises UnsafeArchiveError
    files = extract_safely(path, dest_dir, "upload.zip")   # check + extract in one call
"""

from __future__ import annotations

import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

from medlab.core.errors import InputError, UnsupportedFileError

__all__ = ["ArchiveLimits", "DEFAULT_LIMITS", "UnsafeArchiveError", "extract_safely", "safe_members"]


class UnsafeArchiveError(UnsupportedFileError):
    """A zip that could write outside its folder, holds links, is encrypted, or is a bomb."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 20_000
    max_total_bytes: int = 2 * 1024**3
    max_ratio: int = 200  # uncompressed / compressed, per member (above 1 MiB) and overall (above 16 MiB)


DEFAULT_LIMITS = ArchiveLimits()
_DRIVE = re.compile(r"^[A-Za-z]:")


def safe_members(zf: zipfile.ZipFile, name: str, limits: ArchiveLimits = DEFAULT_LIMITS) -> list[zipfile.ZipInfo]:
    """Every member of `zf` if the archive is safe to extract; UnsafeArchiveError otherwise.
    `name` is the file name shown in the messages (never a server path)."""
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise UnsafeArchiveError(f"{name} holds {len(infos)} files; the limit is {limits.max_members}.")
    total = compressed = 0
    for info in infos:
        member = info.filename
        parts = member.replace("\\", "/").split("/")
        if member.startswith(("/", "\\")) or _DRIVE.match(member) or ".." in parts:
            raise UnsafeArchiveError(
                f"{name} contains an unsafe path ({member!r}) that would write outside its folder; "
                "the archive was refused and nothing was changed."
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeArchiveError(f"{name} contains a symbolic link ({member!r}); the archive was refused.")
        if info.flag_bits & 0x1:
            raise UnsafeArchiveError(f"{name} is encrypted; upload an unencrypted zip.")
        total += info.file_size
        compressed += info.compress_size
        if info.file_size > 1024 * 1024 and info.file_size > limits.max_ratio * max(1, info.compress_size):
            raise UnsafeArchiveError(
                f"{name} looks like a zip bomb ({member!r} expands "
                f"{info.file_size // max(1, info.compress_size)}x); refused."
            )
    if total > limits.max_total_bytes:
        raise UnsafeArchiveError(
            f"{name} would expand to {total / 2**20:.0f} MB (limit {limits.max_total_bytes / 2**20:.0f} MB); refused."
        )
    if total > 16 * 1024 * 1024 and total > limits.max_ratio * max(1, compressed):
        raise UnsafeArchiveError(f"{name} looks like a zip bomb (expands {total // max(1, compressed)}x); refused.")
    return infos


def extract_safely(
    zip_path: str | Path, dest: str | Path, name: str | None = None, limits: ArchiveLimits = DEFAULT_LIMITS
) -> list[Path]:
    """Check the archive with `safe_members`, then extract its files under `dest` (which must
    exist). Returns the extracted file paths. Raises InputError (no file), UnsupportedFileError
    (not a zip) or UnsafeArchiveError; on an error mid-way `dest` may hold part of the files,
    so extract into a temporary folder."""
    zp = Path(zip_path)
    display = Path(name or zp.name).name
    if not zp.is_file():
        raise InputError("No zip file was uploaded.")
    if not zipfile.is_zipfile(zp):
        raise UnsupportedFileError(f"{display} is not a zip archive.")
    root = Path(dest).resolve()
    out: list[Path] = []
    with zipfile.ZipFile(zp) as zf:
        for info in safe_members(zf, display, limits):
            if info.is_dir():
                continue
            target = (root / info.filename).resolve()
            if root not in target.parents:  # belt and braces after safe_members
                raise UnsafeArchiveError(f"{display}: unsafe path {info.filename!r}; refused.")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                remaining = info.file_size + 1
                while chunk := src.read(1 << 20):  # stop a member that lies about its size
                    remaining -= len(chunk)
                    if remaining < 0:
                        raise UnsafeArchiveError(f"{display}: {info.filename!r} is larger than declared; refused.")
                    dst.write(chunk)
            out.append(target)
    return out
