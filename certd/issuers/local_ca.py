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

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certd.certs import certs_pem, load_pem_certs, rfc3339, serial_hex
from certd.clock import Clock, SystemClock
from certd.config import LocalCAIssuerConfig
from certd.durations import format_duration
from certd.errors import IssuerError
from certd.issuers.base import Issued, IssueRequest, RevocationReason
from certd.keys import (
    KeyType,
    PrivateKey,
    generate_key,
    is_ip,
    key_pem,
    load_key_pem,
    san_entries,
    signing_hash,
)

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


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class LocalCA:
    """Issuer backed by files in ``config.dir``; safe to share between threads."""

    def __init__(self, name: str, config: LocalCAIssuerConfig, *, clock: Clock | None = None) -> None:
        self.name = name
        self._config = config
        self._dir = config.dir
        self._lock = threading.Lock()
        self._loaded: tuple[x509.Certificate, x509.Certificate, PrivateKey] | None = None
        self._clock: Clock = clock or SystemClock()

    # -- files -----------------------------------------------------------------
    @property
    def root_path(self) -> Path:
        return self._dir / "root.pem"

    @contextmanager
    def _flock(self) -> Iterator[None]:
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self._dir / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _ensure(self) -> tuple[x509.Certificate, x509.Certificate, PrivateKey]:
        with self._lock:
            if self._loaded is None:
                try:
                    with self._flock():
                        if not (self._dir / "intermediate.key").exists():
                            self._create()
                        self._loaded = self._load()
                except OSError as exc:
                    raise IssuerError(
                        f"issuer {self.name}: cannot use local CA directory {self._dir}: {exc.strerror}",
                        reason="LocalCAUnavailable",
                    ) from exc
            return self._loaded

    def _load(self) -> tuple[x509.Certificate, x509.Certificate, PrivateKey]:
        root = load_pem_certs(self.root_path.read_bytes())[0]
        inter = load_pem_certs((self._dir / "intermediate.pem").read_bytes())[0]
        key = load_key_pem((self._dir / "intermediate.key").read_bytes())
        return root, inter, key

    def _create(self) -> None:
        now = self._clock.now()
        root_key = generate_key(self._config.key)
        cn = self._config.common_name
        root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cn} root")])
        root = (
            x509.CertificateBuilder()
            .subject_name(root_name)
            .issuer_name(root_name)
            .public_key(root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _ROOT_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_ca_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
            .sign(root_key, signing_hash(root_key))
        )
        inter_key = generate_key(self._config.key)
        inter_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cn} intermediate")])
        inter = (
            x509.CertificateBuilder()
            .subject_name(inter_name)
            .issuer_name(root_name)
            .public_key(inter_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + self._config.intermediate_lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(inter_key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False
            )
            .sign(root_key, signing_hash(root_key))
        )
        # The root key signs only the intermediate; it is kept for re-issuing one.
        _write_private(self._dir / "root.key", key_pem(root_key))
        self.root_path.write_bytes(certs_pem([root]))
        (self._dir / "intermediate.pem").write_bytes(certs_pem([inter]))
        _write_private(self._dir / "intermediate.key", key_pem(inter_key))

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
        with self._flock(), open(self._dir / "revoked.txt", "a") as fh:
            fh.write(line)

    def roots(self) -> list[x509.Certificate]:
        return [self._ensure()[0]]

    def ca_chain(self) -> list[x509.Certificate]:
        """Intermediate then root: what a load balancer pins for backends of this CA."""
        root, inter, _ = self._ensure()
        return [inter, root]
