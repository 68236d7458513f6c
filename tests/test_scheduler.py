"""The scheduler over simulated months: real pipeline, real local CA, a fake clock.

The clock jumps from scan to scan: to the next wake-up the scheduler asks for,
but never less than one check interval, so 180 days take seconds, not months,
and renewals are at most one interval late (as with the daemon's interval scan).
The suite simulates a fleet of ``CERTD_SIM_CERTS`` (default 40) certificates;
``bench/fleet_sim.py`` runs this same test with 1,000 and more and records the
figures in ``bench/results/fleet_sim.md``.
"""

from __future__ import annotations

import itertools
import os
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certd.config.load import load_config
from certd.engine.app import App
from certd.engine.scheduler import Jobs, Scheduler
from certd.errors import IssuerUnavailable
from certd.issuers.base import Issued, IssueRequest
from certd.issuers.local_ca import LocalCA
from tests.conftest import FakeClock, WriteConfig

START = datetime(2026, 1, 1, tzinfo=UTC)
LIFETIMES = [("7d", 0.1), ("30d", 0.3), ("90d", 0.6)]
SIM_CERTS = 40  # every lifetime and the outage are covered: 20 flaky certificates (5 due in the outage), 20 not
BUDGET_PER_CERT = 1.2  # certificates per registered domain (all names under example.test) per 7 days, per cert


class _FlakyCA(LocalCA):
    """The real local CA, unavailable for some certificates during a window of simulated time."""

    down: tuple[datetime, datetime] = (START, START)
    flaky: frozenset[str] = frozenset()
    attempts: dict[str, list[datetime]]

    def issue(self, request: IssueRequest) -> Issued:
        now = self._clock.now()
        self.attempts.setdefault(request.certificate, []).append(now)
        if request.certificate in self.flaky and self.down[0] <= now < self.down[1]:
            raise IssuerUnavailable(f"issuer local: simulated outage for {request.certificate}")
        return super().issue(request)


def _budget(n: int) -> int:
    """As tight as for 1,000 certificates (1,200 per 7 days): the first week issues n and renews the 7-day ones."""
    return round(n * BUDGET_PER_CERT)


def _config_body(n: int, rng: random.Random) -> tuple[str, dict[str, timedelta]]:
    body = ('[issuers.local]\ntype = "local-ca"\ndir = "{tmp}/ca"\n'
            f"rate_limits = {{ certificates_per_domain = {_budget(n)}, new_orders = 5000 }}\n")
    lifetimes: dict[str, timedelta] = {}
    for i in range(n):
        lifetime = rng.choices([lt for lt, _ in LIFETIMES], weights=[w for _, w in LIFETIMES])[0]
        lifetimes[f"c{i:04d}"] = timedelta(days=int(lifetime[:-1]))
        body += (f'\n[certificates.c{i:04d}]\nissuer = "local"\nnames = ["c{i}.example.test"]\n'
                 f'lifetime = "{lifetime}"\noutput_dir = "{{tmp}}/out/c{i:04d}"\nkeep = 0\n')
    return body, lifetimes


CHECK_INTERVAL = timedelta(minutes=5)


def _simulate(app: App, clock: FakeClock, days: int, exact: tuple[datetime, datetime] | None = None) -> int:
    """Scan as the daemon's interval job does, skipping the intervals in which nothing is due.

    The daemon's one-off timer fires at the wake-up itself; scans here are at least ``CHECK_INTERVAL`` apart to
    keep 180 days of 1,000 certificates quick, except inside ``exact``, where they follow every wake-up so that
    backoff retries (1 min, 2 min, ...) happen when the daemon would make them.
    """
    scheduler = Scheduler(lambda: app, clock, workers=1, inline=True)
    end = START + timedelta(days=days)
    scans = 0
    while clock.now() < end:
        scheduler.scan()
        scans += 1
        wakeup = scheduler.recompute_wakeup()
        assert wakeup is not None and wakeup > clock.now()
        precise = exact is not None and exact[0] <= clock.now() < exact[1]
        clock.current = min(wakeup if precise else max(wakeup, clock.now() + CHECK_INTERVAL), end)
    return scans


