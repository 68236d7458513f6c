"""Which ``key_file`` an inventory's private keys are sealed with, and changing it.

The ``meta`` row ``key_check`` holds ``KeyBox.check_value()`` of the key that
seals the inventory's keys (an HMAC under a key derived from it, never the key
itself). Without it, a host given a different valid ``key_file`` seals keys no
agent can open, and nobody notices until an install fails. With it:

- ``verify_key`` runs at every start (every CLI command that opens the
  inventory, the daemon and its reloads) and refuses another key with
  ``ConfigError`` (exit 2: the database is fine, the config points at the
  wrong file). The first start with a key_file records the value; for an
  inventory sealed by an older certd, which has sealed keys but no value,
  the first start whose key opens one of them records it, and a key that
  opens none is refused.
- ``assert_sealing_key`` runs inside each write that stores a newly sealed
  key, so a replica still running with the old key after ``rotate`` cannot
  slip in a key sealed with it (on PostgreSQL the ``meta`` row is locked in
  share mode there and for update by ``rotate``, so the two serialise).
- ``rotate`` re-seals every stored key with a new key file in one
  transaction and records the new check value.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from certd.errors import ConfigError, InventoryError
from certd.inventory.models import Account, Meta, Version
from certd.pki.keybox import KeyBox

__all__ = ["KEY_CHECK", "MISMATCH", "Rotation", "assert_sealing_key", "rotate", "verify_key"]

log = logging.getLogger("certd.inventory")

KEY_CHECK = "key_check"
MISMATCH = "this key_file does not match the one the inventory was sealed with"


@dataclass(frozen=True)
class Rotation:
    """What ``rotate`` re-sealed."""

    versions: int
    accounts: int


def _mismatch(keybox: KeyBox, config_path: Path | None) -> ConfigError:
    where = f"{config_path}: " if config_path is not None else ""
    return ConfigError(f"{where}database.key_file: {MISMATCH}: {keybox.path}", reason="KeyFileMismatch")


def _sealed_sample(s: Session) -> tuple[bytes, str] | None:
    """One stored sealed key and the context it was sealed for: the newest certificate key, else an account key."""
    row = s.execute(select(Version.key_enc, Version.certificate, Version.serial)
                    .where(Version.key_enc.is_not(None)).order_by(Version.id.desc()).limit(1)).first()
    if row is not None and row[0] is not None:
        return row[0], f"version:{row[1]}:{row[2]}"
    for key_enc, issuer, directory in s.execute(select(Account.key_enc, Account.issuer, Account.directory)):
        if key_enc.startswith(b"cd1"):
            return key_enc, f"account:{issuer}:{directory}"
    return None


def verify_key(
    sessions: sessionmaker[Session], keybox: KeyBox, *, config_path: Path | None = None, record: bool = True
) -> None:
    """Refuse a key_file other than the one the inventory is sealed with; record the value when there is none.

    ``record=False`` (monitoring) checks without writing. Raises
    ``ConfigError`` (``KeyFileMismatch``); database errors propagate.
    """
    expected = keybox.check_value()
    with sessions() as s:
        stored = s.get(Meta, KEY_CHECK)
        if expected is None:
            if stored is not None:
                log.warning("the inventory's keys are sealed with a key_file but [database] key_file is not set: "
                            "certificates issued here carry no key for agents")
            return
        if stored is not None:
            if not hmac.compare_digest(stored.value, expected):
                raise _mismatch(keybox, config_path)
            return
        sample = _sealed_sample(s)
    if sample is not None:
        try:
            keybox.open(*sample)
        except InventoryError as exc:
            raise _mismatch(keybox, config_path) from exc
    if not record:
        return
    try:
        with sessions.begin() as s:
            stored = s.get(Meta, KEY_CHECK)
            if stored is None:
                s.add(Meta(key=KEY_CHECK, value=expected))
            elif not hmac.compare_digest(stored.value, expected):  # another host recorded its key meanwhile
                raise _mismatch(keybox, config_path)
    except IntegrityError:  # PostgreSQL: two first starts at once; compare with the winner's value
        verify_key(sessions, keybox, config_path=config_path, record=False)


def assert_sealing_key(s: Session, keybox: KeyBox) -> None:
    """Inside a write that stores a sealed key: the inventory must still be sealed with ``keybox``'s key."""
    expected = keybox.check_value()
    stored = s.execute(select(Meta.value).where(Meta.key == KEY_CHECK).with_for_update(read=True)).scalar()
    if expected is not None and stored is not None and not hmac.compare_digest(stored, expected):
        raise InventoryError(f"{MISMATCH}: {keybox.path} (was the key rotated? restart with the new "
                             "[database] key_file)", reason="KeyFileMismatch", retryable=False)


def rotate(sessions: sessionmaker[Session], old: KeyBox, new: KeyBox) -> Rotation:
    """Re-seal every stored private key (certificate versions, sealed ACME account keys) with ``new``.

    One transaction: a key that does not open with ``old`` aborts it and
    changes nothing (``InventoryError``). Account keys stored unsealed (saved
    before a key_file was configured) are left as they are, as ``load_account``
    reads both forms.
    """
    if not old.enabled or not new.enabled:
        raise ValueError("rotate needs the current and the new key")
    versions = accounts = 0
    with sessions.begin() as s:
        stored = s.execute(select(Meta).where(Meta.key == KEY_CHECK).with_for_update()).scalar_one_or_none()
        if stored is not None and not hmac.compare_digest(stored.value, old.check_value() or ""):
            raise InventoryError(f"{MISMATCH}: {old.path}", reason="KeyFileMismatch", retryable=False)
        rows = s.execute(select(Version.id, Version.certificate, Version.serial, Version.key_enc)
                         .where(Version.key_enc.is_not(None))).all()
        for version_id, name, serial, key_enc in rows:
            assert key_enc is not None  # selected for it
            context = f"version:{name}:{serial}"
            s.execute(update(Version).where(Version.id == version_id)
                      .values(key_enc=new.seal(old.open(key_enc, context), context)))
            versions += 1
        for account in s.execute(select(Account)).scalars():
            if account.key_enc.startswith(b"cd1"):
                context = f"account:{account.issuer}:{account.directory}"
                account.key_enc = new.seal(old.open(account.key_enc, context), context)
                accounts += 1
        if stored is None:
            s.add(Meta(key=KEY_CHECK, value=new.check_value()))
        else:
            stored.value = new.check_value() or ""
    return Rotation(versions=versions, accounts=accounts)
