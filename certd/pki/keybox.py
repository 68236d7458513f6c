"""Encryption of private keys stored in the database (AES-256-GCM).

The database is shared between replicas and ends up in backups; the key
file stays on the hosts. Each sealed value is bound to what it belongs to
(the associated data, e.g. ``version:edge:1f2e``) so a ciphertext copied onto
another row does not decrypt. Without a key file, ``KeyBox`` refuses to seal:
callers then keep keys only on disk.

``check_value`` recognises the key that sealed an inventory without
revealing it (HMAC-SHA256 of a fixed label under a key derived from it with
HKDF, so the sealing key itself is used for nothing else), so a host started
with another ``key_file`` is refused at start instead of sealing keys no
agent can open (``keycheck.py``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from certd.errors import ConfigError, InventoryError
from certd.inputs import KEY_LIMIT, read_file

__all__ = ["KEY_HINT", "KeyBox", "parse_key"]

_MAGIC = b"cd1"
_CHECK_INFO = b"certd key_check v1"  # HKDF info: the check key is independent of the sealing key
_CHECK_LABEL = b"certd inventory sealing key"
KEY_HINT = "must hold 32 random bytes as base64 (e.g. `head -c 32 /dev/urandom | base64`)"


def parse_key(data: bytes) -> bytes | None:
    """The 32-byte key in a key file (base64 or 64 hex digits, whitespace ignored), else None.

    Raw bytes (``head -c 32 /dev/urandom > key``, a common slip) are refused too: the file must be text.
    """
    try:
        text = "".join(data.decode("ascii").split())
    except UnicodeDecodeError:
        return None
    try:
        key = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        return None
    return key if len(key) == 32 else None


class KeyBox:
    """Seal and open secrets with the key from ``[database] key_file``."""

    def __init__(self, key: bytes | None, *, path: Path | None = None) -> None:
        if key is not None and len(key) != 32:
            raise ValueError("KeyBox needs a 32-byte key")
        self._aead = AESGCM(key) if key is not None else None
        self.path = path  # where the key came from, for error messages
        self._check: str | None = None
        if key is not None:
            check_key = HKDF(algorithm=SHA256(), length=32, salt=None, info=_CHECK_INFO).derive(key)
            self._check = "v1:" + hmac.new(check_key, _CHECK_LABEL, hashlib.sha256).hexdigest()

    @classmethod
    def from_file(cls, path: Path | None, *, label: str = "database.key_file") -> KeyBox:
        """Read a key file holding 32 random bytes as base64 or hex (whitespace ignored).

        ``ConfigError`` naming ``label`` and the file when it cannot be read or holds no such key.
        """
        if path is None:
            return cls(None)
        try:
            data = read_file(path, KEY_LIMIT)
        except OSError as exc:
            raise ConfigError(f"{label}: cannot read {path}: {exc.strerror}") from exc
        key = parse_key(data)
        if key is None:
            raise ConfigError(f"{label}: {path} {KEY_HINT}")
        return cls(key, path=path)

    @property
    def enabled(self) -> bool:
        return self._aead is not None

    def check_value(self) -> str | None:
        """A value proving which key this is, safe to store beside what it sealed (None without a key)."""
        return self._check

    def seal(self, plaintext: bytes, context: str) -> bytes:
        if self._aead is None:
            raise InventoryError("no database.key_file configured: refusing to store a private key")
        nonce = os.urandom(12)
        return _MAGIC + nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def open(self, sealed: bytes, context: str) -> bytes:
        if self._aead is None:
            raise InventoryError("no database.key_file configured: cannot read stored private keys")
        if not sealed.startswith(_MAGIC):
            raise InventoryError(f"stored key for {context} is not in a format this certd reads")
        nonce, body = sealed[3:15], sealed[15:]
        try:
            return self._aead.decrypt(nonce, body, context.encode())
        except InvalidTag as exc:
            raise InventoryError(
                f"stored key for {context} does not decrypt: wrong database.key_file?", retryable=False
            ) from exc