@pytest.mark.slow
def test_fleet_over_180_days(write_config: WriteConfig, tmp_path: Path) -> None:
    n = int(os.environ.get("CERTD_SIM_CERTS", SIM_CERTS))
    rng = random.Random(42)
    body, lifetimes = _config_body(n, rng)
    clock = FakeClock(START)
    config = load_config(write_config(body, db_url=f"sqlite:///{tmp_path}/certd.db"))
    ca = _FlakyCA("local", config.issuers["local"], clock=clock)  # type: ignore[arg-type]
    ca.attempts = {}
    ca.flaky = frozenset(list(lifetimes)[:20])
    # 30-day certificates are due at day 40 (two cycles of 2/3, less jitter): five of the flaky ones are.
    ca.down = (START + timedelta(days=40) - timedelta(hours=1), START + timedelta(days=40, hours=6))
    app = App.open(config, clock=clock, prober=None, issuers={"local": ca})
    try:
        _simulate(app, clock, 180, exact=(ca.down[0] - CHECK_INTERVAL, ca.down[1] + timedelta(hours=7)))
        for name, lifetime in lifetimes.items():
            versions = sorted(app.inventory.versions(name), key=lambda v: v.created_at)
            issued = [v for v in versions if v.state != "failed"]
            # Renewed once per cycle: never more often than the lifetime rule says (minus jitter).
            expected = 180 / (lifetime.days * (0.5 if lifetime < timedelta(days=10) else 2 / 3))
            assert abs(len(issued) - expected) <= 2, (name, len(issued), expected)
            for old, new in itertools.pairwise(issued):
                assert new.created_at < old.not_after, f"{name} expired before renewal"
                assert old.renew_at is not None and new.created_at >= old.renew_at, f"{name} renewed early"
        # Jitter spreads certificates issued in the same instant.
        firsts = {app.inventory.versions(n)[-1].renew_at for n in lifetimes if lifetimes[n] == timedelta(days=90)}
        assert len(firsts) > 0.9 * sum(1 for lt in lifetimes.values() if lt == timedelta(days=90))
        # Failures back off: 1m, 2m, 4m, ... (plus up to 10 %) until the outage ends, then succeed.
        backed_off = 0
        for name in ca.flaky:
            during = [t for t in ca.attempts[name] if ca.down[0] <= t < ca.down[1]]
            if len(during) < 3:
                continue  # this certificate was not due during the outage
            backed_off += 1
            gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(during)]
            for i, gap in enumerate(gaps):
                base = 60 * 2**i
                assert base <= gap <= base * 1.1 + 1, (name, gaps)
            after = [t for t in ca.attempts[name] if t >= ca.down[1]]
            assert after, f"{name} never retried after the outage"
        assert backed_off >= 5, "the outage must hit the flaky certificates that were due"
        row_errors = [r.name for r in app.inventory.certificates() if r.last_error]
        assert row_errors == []
        # The budget was never exceeded in any 7-day window.
        issued_at = sorted(v.created_at for name in lifetimes for v in app.inventory.versions(name))
        lo = 0
        for hi, at in enumerate(issued_at):
            while issued_at[lo] <= at - timedelta(days=7):
                lo += 1
            assert hi - lo + 1 <= _budget(n)
    finally:
        app.close()


def test_scan_submits_due_work_once_and_jobs_coalesce(write_config: WriteConfig, sqlite_url: str) -> None:
    body, _ = _config_body(5, random.Random(1))
    clock = FakeClock(START)
    config = load_config(write_config(body, db_url=sqlite_url))
    app = App.open(config, clock=clock,
                   issuers={"local": LocalCA("local", config.issuers["local"], clock=clock)})  # type: ignore[arg-type]
    try:
        scheduler = Scheduler(lambda: app, clock, workers=1, inline=True)
        assert len(scheduler.scan()) == 5
        assert scheduler.scan() == []
        wakeup = scheduler.recompute_wakeup()
        assert wakeup is not None and wakeup > START + timedelta(days=3)
    finally:
        app.close()


def test_jobs_table_one_open_job_per_certificate() -> None:
    jobs = Jobs()
    first, created = jobs.open_or_create("edge", "renew", True)
    again, created_again = jobs.open_or_create("edge", "renew", True)
    assert created and not created_again and again is first
    other, _ = jobs.open_or_create("edge", "deploy", False)
    assert other is not first
    from certd.engine.pipeline import Result

    jobs.finish(first, Result("edge", "renewed"))
    assert jobs.get(first.id) is first and first.state == "succeeded"
    fresh, created = jobs.open_or_create("edge", "renew", True)
    assert created and fresh is not first
    assert replace(Result("x", "failed"), name="y").ok is False
