"""An ACME CA that answers wrongly, aimed at one phase of a renewal, through the HTTP fault proxy in front of
real Pebble (issue 18): 5xx and ``rateLimited`` answers, a ``badNonce`` storm, an order stuck in
``processing``, a certificate that does not match the CSR.

Each fails the attempt in bounded time, is recorded with its step and cause (``failing``, backed off), leaves
the served certificate alone, and the next attempt after the fault ends renews.
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
from tests.servers import acme_faults
from tests.servers.acme_faults import Phase
from tests.servers.http_fault_proxy import HttpFaultProxy, Rule
from tests.servers.pebble import PebbleServer
from tests.test_issuer_acme import acme_config


@pytest.fixture
def proxy(pebble_fresh_authz: PebbleServer) -> Iterator[HttpFaultProxy]:
    front = acme_faults.proxy_for(pebble_fresh_authz)
    yield front
    front.close()


@pytest.fixture
def app(pebble_fresh_authz: PebbleServer, proxy: HttpFaultProxy, write_config: WriteConfig,
        tmp_path: Path) -> Iterator[App]:
    pebble = pebble_fresh_authz
    body = acme_config(pebble, tmp_path, {"edge": ["faults.example.test"]},
                       issuer_extra='attempt_timeout = "6s"\n[issuers.pebble.rate_limits]\n'
                                    "duplicate_certificates = 1000\n")
    the_app = App.open(load_config(write_config(body.replace(pebble.directory_url, f"{proxy.url}/dir"))))
    first = the_app.pipeline.renew("edge")
    assert first.outcome == "renewed", first
    yield the_app
    the_app.close()


CASES = {
    "server-error-at-order": (lambda: [acme_faults.server_error(Phase.ORDER)], "issue"),
    "rate-limited-at-finalize": (lambda: [acme_faults.rate_limited(Phase.FINALIZE, retry_after=2)], "issue"),
    "bad-nonce-storm-at-challenge": (lambda: [acme_faults.bad_nonce(Phase.CHALLENGE)], "issue"),
    "stuck-processing": (acme_faults.stuck_processing, "issue"),
    "wrong-certificate": (lambda: [acme_faults.wrong_certificate()], "check"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_ca_answering_wrongly_at_one_phase_is_recorded_and_the_next_attempt_renews(
    case: str, app: App, proxy: HttpFaultProxy
) -> None:
    make_rules, step = CASES[case]
    served = app.inventory.versions("edge")[0].serial
    rules: list[Rule] = make_rules()
    for rule in rules:
        proxy.add(rule)
    started = time.monotonic()
    failed = app.pipeline.renew("edge", force=True)
    took = time.monotonic() - started
    assert (failed.outcome, failed.failed_step) == ("failed", step), failed
    assert took < 15, took
    assert all(rule.hits for rule in rules[:1]), "the fault was never hit: the case proves nothing"
    row = app.inventory.certificate("edge")
    assert row is not None and row.failures == 1 and row.next_attempt_at is not None and row.last_error
    listed = {c["name"]: c for c in list_doc(app)["certificates"]}
    assert listed["edge"]["status"] == Status.FAILING and listed["edge"]["serial"] == served

    proxy.clear()
    again = app.pipeline.renew("edge", force=True)
    assert again.outcome == "renewed", again
    row = app.inventory.certificate("edge")
    assert row is not None and row.failures == 0
