"""medlab.io.archives: the generic zip checks every upload path shares."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from medlab.io.archives import ArchiveLimits, UnsafeArchiveError, extract_safely, safe_members


def _zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_extract_safely_returns_exactly_the_members(tmp_path: Path) -> None:
    z = _zip(tmp_path / "ok.zip", {"a/x.txt": b"x" * 10, "b.txt": b"hello"})
    out = tmp_path / "out"
    out.mkdir()
    files = extract_safely(z, out)
    assert sorted(p.relative_to(out.resolve()).as_posix() for p in files) == ["a/x.txt", "b.txt"]
    assert (out / "b.txt").read_bytes() == b"hello"


@pytest.mark.parametrize("member", ["../up.txt", "/abs.txt", "C:/win.txt", "a/../../up.txt"])
def test_paths_leaving_the_folder_are_refused_before_extraction(tmp_path: Path, member: str) -> None:
    z = _zip(tmp_path / "bad.zip", {"fine.txt": b"ok", member: b"evil"})
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UnsafeArchiveError, match="unsafe path"):
        extract_safely(z, out, "bad.zip")
    assert list(out.iterdir()) == []  # nothing written, not even the fine member


def test_limits_are_the_callers(tmp_path: Path) -> None:
    z = _zip(tmp_path / "many.zip", {f"{i}.txt": b"x" for i in range(5)})
    with zipfile.ZipFile(z) as zf:
        assert len(safe_members(zf, "many.zip")) == 5
        with pytest.raises(UnsafeArchiveError, match="holds 5 files; the limit is 4"):
            safe_members(zf, "many.zip", ArchiveLimits(max_members=4))
    big = _zip(tmp_path / "big.zip", {"zeros.bin": b"\0" * (2 * 1024 * 1024)})
    with zipfile.ZipFile(big) as zf, pytest.raises(UnsafeArchiveError, match="zip bomb"):
        safe_members(zf, "big.zip")  # 2 MiB of zeros deflate > 200x
