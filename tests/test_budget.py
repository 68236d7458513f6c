"""Rate-limit budgets, counted in the shared inventory on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certd.app import App
from certd.budget import Budget, names_key, registered_domain
from certd.config import RateLimitsConfig, load_config
from certd.db import create_db_engine, session_factory, upgrade
from certd.errors import RateLimited
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


def test_pipeline_holds_back_and_backs_off(write_config: WriteConfig, sqlite_url: str, tmp_path: Path) -> None:
    body = LOCAL_CA_CONFIG.replace('dir = "{tmp}/local-ca"', 'dir = "{tmp}/local-ca"\n'
                                   "rate_limits = { certificates_per_domain = 2, duplicate_certificates = 10 }")
    clock = FakeClock(datetime.now(UTC))
    app = App.open(load_config(write_config(body, db_url=sqlite_url)), clock=clock)
    try:
        assert app.pipeline.renew("edge").outcome == "renewed"
        clock.advance(timedelta(seconds=1))
        assert app.pipeline.renew("edge", force=True).outcome == "renewed"
        clock.advance(timedelta(seconds=1))
        held = app.pipeline.renew("edge", force=True)
        assert (held.outcome, held.failed_step, held.reason) == ("failed", "issue", "RateLimited")
        row = app.inventory.certificate("edge")
        assert row is not None and row.next_attempt_at is not None
        assert row.next_attempt_at >= clock.now() + timedelta(days=6)
        assert len(app.inventory.versions("edge")) == 2  # nothing was ordered
    finally:
        app.close()
