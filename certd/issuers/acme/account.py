"""The ACME directory, the account and its key, and one client per worker thread.

Why it is built this way:

* One ``ClientNetwork``/``ClientV2`` per worker thread, sharing one account key and account URL:
  ``ClientNetwork`` keeps a single nonce pool and a ``requests.Session`` and is not safe to share between
  threads. The directory is fetched once and shared (it is immutable JSON).
* The account (an EC P-256 key, signed with ES256) lives in the inventory through ``AccountStore``, so every
  replica on one database uses the same account, sealed when ``[database] key_file`` is set. It is created on
  first use, with External Account Binding when configured.
* A key rollover bumps a generation number, so every thread rebuilds its client with the new key on its next
  request instead of signing with a key the CA no longer knows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from acme import client as acme_client
from acme import errors as acme_errors
from acme import jws as acme_jws
from acme import messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.errors import DeserializationError
from josepy.json_util import JSONObjectWithFields
from josepy.json_util import field as jose_field
from josepy.jwa import ES256
from josepy.jwk import JWK, JWKEC

from certd import __version__
from certd.config.model import AcmeIssuerConfig
from certd.errors import IssuerError
from certd.inputs import read_text
from certd.issuers.acme.errors import status_of
from certd.issuers.acme.network import AcmeNetwork, signed_post
from certd.issuers.base import AccountStore

__all__ = ["AcmeAccount", "KeyChange"]

log = logging.getLogger("certd.issuers.acme")


class KeyChange(JSONObjectWithFields):
    """The ``keyChange`` inner payload (RFC 8555 section 7.3.5), which ``acme.messages`` does not define.

    It is signed by the new key (proving its possession) and then sent inside a request signed by the old one.
    """

    account: str = jose_field("account")
    old_key: JWK = jose_field("oldKey", decoder=JWK.from_json)


class AcmeAccount:
    """One issuer's directory and account, and this thread's client for them; safe to use from many threads."""

    def __init__(
        self,
        name: str,
        config: AcmeIssuerConfig,
        accounts: AccountStore,
        *,
        attempts: int,
        backoff: float,
        sleep: Callable[[float], None],
    ) -> None:
        self.name = name
        self._config = config
        self._accounts = accounts
        self._attempts = attempts
        self._backoff = backoff
        self._sleep = sleep
        self._lock = threading.Lock()
        self._local = threading.local()
        self._directory: messages.Directory | None = None
        self._key: JWK | None = None
        self._account: messages.RegistrationResource | None = None
        self._generation = 0  # bumped by a key rollover: every thread's client is rebuilt with the new key

    def directory(self) -> messages.Directory:
        """The CA's directory, fetched on first use; ``IssuerError`` (``NotAcme``) when the URL is not ACME."""
        with self._lock:
            if self._directory is None:
                net = self._network(None, None)
                try:
                    self._directory = acme_client.ClientV2.get_directory(self._config.directory, net)
                except (DeserializationError, ValueError, KeyError) as exc:
                    raise IssuerError(
                        f"{self._config.directory} is not an ACME directory ({type(exc).__name__})",
                        reason="NotAcme",
                    ) from exc
                except acme_errors.ClientError as exc:
                    raise IssuerError(
                        f"{self._config.directory} is not an ACME directory (HTTP {status_of(net.last_response)})",
                        reason="NotAcme",
                    ) from exc
                if "newOrder" not in self._directory.to_partial_json():
                    self._directory = None
                    raise IssuerError(f"{self._config.directory} is not an ACME directory (no newOrder)",
                                      reason="NotAcme")
            return self._directory

    def client(self) -> acme_client.ClientV2:
        """This thread's client, made on first use with the shared directory and account.

        Made again after a key rollover (another thread's included), so no thread signs with the old key.
        """
        client: acme_client.ClientV2 | None = getattr(self._local, "client", None)
        if client is not None and getattr(self._local, "generation", -1) == self._generation:
            return client
        directory = self.directory()
        key, account = self._ensure_account(directory)
        client = acme_client.ClientV2(directory, self._network(key, account))
        self._local.client, self._local.generation = client, self._generation
        return client

    def register_again(self, lost: str, *, new_key: bool = False) -> str:
        """The CA no longer accepts account ``lost``: register again; the new account URL.

        A CA that was reset, or a staging CA wiped, no longer knows the account (``accountDoesNotExist``);
        waiting does not bring it back. The same key is registered again (a CA that lost its state accepts
        it as new); a CA that refuses that key (``unauthorized``) gets a new one. A deactivated account
        (RFC 8555 section 7.3.6: its key is refused for good) always gets a new key (``new_key``). Under the
        lock, and only if no other thread has done it already, so a burst of failing orders registers once.
        """
        directory = self.directory()
        with self._lock:
            if self._account is not None and self._account.uri != lost:
                return str(self._account.uri)
            stored = self._accounts.load_account(self.name, self._config.directory)
            key_pem = stored[0] if stored is not None and not new_key else _new_key_pem()
            try:
                uri = self._register(directory, JWKEC.load(key_pem))
            except messages.Error as err:
                if err.code != "unauthorized":
                    raise
                key_pem = _new_key_pem()
                uri = self._register(directory, JWKEC.load(key_pem))
            self._accounts.save_account(self.name, self._config.directory, key_pem, uri)
            self._key = JWKEC.load(key_pem)
            self._account = messages.RegistrationResource(body=messages.Registration(), uri=uri)
            self._generation += 1  # every thread's client is rebuilt with the new account
        log.warning("%s: the CA no longer knew account %s; registered again as %s", self.name, lost, uri)
        return uri

    @property
    def uri(self) -> str | None:
        """The account URL in use, once known."""
        return str(self._account.uri) if self._account is not None else None

    def network(self) -> AcmeNetwork | None:
        """This thread's network if it has made one: its last response explains the error being converted."""
        net: AcmeNetwork | None = getattr(getattr(self._local, "client", None), "net", None)
        return net

    def rollover(self) -> str:
        """Replace the account key with a new one at the CA, then in the inventory; returns the account URL.

        The CA switches first: if storing the new key failed after that, the old key would be useless,
        so the new key is stored in the same step and a failure there is reported loudly.
        """
        client = self.client()
        old_key = client.net.key
        assert old_key is not None and self._account is not None
        url = client.directory["keyChange"]
        new_pem = _new_key_pem()
        new_key = JWKEC.load(new_pem)
        payload = KeyChange(account=self._account.uri, old_key=old_key.public_key()).json_dumps().encode()
        inner = acme_jws.JWS.sign(payload, key=new_key, alg=ES256, nonce=None, url=url)
        signed_post(client, url, inner)  # the outer JWS: signed by the old key, with the account's kid
        with self._lock:
            self._accounts.save_account(self.name, self._config.directory, new_pem, self._account.uri)
            self._key = new_key
            self._generation += 1
        log.info("%s: account key rolled over for %s", self.name, self._account.uri)
        return str(self._account.uri)

    def _network(self, key: JWK | None, account: messages.RegistrationResource | None) -> AcmeNetwork:
        verify: bool | str = str(self._config.ca_bundle) if self._config.ca_bundle else True
        return AcmeNetwork(
            key=key,
            account=account,
            alg=ES256,
            verify_ssl=verify,
            user_agent=f"certd/{__version__}",
            timeout=max(1, int(self._config.timeout.total_seconds())),
            attempts=self._attempts,
            backoff=self._backoff,
            sleep=self._sleep,
        )

    def _ensure_account(self, directory: messages.Directory) -> tuple[JWK, messages.RegistrationResource]:
        """The stored account, or a new one registered and stored before any order is signed with it.

        Under the lock, so concurrent first orders register one account, not one per thread.
        """
        with self._lock:
            if self._key is not None and self._account is not None:
                return self._key, self._account
            stored = self._accounts.load_account(self.name, self._config.directory)
            if stored is not None:
                key_pem, uri = stored
                key = JWKEC.load(key_pem)
            else:
                key_pem = _new_key_pem()
                key, uri = JWKEC.load(key_pem), None
            if uri is None:
                uri = self._register(directory, key)
                self._accounts.save_account(self.name, self._config.directory, key_pem, uri)
                log.info("%s: ACME account registered at %s", self.name, uri)
            self._key = key
            self._account = messages.RegistrationResource(body=messages.Registration(), uri=uri)
            return key, self._account

    def _register(self, directory: messages.Directory, key: JWK) -> str:
        """Register ``key`` and return the account URL; a key the CA already knows keeps its existing account."""
        client = acme_client.ClientV2(directory, self._network(key, None))
        fields: dict[str, Any] = {"terms_of_service_agreed": True}
        if self._config.email:
            fields["email"] = self._config.email
        if self._config.eab_kid and self._config.eab_hmac_key_file:
            hmac_key = read_text(self._config.eab_hmac_key_file).strip()
            fields["external_account_binding"] = messages.ExternalAccountBinding.from_data(
                account_public_key=key.public_key(), kid=self._config.eab_kid, hmac_key=hmac_key,
                directory=directory,
            )
        elif client.external_account_required():
            raise IssuerError("the CA requires External Account Binding: set eab_kid and eab_hmac_key_file",
                              reason="EabRequired")
        try:
            regr = client.new_account(messages.NewRegistration.from_data(**fields))
        except acme_errors.ConflictError as conflict:  # the key already has an account: reuse it
            return str(conflict.location)
        return str(regr.uri)


def _new_key_pem() -> bytes:
    """A fresh account key, EC P-256 (ES256): small, fast to sign, and accepted by every ACME CA."""
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
