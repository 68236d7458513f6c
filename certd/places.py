"""Where certd may write: only into an output directory it owns, never a system directory.

Publishing replaces ``cert.pem`` and ``privkey.pem``, sweeps ``..tmp-`` leftovers and prunes old ``..gen-``
generations. Aimed at ``/etc``, ``/root`` or another tool's certificate directory, that silently replaced
the other tool's files and deleted a directory it had not made. So a directory is written into only when
certd owns it: it made it, or it was empty, or it holds nothing but certd's own layout (a directory from
before the mark); ownership is then recorded by a mark file. The config check applies the same rule, so a
foreign directory is refused before any CA is asked. Everything here is file-system knowledge, below every
other layer, so the config rules and the publisher share one definition.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from certd.errors import PublishError
from certd.files import write_atomic

__all__ = ["DATA_LINK", "FAILED_MARK", "FILES", "GEN_PREFIX", "LOCK", "MARK", "TMP_PREFIX", "check_claimable",
           "claim", "foreign_entries", "generation_is_ours", "is_system_dir", "owns", "read_only_mount", "tmp_is_ours",
           "unwritable"]

MARK = ".certd-output"
LOCK = ".certd.lock"  # an agent's per-host install lock
DATA_LINK = "..data"
GEN_PREFIX = "..gen-"
TMP_PREFIX = "..tmp-"
FILES = ("privkey.pem", "cert.pem", "chain.pem", "fullchain.pem", "combined.pem")
FAILED_MARK = ".certd-failed"

# Directories that hold a system's own files, or are shared by everyone: never an output_dir or a CA's
# dir, even when empty (``/mnt``, ``/srv``). Subdirectories (``/etc/haproxy/certs``) are fine.
_SYSTEM = frozenset(Path(p) for p in (
    "/", "/bin", "/boot", "/dev", "/etc", "/etc/ssl", "/etc/ssl/certs", "/etc/ssl/private", "/etc/pki",
    "/etc/pki/tls", "/etc/pki/tls/certs", "/etc/pki/tls/private", "/etc/haproxy", "/etc/nginx", "/home", "/lib",
    "/lib32", "/lib64", "/libx32", "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys",
    "/tmp", "/usr", "/usr/bin", "/usr/lib", "/usr/local", "/usr/local/bin", "/usr/local/etc", "/usr/sbin",  # noqa: S108 (listed to be refused)
    "/usr/share", "/var", "/var/lib", "/var/log", "/var/run", "/var/tmp", "/var/www",  # noqa: S108
))


def is_system_dir(path: Path) -> str | None:
    """Why ``path`` (resolved) must never be written into as a whole, or ``None``."""
    if path in _SYSTEM:
        return "a system directory"
    homes = {Path(entry.pw_dir) for entry in pwd.getpwall() if entry.pw_dir not in ("", "/")}
    if path in homes:
        return "a user's home directory"
    return None


def tmp_is_ours(path: Path) -> bool:
    """A ``..tmp-`` leftover of certd's: a link it was about to rename, or a generation it was writing.

    Anything else under that name (someone's directory of data) is not swept with it.
    """
    if path.is_symlink():
        return True
    if path.is_dir():
        return generation_is_ours(path)
    return path.is_file() and path.stat().st_size == 0  # a file certd was about to write, cut short


def generation_is_ours(path: Path) -> bool:
    """It holds only what a publish writes: pruning removes nothing else."""
    try:
        return all(entry.name in FILES or entry.name == FAILED_MARK for entry in os.scandir(path))
    except OSError:
        return False


def _is_ours(entry: os.DirEntry[str]) -> bool:
    """An entry certd's layout has: the switched link, a generation, a leftover, a stable link."""
    name = entry.name
    if name == LOCK:
        return entry.is_file(follow_symlinks=False)
    if name.startswith(f".{MARK}.") and name.endswith(".tmp"):  # the mark being written (files.write_atomic)
        return entry.is_file(follow_symlinks=False)
    if name.startswith(TMP_PREFIX):
        return tmp_is_ours(Path(entry.path))
    if name == DATA_LINK:
        return entry.is_symlink() and os.readlink(entry.path).startswith(GEN_PREFIX)
    if name.startswith(GEN_PREFIX):
        return entry.is_dir(follow_symlinks=False) and generation_is_ours(Path(entry.path))
    if name in FILES:
        return entry.is_symlink() and os.readlink(entry.path) == f"{DATA_LINK}/{name}"
    return False


def owns(directory: Path) -> bool:
    """certd's mark is in ``directory``."""
    try:
        return stat.S_ISREG(os.lstat(directory / MARK).st_mode)
    except OSError:
        return False


def foreign_entries(directory: Path) -> list[str]:
    """What in an existing, unmarked ``directory`` certd did not make (sorted); empty when it may take it."""
    if owns(directory):
        return []
    try:
        return sorted(entry.name for entry in os.scandir(directory) if not _is_ours(entry))
    except (FileNotFoundError, NotADirectoryError):
        return []  # nothing there yet (or a file on the way: the caller names that)


def claim(directory: Path) -> None:
    """Make ``directory`` certd's (creating it) or raise ``PublishError`` naming what is not certd's.

    The mark is written once; a directory that already carries it is not listed again.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o755)
    except (FileExistsError, NotADirectoryError):  # mkdir's "File exists" names neither the file nor the fix
        blocking = next((p for p in (directory, *directory.parents) if p.exists() and not p.is_dir()), directory)
        raise PublishError(f"{blocking} is a file, so {directory} cannot be made: point output_dir elsewhere",
                           retryable=False) from None
    if owns(directory):
        return
    check_claimable(directory)
    write_atomic(directory / MARK, b"This directory is written by certd: it replaces and removes what is in it.\n",
                 0o644)


def check_claimable(directory: Path) -> None:
    """``PublishError`` when ``claim`` would refuse ``directory``; nothing is created or marked.

    A renewal asks this before it orders: a directory that turned foreign (or a system one) fails the
    renewal where no certificate is spent, instead of after issuance on every retry.
    """
    if owns(directory):
        return
    why = is_system_dir(directory.resolve())
    foreign = foreign_entries(directory) if directory.is_dir() else []
    if why is not None or foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise PublishError(f"{directory} is {why}: certd publishes only into a directory of its own" if why else
                           f"{directory} holds files certd did not make ({shown}): certd publishes only into a "
                           "directory it owns (new, empty, or marked by it)", retryable=False)


def read_only_mount(path: Path) -> bool:
    """``path`` is on a file system mounted read-only: no chmod or chown makes it writable."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def unwritable(path: Path) -> str | None:
    """Why this process cannot create files in directory ``path`` (or write file ``path``), or ``None``.

    Said the way an operator fixes it: a read-only mount is not a mode problem, and a file where a
    directory is expected is neither.
    """
    try:
        st = path.stat()
    except OSError as exc:
        return f"{path} cannot be examined ({exc.strerror})"
    if read_only_mount(path):
        return f"{path} is on a read-only file system"
    mode = os.W_OK | (os.X_OK if stat.S_ISDIR(st.st_mode) else 0)
    if os.access(path, mode, effective_ids=os.access in os.supports_effective_ids):
        return None
    return (f"{path} is not writable for uid {os.geteuid()} (mode {stat.S_IMODE(st.st_mode):04o}, "
            f"owner uid {st.st_uid})")
