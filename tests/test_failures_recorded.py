"""Every failure is a recorded failure: a fault injected at each step boundary ends the same way.

For each boundary of a renewal (key, issuer construction, issue, record,
check, publisher construction, publish, deploy, verify, rollback) a fault is
raised through the pipeline's fault seam while the daemon's scheduler renews
a due certificate from the real local CA. Each time: an event names the
certificate and the step, ``failures``/``last_error``/``next_attempt_at``
are set, the old certificate stays published, and the CA is not asked again
before the backoff has passed; after it, the renewal succeeds and clears it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from certd.config.load import load_config
from certd.config.model import LocalCAIssuerConfig
from certd.core.policy import Reason
from certd.deploy.publish import published_serial
from certd.engine.app import App
from certd.engine.scheduler import Scheduler
from certd.issuers.base import Issued, IssueRequest
from certd.issuers.local_ca import LocalCA
from certd.pki.revocation import RevocationReason
from tests.conftest import FakeClock, WriteConfig

CONFIG = """
[database]
url = "sqlite:///{tmp}/certd.db"

[issuers.local]
type = "local-ca"
dir = "{tmp}/local-ca"

[deploy.hook]
type = "command"
argv = ["true"]

[certificates.web]
issuer = "local"
names = ["web.example.test"]
lifetime = "72h"
output_dir = "{tmp}/out/web"
deploy = ["hook"]
rollback = true
"""

VERIFIED = """
[certificates.web]
issuer = "local"
names = ["web.example.test"]
lifetime = "72h"
output_dir = "{tmp}/out/web"
deploy = ["hook"]
verify = [{ endpoint = "127.0.0.1:9", sni = "web.example.test" }]
"""

# boundary the fault is injected at -> the step users see
BOUNDARIES = {
    "key": "key",
    "issuer": "issue",
    "issue": "issue",
    "record": "record",
    "check": "check",
    "publisher": "publish",
    "publish": "publish",
    "deploy": "deploy",
    "verify": "verify",
    "rollback": "deploy",
}
PUBLISHED_BEFORE = {"key", "issuer", "issue", "record", "check", "publisher"}


class CountingCA:
    """The real local CA, counting the orders it is given."""

    def __init__(self, ca: LocalCA) -> None:
        self.name = ca.name
        self._ca = ca
        self.orders = 0

    def issue(self, request: IssueRequest) -> Issued:
        self.orders += 1
        return self._ca.issue(request)

    def revoke(self, certificate: x509.Certificate, reason: RevocationReason) -> None:
        self._ca.revoke(certificate, reason)

    def roots(self) -> list[x509.Certificate] | None:
        return self._ca.roots()

    def ca_chain(self) -> list[x509.Certificate]:
        return self._ca.ca_chain()


class Faults:
    """Raise at one boundary (and, for rollback, at the deploy that causes it)."""

    def __init__(self, boundary: str) -> None:
        self.boundary = boundary
        self.armed = False
        self.hits: list[str] = []

    def __call__(self, op: str, at: str) -> None:
        if not self.armed:
            return
        wanted = {"deploy", "rollback"} if self.boundary == "rollback" else {self.boundary}
        if at in wanted:
            if self.boundary == "rollback" and at == "deploy" and "deploy" in self.hits:
                return  # the rollback's own deploy is reached only through the rollback step
            self.hits.append(at)
            raise RuntimeError(f"injected fault at {at}")


def _open(write_config: WriteConfig, body: str) -> tuple[App, FakeClock, CountingCA, Scheduler]:
    """The app on a fake clock, its local CA counting orders, and the daemon's scheduler running inline."""
    config = load_config(write_config(body))
    clock = FakeClock(datetime.now(UTC))
    issuer_cfg = config.issuers["local"]
    assert isinstance(issuer_cfg, LocalCAIssuerConfig)
    ca = CountingCA(LocalCA("local", issuer_cfg, clock=clock))
    app = App.open(config, clock=clock, prober=None, issuers={"local": ca})  # type: ignore[dict-item]
    return app, clock, ca, Scheduler(lambda: app, clock, workers=1, inline=True)


