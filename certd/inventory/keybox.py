"""Encryption of private keys stored in the database (AES-256-GCM).

The database is shared between replicas and ends up in backups; the key
file stays on the hosts. Each sealed value is bound to what it belongs to
(the associated data, e.g. ``version:edge:1f2e``) so a ciphertext copied onto
another row does not decrypt. Without a key file, ``KeyBox`` refuses to seal:
callers then keep keys only on disk.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from certd.errors import ConfigError, InventoryError

__all__ = ["KeyBox"]

_MAGIC = b"cd1"


class KeyBox:
    """Seal and open secrets with the key from ``[database] key_file``."""

    def __init__(self, key: bytes | None) -> None:
        if key is not None and len(key) != 32:
            raise ValueError("KeyBox needs a 32-byte key")
        self._aead = AESGCM(key) if key is not None else None

    @classmethod
    def from_file(cls, path: Path | None) -> KeyBox:
        """Read a key file holding 32 random bytes as base64 or hex (whitespace ignored)."""
        if path is None:
            return cls(None)
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"database.key_file: cannot read {path}: {exc.strerror}") from exc
        key: bytes | None = None
        try:
            key = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
        except (ValueError, binascii.Error):
            key = None
        if key is None or len(key) != 32:
            raise ConfigError(
                f"database.key_file: {path} must hold 32 random bytes as base64 "
                "(e.g. `head -c 32 /dev/urandom | base64`)"
            )
        return cls(key)

    @property
    def enabled(self) -> bool:
        return self._aead is not None

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
