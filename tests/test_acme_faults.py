"""An ACME CA that hangs, resets or crawls, through a TCP fault proxy in front of real Pebble (issue 18).

A hung CA (accepting connections, never answering) used to hold an attempt for minutes with no visible
limit. Now every attempt has a deadline (``attempt_timeout``), each request's timeout shrinks to what the
attempt has left, the failure names the key to change, and the certificate is failing (backed off, retried)
instead of hanging. When the CA answers again, the next attempt renews.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from certd.config.load import load_config
from certd.core.status import Status
from certd.engine.app import App
from certd.reports.views import list_doc
from tests.conftest import WriteConfig
from tests.servers.fault_proxy import FaultProxy
from tests.servers.pebble import PebbleServer
from tests.test_issuer_acme import acme_config


@pytest.fixture
def proxied(pebble: PebbleServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(pebble.acme_port)
    yield proxy
    proxy.close()


def _config(pebble: PebbleServer, proxy: FaultProxy, tmp_path: Path, write_config: WriteConfig,
            attempt_timeout: str = "4s") -> Path:
    body = acme_config(pebble, tmp_path, {"edge": ["hang.example.test"]},
                       issuer_extra=f'attempt_timeout = "{attempt_timeout}"')  # each request's own: 30 s
    return write_config(body.replace(pebble.directory_url, f"https://127.0.0.1:{proxy.port}/dir"))


@pytest.mark.parametrize("mode", ["hang", "reset"])
def test_a_ca_that_hangs_or_resets_fails_the_attempt_in_bounded_time(
    mode: str, pebble: PebbleServer, proxied: FaultProxy, write_config: WriteConfig, tmp_path: Path
) -> None:
    app = App.open(load_config(_config(pebble, proxied, tmp_path, write_config)))
    try:
        assert app.pipeline.renew("edge").outcome == "renewed"  # the account and one certificate, CA healthy
        proxied.mode = mode
        started = time.monotonic()
        failed = app.pipeline.renew("edge", force=True)
        took = time.monotonic() - started
        assert (failed.outcome, failed.failed_step) == ("failed", "issue"), failed
        assert took < 12, took  # the 4 s attempt, not 30 s per request times its retries
        if mode == "hang":
            assert "issuers.pebble.attempt_timeout" in (failed.error or ""), failed.error
        row = app.inventory.certificate("edge")
        assert row is not None and row.failures == 1 and row.next_attempt_at is not None
        listed = {c["name"]: c["status"] for c in list_doc(app)["certificates"]}
        assert listed["edge"] == Status.FAILING

        proxied.mode = "forward"
        again = app.pipeline.renew("edge", force=True)
        assert (again.outcome, again.state) == ("renewed", "published"), again
        row = app.inventory.certificate("edge")
        assert row is not None and row.failures == 0
    finally:
        app.close()


def test_a_slow_ca_within_the_deadline_still_issues(
    pebble: PebbleServer, proxied: FaultProxy, write_config: WriteConfig, tmp_path: Path
) -> None:
    proxied.mode, proxied.delay = "slow", 0.2  # every chunk from the CA 200 ms late: slow, not dead
    app = App.open(load_config(_config(pebble, proxied, tmp_path, write_config, attempt_timeout="60s")))
    try:
        result = app.pipeline.renew("edge")
        assert result.outcome == "renewed", result
    finally:
        app.close()



def test_a_ca_hung_before_the_first_request_of_a_process_fails_in_bounded_time(
    pebble: PebbleServer, proxied: FaultProxy, write_config: WriteConfig, tmp_path: Path
) -> None:
    """A daemon that starts while the CA hangs: its first attempt must fetch the directory and find the account
    first, and those requests count against ``attempt_timeout`` too (they took 57 s against a 5 s deadline)."""
    config = load_config(_config(pebble, proxied, tmp_path, write_config))
    app = App.open(config)
    try:
        assert app.pipeline.renew("edge").outcome == "renewed"  # the account exists at the CA
    finally:
        app.close()
    proxied.mode = "hang"
    app = App.open(config)  # a new process: no directory, no account loaded yet
    try:
        started = time.monotonic()
        failed = app.pipeline.renew("edge", force=True)
        took = time.monotonic() - started
    finally:
        app.close()
    assert (failed.outcome, failed.failed_step) == ("failed", "issue"), failed
    assert took < 8, took  # the 4 s attempt
    assert "issuers.pebble.attempt_timeout" in (failed.error or ""), failed.error
