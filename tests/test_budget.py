"""Rate-limit budgets, counted in the shared inventory on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from certd.config.load import load_config
from certd.config.model import RateLimitsConfig
from certd.core.kinds import Step
from certd.core.policy import Reason, hard_deadline
from certd.engine.app import App
from certd.engine.budget import BUDGET_REASON, Budget, names_key, registered_domain
from certd.errors import RateLimited
from certd.inventory.db import create_db_engine, session_factory, upgrade
from tests.conftest import LOCAL_CA_CONFIG, FakeClock, WriteConfig

T0 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("name", "domain"),
    [
        ("a.b.example.com", "example.com"),
        ("www.example.co.uk", "example.co.uk"),
        ("*.wild.example.org", "example.org"),
        ("svc.internal", "svc.internal"),
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8::1", "2001:db8::1"),
    ],
)
def test_registered_domain(name: str, domain: str) -> None:
    assert registered_domain(name) == domain


def test_names_key_ignores_order_and_case() -> None:
    assert names_key(["B.example.com", "a.example.com"]) == names_key(["a.example.com", "b.example.com"])


@pytest.fixture
def budget(db_url: str) -> Budget:
    engine = create_db_engine(db_url)
    upgrade(engine)
    limits = RateLimitsConfig(certificates_per_domain=3, window=timedelta(days=7), duplicate_certificates=2,
                              new_orders=10, orders_window=timedelta(hours=3))
    return Budget(session_factory(engine), "public", limits)


def _issue(budget: Budget, name: str, names: list[str], at: datetime, exempt: bool = False) -> None:
    budget.reserve(name, names, at, exempt=exempt)


def test_certificates_per_domain_slide_out_of_the_window(budget: Budget) -> None:
    for i in range(3):
        _issue(budget, f"c{i}", [f"h{i}.example.com"], T0 + timedelta(hours=i))
    with pytest.raises(RateLimited) as info:
        budget.reserve("c3", ["h3.example.com"], T0 + timedelta(days=1), exempt=False)
    assert "certificates for example.com" in str(info.value)
    assert info.value.retry_after == timedelta(days=6)  # the first one leaves the window then
    _issue(budget, "other", ["x.example.net"], T0 + timedelta(days=1))  # another domain is unaffected
    _issue(budget, "c3", ["h3.example.com"], T0 + timedelta(days=7, minutes=1))
    assert budget.used(T0 + timedelta(days=7, minutes=1), "example.com") == 3


def test_duplicates_and_ari_exemption(budget: Budget) -> None:
    names = ["dup.example.org"]
    _issue(budget, "d", names, T0)
    _issue(budget, "d", names, T0 + timedelta(minutes=1))
    with pytest.raises(RateLimited, match="duplicate certificates"):
        budget.reserve("d", names, T0 + timedelta(minutes=2), exempt=False)
    _issue(budget, "d", names, T0 + timedelta(minutes=3), exempt=True)  # ARI `replaces`: not counted
    assert budget.used(T0 + timedelta(minutes=3), "example.org") == 2


def test_new_orders_per_account(budget: Budget) -> None:
    for i in range(10):
        budget.reserve(f"o{i}", [f"o{i}.example{i}.com"], T0 + timedelta(minutes=i), exempt=False)
    with pytest.raises(RateLimited, match="new orders"):
        budget.reserve("o10", ["o10.example10.com"], T0 + timedelta(minutes=11), exempt=False)
    budget.reserve("o10", ["o10.example10.com"], T0 + timedelta(hours=3, minutes=1), exempt=False)


def test_concurrent_workers_cannot_overspend(budget: Budget) -> None:
    ok: list[int] = []
    barrier = threading.Barrier(12)

    def worker(i: int) -> None:
        barrier.wait()
        try:
            budget.reserve(f"w{i}", [f"w{i}.race.example"], T0, exempt=False)
            ok.append(i)
        except RateLimited:
            pass

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ok) == 3
    assert budget.used(T0, "race.example") == 3


def test_failed_issuance_gives_the_certificate_units_back(budget: Budget) -> None:
    for i in range(3):
        reservation = budget.reserve(f"f{i}", [f"f{i}.fail.example"], T0, exempt=False)
        budget.release(reservation)
    assert budget.used(T0, "fail.example") == 0
    _issue(budget, "f3", ["f3.fail.example"], T0)


def test_budget_holds_back_until_the_hard_deadline_only(write_config: WriteConfig, sqlite_url: str) -> None:
    """The budget refuses a due renewal, backs off no later than the hard deadline, and is not asked inside it."""
    body = LOCAL_CA_CONFIG.replace('dir = "{tmp}/local-ca"', 'dir = "{tmp}/local-ca"\n'
                                   "rate_limits = { certificates_per_domain = 1, duplicate_certificates = 10 }")
    clock = FakeClock(datetime.now(UTC))
    app = App.open(load_config(write_config(body, db_url=sqlite_url)), clock=clock)
    try:
        assert app.pipeline.renew("backend").outcome == "renewed"
        version = app.inventory.current_version("backend")
        assert version is not None
        clock.advance(timedelta(hours=40))  # past the renewal time of a 72 h certificate, before its deadline
        held = app.pipeline.renew("backend")
        assert (held.outcome, held.failed_step, held.reason) == ("failed", "issue", BUDGET_REASON)
        assert "per 7d" in (held.error or "")
        row = app.inventory.certificate("backend")
        deadline = hard_deadline(version.not_before, version.not_after)
        assert row is not None and row.next_attempt_at is not None and row.last_reason == BUDGET_REASON
        assert clock.now() < row.next_attempt_at <= deadline  # never held past the deadline
        assert len(app.inventory.versions("backend")) == 1  # nothing was ordered
        assert app.pipeline.verdicts()["backend"].reason is Reason.BACKING_OFF

        clock.advance(deadline - clock.now() + timedelta(minutes=5))  # inside the hard deadline
        late = app.pipeline.renew("backend")
        assert late.outcome == "renewed", late
        kinds = [e.kind for e in app.inventory.events("backend")]
        assert "budget.overridden" in kinds
        row = app.inventory.certificate("backend")
        assert row is not None and (row.failures, row.last_error, row.next_attempt_at) == (0, None, None)
    finally:
        app.close()


def test_force_overrides_the_budget_and_is_logged(write_config: WriteConfig, sqlite_url: str) -> None:
    body = LOCAL_CA_CONFIG.replace('dir = "{tmp}/local-ca"', 'dir = "{tmp}/local-ca"\n'
                                   "rate_limits = { certificates_per_domain = 1, duplicate_certificates = 1 }")
    app = App.open(load_config(write_config(body, db_url=sqlite_url)))
    try:
        assert app.pipeline.renew("edge").outcome == "renewed"
        forced = app.pipeline.renew("edge", force=True)
        assert forced.outcome == "renewed", forced
        events = [e for e in app.inventory.events("edge") if e.kind == "budget.overridden"]
        assert len(events) == 1 and "forced" in events[0].message
        budget = app.services.budget("local")
        assert budget is not None and budget.used(datetime.now(UTC), "example.test") == 2  # still counted
    finally:
        app.close()


@pytest.mark.parametrize(
    ("directory", "per_domain"),
    [
        ("https://acme-v02.api.letsencrypt.org/directory", 50),
        ("https://acme-staging-v02.api.letsencrypt.org/directory", 30000),
        ("https://127.0.0.1:14000/dir", None),
        ("https://acme.internal.example/directory", None),
    ],
)
def test_budgets_default_by_ca(write_config: WriteConfig, directory: str, per_domain: int | None) -> None:
    body = f'''
[issuers.public]
type = "acme"
directory = "{directory}"

[issuers.off]
type = "acme"
directory = "https://acme-v02.api.letsencrypt.org/directory"
rate_limits = false
'''
    config = load_config(write_config(body))
    limits = config.issuers["public"].rate_limits
    assert (limits.certificates_per_domain if limits else None) == per_domain
    assert config.issuers["off"].rate_limits is None


def test_reload_ends_budget_backoffs_but_keeps_the_cas_own(write_config: WriteConfig, sqlite_url: str) -> None:
    """SIGHUP re-evaluates every held-back certificate at once, except those the CA itself rate-limited."""
    from certd.daemon import Daemon

    path = write_config(LOCAL_CA_CONFIG, db_url=sqlite_url)
    daemon = Daemon(path, load_config(path))
    try:
        inv = daemon.app.inventory
        now = datetime.now(UTC)
        later = now + timedelta(days=6)
        inv.record_failure("edge", now, step=Step.ISSUE, error="issue: certd's budget ... is spent",
                           reason=BUDGET_REASON, backoff=lambda _: later)
        inv.record_failure("backend", now, step=Step.ISSUE, error="issue: rateLimited: too many", reason="rateLimited",
                           backoff=lambda _: later)
        daemon.reload()
        edge, backend = inv.certificate("edge"), inv.certificate("backend")
        assert edge is not None and backend is not None
        assert edge.next_attempt_at is None or edge.next_attempt_at < later  # re-evaluated (and renewed) at once
        assert backend.next_attempt_at == later
        assert "backoff.cleared" in [e.kind for e in daemon.app.inventory.events("edge")]
    finally:
        daemon.scheduler.shutdown()
        daemon.app.close()
