"""The ``publish`` step: atomic files on disk, one switch per rotation.

Layout of ``output_dir`` (the kubelet ``..data`` pattern)::

    ..data -> ..gen-20261124T181500123456Z-1f2e      (the one switched link)
    ..gen-20261124T181500123456Z-1f2e/privkey.pem     0600 (or the certificate's mode)
                                      cert.pem, chain.pem, fullchain.pem
                                      combined.pem    key + full chain, same mode as the key
    privkey.pem -> ..data/privkey.pem                 (stable paths, made once)
    ...

A generation is written under a ``..tmp-`` name, every file fsynced, the
directory fsynced, then renamed to its ``..gen-`` name; only complete
generations ever carry that name. The switch is one ``rename`` of a fresh
symlink over ``..data``, followed by an fsync of ``output_dir``. A reader
therefore sees either the old set or the new set, never a mix or a partial
file, and a reader that resolves ``..data`` once sees one matching set. A
crash leaves at worst a ``..tmp-`` directory, removed by the next publish.

Previous generations are kept (``keep``) so a failed deploy can switch back
without reissuing. ``keep`` counts good generations only: one whose deploy or
verify failed is marked (``mark_failed``) and removed at the next publish
unless it is current, so failed attempts can never push the last good
certificate off disk; the rollback target a publish is given is never removed.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import secrets
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from certd.errors import PublishError
from certd.files import fsync_dir, write_atomic, write_new
from certd.inputs import CERT_LIMIT, read_file
from certd.pki.certs import certs_pem, load_pem_certs, serial_hex
from certd.places import (
    DATA_LINK,
    FAILED_MARK,
    FILES,
    GEN_PREFIX,
    TMP_PREFIX,
    claim,
    generation_is_ours,
    tmp_is_ours,
)

__all__ = [
    "DATA_LINK",
    "FILES",
    "GEN_PREFIX",
    "KEY_FILES",
    "PUBLIC_MODE",
    "Generation",
    "Publisher",
    "current_generation",
    "file_set",
    "list_generations",
    "published_serial",
    "write_file_atomic",
]

KEY_FILES = frozenset({"privkey.pem", "combined.pem"})
PUBLIC_MODE = 0o644


@dataclass(frozen=True)
class Generation:
    """One complete, immutable set of files."""

    name: str
    path: Path

    def read(self, filename: str) -> bytes:
        return read_file(self.path / filename)

    @property
    def failed(self) -> bool:
        """Its deploy or verify failed: it does not count towards ``keep`` and is no rollback target."""
        return (self.path / FAILED_MARK).exists()


def current_generation(output_dir: Path) -> Generation | None:
    """The generation ``..data`` points at, or ``None`` before the first publish."""
    link = output_dir / DATA_LINK
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PublishError(f"{link} is not a symlink: {exc.strerror}") from exc
    return Generation(name=target, path=output_dir / target)


def list_generations(output_dir: Path) -> list[Generation]:
    """Complete generations, oldest first (names sort by creation time)."""
    if not output_dir.is_dir():
        return []
    names = sorted(p.name for p in output_dir.iterdir() if p.name.startswith(GEN_PREFIX) and p.is_dir())
    return [Generation(name=n, path=output_dir / n) for n in names]


class Publisher:
    """Writes generations into one ``output_dir`` with the certificate's ownership and mode."""

    def __init__(
        self,
        output_dir: Path,
        *,
        keep: int = 3,
        key_mode: int = 0o600,
        owner: str | None = None,
        group: str | None = None,
    ) -> None:
        self.output_dir = output_dir
        self.keep = keep
        self.key_mode = key_mode
        self.uid = self._lookup_uid(owner)  # -1: whoever certd runs as
        self.gid = self._lookup_gid(group)  # -1: the directory's default

    @staticmethod
    def _lookup_uid(owner: str | None) -> int:
        if owner is None:
            return -1
        try:
            return pwd.getpwnam(owner).pw_uid
        except KeyError as exc:
            raise PublishError(f"owner {owner!r} is not a user on this host") from exc

    @staticmethod
    def _lookup_gid(group: str | None) -> int:
        if group is None:
            return -1
        try:
            return grp.getgrnam(group).gr_gid
        except KeyError as exc:
            raise PublishError(f"group {group!r} is not a group on this host") from exc

    def _write(self, directory: Path, name: str, data: bytes) -> None:
        mode = self.key_mode if name in KEY_FILES else PUBLIC_MODE
        write_new(directory / name, data, mode, self.uid, self.gid)

    def publish(self, serial: str, files: dict[str, bytes], *, rollback_to: str | None = None) -> Generation:
        """Write a new generation and switch ``..data`` to it; return it.

        ``rollback_to`` names the generation a failed rollout would switch back to: never pruned here.
        """
        if set(files) != set(FILES):
            raise PublishError(f"publish needs exactly {', '.join(FILES)}")
        try:
            claim(self.output_dir)
            self._sweep_tmp()
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            name = f"{GEN_PREFIX}{stamp}-{serial[:16]}"
            tmp = self.output_dir / f"{TMP_PREFIX}{stamp}-{secrets.token_hex(4)}"
            tmp.mkdir(mode=0o755)
            for fname in FILES:
                self._write(tmp, fname, files[fname])
            fsync_dir(tmp)
            os.rename(tmp, self.output_dir / name)
            generation = Generation(name=name, path=self.output_dir / name)
            self.switch(generation)
            self._prune(generation, rollback_to)
            return generation
        except OSError as exc:
            raise PublishError(f"cannot publish into {self.output_dir}: {exc.strerror or exc}") from exc

    def switch(self, generation: Generation) -> None:
        """Point ``..data`` at ``generation`` in one rename, then make sure the stable links exist."""
        try:
            if not generation.path.is_dir():
                raise PublishError(f"generation {generation.name} does not exist in {self.output_dir}")
            tmp_link = self.output_dir / f"{TMP_PREFIX}link-{secrets.token_hex(6)}"
            os.symlink(generation.name, tmp_link)
            os.rename(tmp_link, self.output_dir / DATA_LINK)
            for fname in FILES:
                self._ensure_stable_link(fname)
            fsync_dir(self.output_dir)
        except OSError as exc:
            raise PublishError(f"cannot switch {self.output_dir} to {generation.name}: {exc.strerror}") from exc

    def _ensure_stable_link(self, fname: str) -> None:
        path = self.output_dir / fname
        want = f"{DATA_LINK}/{fname}"
        try:
            if os.readlink(path) == want:
                return
        except FileNotFoundError:
            pass
        except OSError:
            pass  # a regular file from another tool: replaced atomically below
        tmp = self.output_dir / f"{TMP_PREFIX}{fname}-{secrets.token_hex(4)}"
        os.symlink(want, tmp)
        os.rename(tmp, path)

    def _sweep_tmp(self) -> None:
        """Remove what a crashed publish left behind; no reader ever looked there."""
        for p in self.output_dir.iterdir():
            if p.name.startswith(TMP_PREFIX) and tmp_is_ours(p):  # never someone's data under that name
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)

    def _prune(self, current: Generation, rollback_to: str | None) -> None:
        """Keep the current generation and ``keep`` good others, the rollback target first; drop the rest.

        The rollback target takes one of the ``keep`` places: a generation published by a process killed
        before its inventory caught up is newer than the target, and counting the target on top of the
        newest ones let such kills grow the directory past ``1 + keep``.
        """
        others = [g for g in list_generations(self.output_dir) if g.name != current.name]
        kept = {rollback_to} if rollback_to else set()
        for g in reversed(others):  # newest first
            if len(kept) >= self.keep or g.failed:
                continue
            kept.add(g.name)
        for old in others:
            if old.name in kept:
                continue
            if old.path.is_symlink():  # a hook's link in certd's directory: the link goes, never its target
                old.path.unlink(missing_ok=True)
            elif generation_is_ours(old.path):  # never what certd did not write
                shutil.rmtree(old.path, ignore_errors=True)

    def mark_failed(self, generation: Generation) -> None:
        """Its deploy or verify failed; ``mark_good`` undoes it when a redeploy of it succeeds."""
        if generation.path.is_symlink():
            return  # never write through a link a hook put there: pruning removes the link
        try:
            (generation.path / FAILED_MARK).touch(mode=0o644)
        except OSError as exc:
            raise PublishError(f"cannot mark {generation.name} in {self.output_dir} failed: {exc.strerror}") from exc

    @staticmethod
    def mark_good(generation: Generation) -> None:
        (generation.path / FAILED_MARK).unlink(missing_ok=True)



