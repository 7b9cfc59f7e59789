"""A real, tiny file system for disk-full tests: a tmpfs mounted for the test (needs root and
a kernel that lets this process mount; the tests skip, saying so, where it cannot).

    with small_tmpfs(tmp_path / "fs", 4 << 20) as root:
        ballast = fill(root / "ballast")     # the disk is full now
        ballast.unlink()                     # and has room again
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(path: Path, size_bytes: int, nr_inodes: int | None = None) -> Iterator[Path]:
    """A tmpfs of ``size_bytes`` (and at most ``nr_inodes`` files) mounted at ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size_bytes}" + (f",nr_inodes={nr_inodes}" if nr_inodes else "")
    if os.geteuid() != 0:
        pytest.skip("disk-full tests mount a small tmpfs, which needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                       capture_output=True, timeout=30, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield path
    finally:
        # Lazy: a server that has not quite let go of a file must not fail the teardown.
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30, check=False)


def fill(path: Path, chunk: int = 4096) -> Path:
    """Write ``path`` until the file system refuses (ENOSPC); returns it. Deleting it frees
    the space again."""
    block = b"\xa5" * chunk
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while True:
            try:
                os.write(fd, block)
            except OSError:
                if chunk == 1:
                    break
                chunk //= 2
                block = block[:chunk]
    finally:
        os.close(fd)
    return path


def fill_inodes(directory: Path) -> list[Path]:
    """Create empty files until the file system has no inode left; returns them."""
    made = []
    while True:
        p = directory / f"inode-filler-{len(made)}"
        try:
            p.touch()
        except OSError:
            return made
        made.append(p)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
