"""Every file certd reads, read with bounds: the one reader.

A path given on the command line can be anything: ``/dev/zero``, a FIFO
nobody writes to, a multi-gigabyte log by mistake. ``Path.read_bytes()``
would read the first until memory runs out and block forever on the second.
So the file is opened without blocking, refused unless it is a regular file,
and read only up to a cap far above any real certificate bundle or key.

``read_file`` is what the rest of certd calls: its refusal is an ``OSError``
(``Refused``, with the reason as ``strerror``), so every caller's existing
"cannot read <key> <path>: <reason>" message names the key or option that
pointed at ``/dev/zero``. ``InputError`` says which of the import's inputs was
wrong, so that the command blames ``--cert`` for a broken certificate instead
of ``--key``.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Literal

__all__ = ["CERT_LIMIT", "CONFIG_LIMIT", "KEY_LIMIT", "SECRET_LIMIT", "InputError", "Part", "Refused", "read_bounded",
           "read_file", "read_text"]

CERT_LIMIT = 1024 * 1024  # a bundle of every public root is ~250 KiB; a leaf plus chain a few KiB
KEY_LIMIT = 64 * 1024  # an RSA-4096 key is ~3.3 KiB; with a full chain (combined.pem) still far below
SECRET_LIMIT = 64 * 1024  # tokens, passwords, HMAC and TSIG keys, role and secret ids
CONFIG_LIMIT = 4 * 1024 * 1024  # a config with thousands of certificates

Part = Literal["cert", "key", "chain"]


class InputError(ValueError):
    """One import input (``part``) is unusable; the message does not repeat the file name."""

    def __init__(self, part: Part, message: str) -> None:
        super().__init__(message)
        self.part = part


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _size(n: int) -> str:
    return f"{n // 1024} KiB" if n < 1024 * 1024 else f"{n / (1024 * 1024):.1f} MiB"


def read_bounded(path: Path, limit: int) -> bytes:
    """The content of a regular file of at most ``limit`` bytes; ``ValueError`` otherwise.

    ``O_NONBLOCK`` keeps ``open`` of a FIFO from waiting for a writer; the
    type is checked on the open descriptor (not the path, which could be
    swapped in between); and the read stops one byte past the cap, so a file
    growing after ``fstat`` is caught too. ``OSError`` (missing, no
    permission) is left to the caller, which names the file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{_kind(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise ValueError(f"too large ({_size(info.st_size)}; at most {_size(limit)})")
        chunks: list[bytes] = []
        remaining = limit + 1
        while remaining > 0 and (chunk := os.read(fd, min(remaining, 65536))):
            chunks.append(chunk)
            remaining -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise ValueError(f"too large (more than {_size(limit)})")
    return data


class Refused(OSError):
    """A file certd will not read: not a regular file, or larger than it can be. ``strerror`` says which."""


def read_file(path: Path | str, limit: int = CERT_LIMIT) -> bytes:
    """The content of a regular file of at most ``limit`` bytes; ``Refused`` (an ``OSError``) otherwise.

    ``OSError`` for a missing or unreadable file passes through as it is, so callers handle both alike.
    """
    try:
        return read_bounded(Path(path), limit)
    except ValueError as exc:
        if Path(path).is_dir():  # said as the system says it, as every caller's message already did
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path)) from None
        raise Refused(errno.EINVAL, str(exc), str(path)) from None


def read_text(path: Path | str, limit: int = SECRET_LIMIT) -> str:
    """``read_file`` decoded as UTF-8; a file that is not is ``Refused`` too."""
    data = read_file(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refused(errno.EINVAL, f"not UTF-8 text ({exc.reason} at byte {exc.start})", str(path)) from None
