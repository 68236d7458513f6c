"""A CA that forgot the account (issue 18, case 1): certd registers again and renews, instead of backing off a day.

Real Pebble, restarted with its state lost (every account gone, a new root), as a CA reset or a staging wipe
would leave it. Before the fix, ``accountDoesNotExist`` was not retryable: 24 h of backoff, the edge expired.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from acme import client as acme_client
from acme import messages
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from certd.config.load import load_config
from certd.core.kinds import EventKind
from certd.engine.app import App
from tests.conftest import WriteConfig
from tests.servers.pebble import PebbleServer
from tests.test_issuer_acme import NO_REUSE, acme_config


def test_a_ca_that_lost_the_account_gets_it_registered_again(
    pebble_factory: Callable[..., PebbleServer], write_config: WriteConfig, tmp_path: Path
) -> None:
    pebble = pebble_factory(extra_env=NO_REUSE)
    path = write_config(acme_config(pebble, tmp_path, {"edge": ["lost.example.test"]}))
    config = load_config(path)
    app = App.open(config)
    try:
        first = app.pipeline.renew("edge")
        assert first.outcome == "renewed", first
        stored = app.inventory.load_account("pebble", pebble.directory_url)
        assert stored is not None
        old_uri = stored[1]
    finally:
        app.close()

    old_root = (tmp_path / "pebble-roots.pem").read_bytes()
    pebble.restart()  # every account is gone; the root is new: trust both, as a real CA keeps its root
    (tmp_path / "pebble-roots.pem").write_bytes(old_root + pebble.roots_pem())

    app = App.open(load_config(path))
    try:
        second = app.pipeline.renew("edge", force=True)
        assert (second.outcome, second.state) == ("renewed", "published"), second
        stored = app.inventory.load_account("pebble", pebble.directory_url)
        assert stored is not None and stored[1] != old_uri
        said = [e for e in app.inventory.events("edge") if e.kind == EventKind.ACCOUNT_REGISTERED_AGAIN]
        assert len(said) == 1 and old_uri in said[0].message and stored[1] in said[0].message
        row = app.inventory.certificate("edge")
        assert row is not None and row.failures == 0 and row.next_attempt_at is None

        third = app.pipeline.renew("edge", force=True)  # the new account is used from now on, no second notice
        assert third.outcome == "renewed"
        assert sum(e.kind == EventKind.ACCOUNT_REGISTERED_AGAIN for e in app.inventory.events("edge")) == 1
    finally:
        app.close()


def _deactivate(pebble: PebbleServer, key_pem: bytes, uri: str) -> None:
    """The operator (or the CA) deactivates the account (RFC 8555 section 7.3.6), through the acme library."""
    account = messages.RegistrationResource(body=messages.Registration(), uri=uri)
    for _ in range(10):  # Pebble rejects 5% of nonces; the library retries once
        net = acme_client.ClientNetwork(JWKEC.load(key_pem), account=account, alg=ES256,
                                        verify_ssl=str(pebble.ca_bundle))
        try:
            acme_client.ClientV2(acme_client.ClientV2.get_directory(pebble.directory_url, net),
                                 net).deactivate_registration(account)
            return
        except messages.Error as err:
            if err.code != "badNonce":
                raise
    raise AssertionError("could not deactivate the account")


def test_a_deactivated_account_is_replaced_by_a_new_one(
    pebble_factory: Callable[..., PebbleServer], write_config: WriteConfig, tmp_path: Path
) -> None:
    pebble = pebble_factory(extra_env=NO_REUSE)
    app = App.open(load_config(write_config(acme_config(pebble, tmp_path, {"edge": ["off.example.test"]}))))
    try:
        assert app.pipeline.renew("edge").outcome == "renewed"
        stored = app.inventory.load_account("pebble", pebble.directory_url)
        assert stored is not None and stored[1] is not None
        old_key, old_uri = stored
        _deactivate(pebble, old_key, old_uri)

        again = app.pipeline.renew("edge", force=True)
        assert again.outcome == "renewed", again
        stored = app.inventory.load_account("pebble", pebble.directory_url)
        assert stored is not None and stored[1] != old_uri and stored[0] != old_key  # a new key: the old is refused
        said = [e.message for e in app.inventory.events("edge") if e.kind == EventKind.ACCOUNT_REGISTERED_AGAIN]
        assert len(said) == 1 and "deactivated" in said[0] and old_uri in said[0]
    finally:
        app.close()
