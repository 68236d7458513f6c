"""Throwaway CA and server certificates, so test servers speak verified TLS without any fixed key material."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertKey:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    # Backdated a little so a freshly made certificate is valid even with small clock skew between processes.
    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)


def make_ca(common_name: str = "certd test CA", days: int = 30) -> CertKey:
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertKey(cert, key)


def issue_server_cert(
    ca: CertKey, dns_names: Sequence[str] = ("localhost",), ips: Sequence[str] = ("127.0.0.1",), days: int = 30
) -> CertKey:
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(days)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name((dns_names[0] if dns_names else ips[0])[:64]))  # a CN holds at most 64 characters
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return CertKey(cert, key)


def write_pem(path: Path, *parts: bytes) -> Path:
    """Write PEM blocks in order (e.g. key + leaf + chain for HAProxy's combined file)."""
    path.write_bytes(b"".join(p if p.endswith(b"\n") else p + b"\n" for p in parts))
    return path


def write_server_files(directory: Path, server: CertKey, ca: CertKey) -> dict[str, Path]:
    """The file layouts the servers here consume: separate cert/key, fullchain, and HAProxy's combined PEM.

    The CA is a root, so like a real chain it is left out of fullchain/combined: clients must trust ca.pem.
    """
    return {
        "ca": write_pem(directory / "ca.pem", ca.cert_pem),
        "cert": write_pem(directory / "cert.pem", server.cert_pem),
        "key": write_pem(directory / "privkey.pem", server.key_pem),
        "fullchain": write_pem(directory / "fullchain.pem", server.cert_pem),
        "combined": write_pem(directory / "combined.pem", server.key_pem, server.cert_pem),
    }
