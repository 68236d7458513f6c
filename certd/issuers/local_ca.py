"""certd's built-in CA: a root and an intermediate, created on first use.

It exists so that a new user gets real, verifiable certificates with no
outside server, and so that internal backends can be served before a Vault
exists. The root never signs leaves (the intermediate does), so the chain
shape matches what public and Vault CAs hand out and what load balancers
expect to pin.

Creation is guarded by an exclusive ``flock`` on ``dir/.lock`` so two
processes starting at once create one CA, not two. Key files are 0600.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certd.config.model import LocalCAIssuerConfig
from certd.core.clock import Clock, SystemClock
from certd.core.durations import format_duration, rfc3339
from certd.errors import IssuerError
from certd.files import write_atomic
from certd.inputs import KEY_LIMIT, read_file
from certd.issuers.base import Issued, IssueRequest
from certd.pki.certs import certs_pem, fingerprint, is_self_signed, load_pem_certs, serial_hex
from certd.pki.keys import (
    KeyType,
    PrivateKey,
    generate_key,
    is_ip,
    key_pem,
    load_key_pem,
    san_entries,
    signing_hash,
)
from certd.pki.revocation import RevocationReason

__all__ = ["LocalCA"]

_ROOT_LIFETIME = timedelta(days=3650)
_BACKDATE = timedelta(minutes=5)


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_certificate(subject: x509.Name, issuer: x509.Name, key: PrivateKey, signer: PrivateKey, now: datetime,
                    not_after: datetime, *, path_length: int) -> x509.Certificate:
    """A CA certificate for ``key``, signed by ``signer`` (itself for the root, which then needs no AKI)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if signer is not key:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
    return builder.sign(signer, signing_hash(signer))


def _write_private(path: Path, data: bytes) -> None:
    write_atomic(path, data, 0o600)



