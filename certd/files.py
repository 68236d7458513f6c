"""Writing files so that no reader ever sees half of one: the one place certd creates or replaces a file.

Published generations, trust bundles, the local CA's keys and HTTP-01
answers all need the same three moves — write a new file with exactly the
mode asked for (the umask must not widen or narrow it), fsync it, and make it
visible with one rename in the same directory, then fsync the directory so
the rename survives a crash. Written once here, so a fix reaches them all.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["fsync_dir", "write_atomic", "write_new"]


def write_new(path: Path, data: bytes, mode: int, uid: int = -1, gid: int = -1) -> None:
    """Create ``path`` (never an existing file) with exactly ``mode``, write all of ``data``, fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make the renames inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` in one rename; ``OSError`` leaves the old file as it was."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        write_new(tmp, data, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
