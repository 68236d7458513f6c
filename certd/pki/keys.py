"""Private keys and CSRs.

ECDSA P-256 is the default because it is fast, small on the wire and accepted
by every CA we target; the other types exist for operators whose clients or
policies need them. Key generation, serialization and CSR building all go
through ``cryptography``; nothing here is hand-rolled.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

__all__ = [
    "KeyType",
    "PrivateKey",
    "build_csr",
    "generate_key",
    "is_ip",
    "key_description",
    "key_pem",
    "key_type_of",
    "load_key_pem",
    "san_entries",
    "signing_hash",
]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


class KeyType(StrEnum):
    """Key types as written in the config's ``key`` setting."""

    ECDSA_P256 = "ecdsa-p256"
    ECDSA_P384 = "ecdsa-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"
    ED25519 = "ed25519"


_RSA_BITS = {KeyType.RSA_2048: 2048, KeyType.RSA_3072: 3072, KeyType.RSA_4096: 4096}


def generate_key(key_type: KeyType) -> PrivateKey:
    """Generate a fresh private key of the requested type."""
    if key_type is KeyType.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if key_type is KeyType.ECDSA_P384:
        return ec.generate_private_key(ec.SECP384R1())
    if key_type is KeyType.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[key_type])


def key_type_of(key: PrivateKey | PublicKey) -> KeyType | None:
    """Name the key type of a key (private or public); ``None`` if certd has no name for it."""
    pub = key.public_key() if not isinstance(key, PublicKey) else key
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return {"secp256r1": KeyType.ECDSA_P256, "secp384r1": KeyType.ECDSA_P384}.get(pub.curve.name)
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return KeyType.ED25519
    if isinstance(pub, rsa.RSAPublicKey):
        return {2048: KeyType.RSA_2048, 3072: KeyType.RSA_3072, 4096: KeyType.RSA_4096}.get(pub.key_size)
    return None


def key_description(key: PrivateKey | PublicKey) -> str:
    """What a key is, in words, also for the keys certd has no name for (``rsa-1024``, ``ecdsa-secp521r1``)."""
    known = key_type_of(key)
    if known is not None:
        return str(known)
    pub = key.public_key() if not isinstance(key, PublicKey) else key
    if isinstance(pub, rsa.RSAPublicKey):
        return f"rsa-{pub.key_size}" + (" (too weak: CAs and TLS clients refuse RSA keys under 2048 bits)"
                                        if pub.key_size < 2048 else "")
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return f"ecdsa-{pub.curve.name}"
    return type(pub).__name__.removeprefix("_").removesuffix("PublicKey").lower() or "unknown"


def key_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted: files on disk are protected by mode 0600 instead."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


_ENCRYPTED = "the private key is encrypted: certd needs it unencrypted (it protects keys with file modes and " \
             "the inventory's key_file); decrypt a copy with `openssl pkey -in KEY -out KEY.plain`"


def load_key_pem(data: bytes) -> PrivateKey:
    """Load a PEM private key; ``ValueError`` saying what is wrong, never echoing the data.

    An encrypted key gets its own message, because "not a key" would send
    the operator looking for the wrong problem.
    """
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # cryptography's way of saying "a password is needed"
        raise ValueError(_ENCRYPTED) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        if b"ENCRYPTED" in data:
            raise ValueError(_ENCRYPTED) from exc
        if b"PRIVATE KEY-----" not in data and b"-----BEGIN CERTIFICATE-----" in data:
            raise ValueError("holds a certificate, not a private key") from exc
        raise ValueError("not a PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError(f"unsupported private key type {type(key).__name__}")
    return key


def san_entries(names: list[str] | tuple[str, ...]) -> list[x509.GeneralName]:
    """Turn inventory names into SAN entries: IP literals become IP SANs, the rest DNS SANs."""
    out: list[x509.GeneralName] = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


SigningHash = hashes.SHA256 | hashes.SHA384


def signing_hash(key: PrivateKey) -> SigningHash | None:
    """The hash to sign with this key: none for Ed25519, SHA-384 for P-384, else SHA-256."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def build_csr(key: PrivateKey, names: list[str] | tuple[str, ...]) -> x509.CertificateSigningRequest:
    """A CSR carrying every name as a SAN; the CN is the first DNS name (ACME CAs ignore it)."""
    builder = x509.CertificateSigningRequestBuilder()
    dns = [n for n in names if not is_ip(n)]
    if dns and len(dns[0]) <= 64:
        builder = builder.subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])]))
    else:
        builder = builder.subject_name(x509.Name([]))
    builder = builder.add_extension(x509.SubjectAlternativeName(san_entries(names)), critical=False)
    return builder.sign(key, signing_hash(key))


def is_ip(name: str) -> bool:
    """True for an IPv4 or IPv6 literal (an IP SAN rather than a DNS SAN)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