@pytest.mark.parametrize("boundary", list(BOUNDARIES))
def test_a_fault_at_every_boundary_is_recorded_and_backs_off(
    boundary: str, write_config: WriteConfig, tmp_path: Path
) -> None:
    body = CONFIG
    if boundary == "verify":
        body = CONFIG[: CONFIG.index("[certificates.web]")] + VERIFIED
    app, clock, ca, scheduler = _open(write_config, body)
    faults = Faults(boundary)
    app.services.fault = faults
    try:
        if boundary != "verify":  # verify to a closed port would fail the baseline: no old version there
            first = app.pipeline.renew("web")
            assert first.outcome == "renewed", first
            clock.advance(timedelta(hours=40))  # past the renewal time of a 72 h certificate
        old_serial = published_serial(tmp_path / "out/web")
        orders = ca.orders

        faults.armed = True
        assert scheduler.scan() == ["web"]
        step = BOUNDARIES[boundary]
        assert faults.hits, "the fault seam was never reached"
        failed = [e for e in app.inventory.events("web") if e.kind == "renewal.failed"]
        assert len(failed) == 1, [(e.kind, e.message) for e in app.inventory.events("web")]
        assert (failed[0].certificate, failed[0].step, failed[0].level) == ("web", step, "error")
        assert "injected fault" in failed[0].message
        row = app.inventory.certificate("web")
        assert row is not None and row.failures == 1 and row.next_attempt_at is not None
        assert row.last_error is not None and row.last_error.startswith(f"{step}: ")
        assert row.next_attempt_at > clock.now()
        if boundary in PUBLISHED_BEFORE:
            assert published_serial(tmp_path / "out/web") == old_serial  # the old certificate stays
        if boundary == "rollback":
            kinds = [e.kind for e in app.inventory.events("web")]
            assert "rollback.failed" in kinds
        ordered = ca.orders

        # Before the backoff passes, scans order nothing.
        for _ in range(3):
            clock.advance(timedelta(seconds=10))
            assert scheduler.scan() == []
        assert ca.orders == ordered
        redeployed = boundary in ("verify", "rollback")
        assert app.pipeline.verdicts()["web"].reason is (Reason.REDEPLOY if redeployed else Reason.BACKING_OFF)

        # After it, a healthy retry clears the record: a new order where nothing was published, a new deploy
        # where the new version is current but failed, or where the rollback restored the old version and the
        # new one is rolled out again (no order: it was issued already).
        faults.armed = False
        clock.current = row.next_attempt_at + timedelta(seconds=1)
        if boundary == "verify":
            app.config.certificates["web"].verify.clear()  # the closed port stays closed
        scheduler.scan()
        redeploy = boundary in ("verify", "rollback", "deploy")
        assert ca.orders == ordered + (0 if redeploy else 1)
        row = app.inventory.certificate("web")
        assert row is not None and (row.failures, row.last_error, row.next_attempt_at) == (0, None, None)
        assert orders <= ordered <= orders + 1
    finally:
        app.close()


def test_a_failure_retrying_cannot_fix_waits_an_hour_even_near_the_deadline(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    """A check the issued certificate fails (not retryable) is ordered once, then held back at least an hour."""
    app, clock, ca, scheduler = _open(write_config, CONFIG)
    try:
        assert app.pipeline.renew("web").outcome == "renewed"
        # Inside the hard deadline (72 h - 7.2 h) with 6 h left: the wait is an hour (a quarter of what is left
        # would be more); closer to expiry it shrinks so it never sleeps past it (tests/test_policy.py).
        clock.advance(timedelta(hours=66))
        # The CA now signs for the wrong name: the check fails on every attempt, retrying cannot help.
        real_issue = ca._ca.issue

        def wrong_names(request: IssueRequest) -> Issued:
            return real_issue(IssueRequest(certificate=request.certificate, names=("other.example.test",),
                                           key_type=request.key_type, csr=_csr_for(request), lifetime=request.lifetime))

        ca._ca.issue = wrong_names  # type: ignore[method-assign]
        assert scheduler.scan() == ["web"]
        row = app.inventory.certificate("web")
        assert row is not None and row.failures == 1 and row.last_reason in ("NamesNotCovered", "KeyMismatch")
        assert row is not None and row.next_attempt_at is not None
        assert row.next_attempt_at >= clock.now() + timedelta(hours=1)
        for _ in range(5):
            clock.advance(timedelta(minutes=5))
            scheduler.scan()
        assert ca.orders == 2  # the first and the failing one, nothing more
    finally:
        app.close()


def _csr_for(request: IssueRequest) -> Any:
    from certd.pki.keys import KeyType, build_csr, generate_key

    return build_csr(generate_key(KeyType(str(request.key_type))), ["other.example.test"])


def test_a_real_publish_fault_orders_once_then_backs_off(write_config: WriteConfig, tmp_path: Path) -> None:
    """The output directory's parent turns into a file after the config was checked: one order, then backoff."""
    app, clock, ca, scheduler = _open(write_config, CONFIG)
    try:
        (tmp_path / "out").write_text("not a directory")  # publish cannot create out/web
        assert scheduler.scan() == ["web"]
        assert ca.orders == 1
        row = app.inventory.certificate("web")
        assert row is not None and row.failures == 1 and (row.last_error or "").startswith("publish: ")
        for _ in range(5):
            clock.advance(timedelta(seconds=5))
            assert scheduler.scan() == []
        assert ca.orders == 1  # no second order before the backoff passes
        events = [e for e in app.inventory.events("web") if e.kind == "renewal.failed"]
        assert len(events) == 1 and events[0].step == "publish"
    finally:
        app.close()