def _own_file(path: Path) -> IO[str]:
    """``path`` opened for appending, only as the regular file it should be.

    Not through a symlink (a revocation appended to a file elsewhere), and not a FIFO (``open`` would wait
    for a reader for ever): refused with ``OSError`` naming it, which the caller reports.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "a")
    except BaseException:
        os.close(fd)
        raise

class LocalCA:
    """Issuer backed by files in ``config.dir``; safe to share between threads."""

    def __init__(self, name: str, config: LocalCAIssuerConfig, *, clock: Clock | None = None) -> None:
        self.name = name
        self._config = config
        self._dir = config.dir
        self._lock = threading.Lock()
        self._loaded: tuple[x509.Certificate, x509.Certificate, PrivateKey] | None = None
        self._loaded_gen: tuple[int, int] | None = None
        self._clock: Clock = clock or SystemClock()

    # -- files -----------------------------------------------------------------
    @property
    def root_path(self) -> Path:
        return self._dir / "root.pem"

    @contextmanager
    def _flock(self) -> Iterator[None]:
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _own_file(self._dir / ".lock") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _generation(self) -> tuple[int, int] | None:
        """Which intermediate is on disk: ``certd ca rotate`` in another process replaces it."""
        try:
            st = (self._dir / "intermediate.pem").stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    def _ensure(self) -> tuple[x509.Certificate, x509.Certificate, PrivateKey]:
        with self._lock:
            if self._loaded is None or self._loaded_gen != self._generation():
                try:
                    with self._flock():
                        parts = ("root.key", "root.pem", "intermediate.pem", "intermediate.key")
                        present = [part for part in parts if (self._dir / part).exists()]
                        if not present:  # a new CA only where there is none: never over a damaged one
                            self._create(self._dir)
                        elif len(present) < len(parts):
                            missing = ", ".join(part for part in parts if part not in present)
                            raise IssuerError(
                                f"issuer {self.name}: the local CA in {self._dir} is incomplete: {missing} "
                                f"missing ({', '.join(present)} present). certd does not make a new CA over it "
                                "(servers and load balancers pin its root): restore the files from a backup",
                                reason="LocalCAIncomplete", retryable=False)
                        self._loaded = self._load()
                        self._loaded_gen = self._generation()
                except OSError as exc:
                    raise IssuerError(
                        f"issuer {self.name}: cannot use local CA directory {self._dir}: {exc.strerror}",
                        reason="LocalCAUnavailable",
                    ) from exc
            return self._loaded

    def _load(self) -> tuple[x509.Certificate, x509.Certificate, PrivateKey]:
        root = load_pem_certs(read_file(self.root_path))[0]
        inter = load_pem_certs(read_file(self._dir / "intermediate.pem"))[0]
        key = load_key_pem(read_file(self._dir / "intermediate.key", KEY_LIMIT))
        return root, inter, key

    def _create(self, into: Path) -> None:
        now = self._clock.now()
        root_key = generate_key(self._config.key)
        cn = self._config.common_name
        root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cn} root")])
        root = _ca_certificate(root_name, root_name, root_key, root_key, now, now + _ROOT_LIFETIME, path_length=1)
        inter_key = generate_key(self._config.key)
        inter_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cn} intermediate")])
        inter = _ca_certificate(inter_name, root_name, inter_key, root_key, now,
                                now + self._config.intermediate_lifetime, path_length=0)
        # The root key signs only the intermediate; it is kept for re-issuing one.
        into.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(into / "root.key", key_pem(root_key))
        (into / "root.pem").write_bytes(certs_pem([root]))
        (into / "intermediate.pem").write_bytes(certs_pem([inter]))
        _write_private(into / "intermediate.key", key_pem(inter_key))

    # -- Issuer ----------------------------------------------------------------
    def issue(self, request: IssueRequest) -> Issued:
        _, inter, inter_key = self._ensure()
        now = self._clock.now()
        lifetime = request.lifetime or self._config.default_lifetime
        not_after = now + lifetime
        if not_after > inter.not_valid_after_utc:  # refused, not capped: the certificate would be shorter than asked
            raise IssuerError(
                f"issuer {self.name}: cannot sign for {format_duration(lifetime)}: its intermediate expires "
                f"{rfc3339(inter.not_valid_after_utc)} and no certificate can outlive it",
                reason="LifetimeTooLong", retryable=False,
            )
        # Backdate for clock skew, but by little enough that a short lifetime stays what was asked.
        backdate = min(_BACKDATE, lifetime / 20)
        csr = request.csr
        if not csr.is_signature_valid:
            raise IssuerError(f"issuer {self.name}: CSR signature is invalid", reason="BadCSR")
        pub = csr.public_key()
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=request.key_type in (KeyType.RSA_2048, KeyType.RSA_3072, KeyType.RSA_4096),
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
        dns = [n for n in request.names if not is_ip(n)]
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])]) if dns and len(dns[0]) <= 64 else (
            x509.Name([])
        )
        leaf = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(inter.subject)
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - backdate)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(san_entries(request.names)), critical=not subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(inter_key.public_key()), critical=False
            )
            .sign(inter_key, signing_hash(inter_key))
        )
        return Issued(leaf=leaf, chain=(inter,))

    def revoke(self, certificate: x509.Certificate, reason: RevocationReason) -> None:
        """Record the serial in ``revoked.txt``; the local CA publishes no CRL or OCSP."""
        self._ensure()
        line = f"{serial_hex(certificate)} {reason.value} {self._clock.now().isoformat()}\n"
        with self._flock(), _own_file(self._dir / "revoked.txt") as fh:
            fh.write(line)

    def roots(self) -> list[x509.Certificate]:
        """The signing root, then a staged one, then retired ones: served certificates may chain to any."""
        staged, retired = self.rotation_state()
        return [self._ensure()[0], *(c for c in staged + retired if is_self_signed(c))]

    def ca_chain(self) -> list[x509.Certificate]:
        """Intermediate then root, and a staged CA's: what a load balancer pins for backends of this CA."""
        root, inter, _ = self._ensure()
        return [inter, root, *self.rotation_state()[0]]

    # -- CaRotation ------------------------------------------------------------
    # Layout: the signing CA in dir/, a staged one in dir/next/, retired ones in dir/retired/<root serial>/
    # (certificates only: their keys are deleted at retirement, so nothing can be signed under them again).
    @staticmethod
    def _chain_in(where: Path) -> list[x509.Certificate]:
        try:
            return [*load_pem_certs(read_file(where / "intermediate.pem")),
                    *load_pem_certs(read_file(where / "root.pem"))]
        except OSError:
            return []

    def rotation_state(self) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
        retired_dir = self._dir / "retired"
        retired = [c for d in sorted(retired_dir.iterdir()) for c in self._chain_in(d)] if retired_dir.is_dir() else []
        return self._chain_in(self._dir / "next"), retired

    def stage_rotation(self) -> list[x509.Certificate]:
        self._ensure()
        with self._flock():
            staged = self._dir / "next"
            if not (staged / "intermediate.key").exists():
                shutil.rmtree(staged, ignore_errors=True)  # a half-made one from a crash
                self._create(staged.with_name("next.tmp"))
                os.replace(staged.with_name("next.tmp"), staged)
        return self._chain_in(self._dir / "next")

    def promote_rotation(self) -> list[x509.Certificate]:
        self._ensure()
        with self._flock():
            staged = self._dir / "next"
            if not (staged / "intermediate.key").exists():
                raise IssuerError(f"issuer {self.name}: no staged CA to promote", reason="NoStagedCA",
                                  retryable=False)
            old = self._chain_in(self._dir)
            retired = self._dir / "retired" / serial_hex(old[-1])
            retired.mkdir(parents=True, exist_ok=True, mode=0o700)
            for part in ("root.pem", "intermediate.pem"):
                shutil.copy2(self._dir / part, retired / part)
            for part in ("root.key", "root.pem", "intermediate.key", "intermediate.pem"):
                os.replace(staged / part, self._dir / part)  # the .pem last: _generation() sees the new CA
            staged.rmdir()
        self._ensure()
        return old

    def drop_retired(self, keep: set[str]) -> list[x509.Certificate]:
        dropped: list[x509.Certificate] = []
        with self._flock():
            retired_dir = self._dir / "retired"
            for where in sorted(retired_dir.iterdir()) if retired_dir.is_dir() else []:
                certs = self._chain_in(where)
                if not any(fingerprint(c) in keep for c in certs):
                    shutil.rmtree(where)
                    dropped += certs
        return dropped