def file_set(key_pem: bytes, leaf: x509.Certificate, chain: tuple[x509.Certificate, ...]) -> dict[str, bytes]:
    """The five files of one generation, from the key, the leaf and the intermediates."""
    leaf_pem = certs_pem([leaf])
    chain_pem = certs_pem(chain)
    return {
        "privkey.pem": key_pem,
        "cert.pem": leaf_pem,
        "chain.pem": chain_pem,
        "fullchain.pem": leaf_pem + chain_pem,
        "combined.pem": key_pem + leaf_pem + chain_pem,
    }


def published_serial(output_dir: Path) -> str | None:
    """The serial this host's files hold now, or ``None`` when nothing readable is published."""
    gen = current_generation(output_dir)
    if gen is None:
        return None
    try:
        return serial_hex(load_pem_certs(gen.read("cert.pem"))[0])
    except (OSError, ValueError, IndexError):
        return None


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.S)


def _only_certificates(data: bytes) -> bool:
    """Empty, or PEM certificates with nothing else but blank lines and ``#`` comments between them."""
    if any(kind != b"CERTIFICATE" for kind in (m.group(1) for m in _PEM_BLOCK.finditer(data))):
        return False
    rest = _PEM_BLOCK.sub(b"", data)
    return all(not line.strip() or line.lstrip().startswith(b"#") for line in rest.splitlines())


def write_file_atomic(path: Path, data: bytes, mode: int = PUBLIC_MODE) -> bool:
    """Replace one file (a trust bundle) in one rename; ``False`` when it already held ``data``."""
    try:
        # Compared only as a regular file of a sane size: a bundle path that is a device (/dev/full) or a
        # huge file is refused (an OSError) instead of read to its end, or replaced.
        if path.exists():
            held = read_file(path, max(len(data), CERT_LIMIT))
            if held == data:
                return False
            if not _only_certificates(held):  # `certd bundle --out /etc/passwd` replaced it
                raise PublishError(f"{path} holds something other than certificates: certd replaces only a CA "
                                   "bundle (remove the file first, or name another path)", retryable=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data, mode)
        return True
    except OSError as exc:
        raise PublishError(f"cannot write {path}: {exc.strerror or exc}") from exc
