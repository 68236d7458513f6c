"""certd/status.py as tables: inventory facts and a fake clock in, status, severity and conditions out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from certd.core.policy import hard_deadline
from certd.core.status import Condition, Severity, Status, assess
from certd.inventory.models import Certificate, Version
from tests.conftest import FakeClock

C = Condition
T0 = datetime(2026, 1, 1, tzinfo=UTC)
LIFETIME = timedelta(days=90)
RENEW_AT = T0 + timedelta(days=60)
DEADLINE = hard_deadline(T0, T0 + LIFETIME)  # day 81
NOT_AFTER = T0 + LIFETIME


@dataclass
class Row:
    failures: int | None = 0
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    retired_at: datetime | None = None


@dataclass
class Ver:
    state: str = "served"
    not_before: datetime = T0
    not_after: datetime = NOT_AFTER
    renew_at: datetime | None = RENEW_AT


FAILED = Row(failures=3, last_error="issue: issuer local: simulated outage", next_attempt_at=T0)
DAY = timedelta(days=1)


@pytest.mark.parametrize(
    ("row", "version", "at", "status", "severity", "conditions"),
    [
        # never issued
        (None, None, T0, Status.PENDING, Severity.OK, set()),
        (Row(), None, T0, Status.PENDING, Severity.OK, set()),
        (FAILED, None, T0, Status.FAILING, Severity.WARNING, {C.FAILING}),
        (Row(failures=0, last_error="plan: lease held"), None, T0, Status.FAILING, Severity.WARNING, {C.FAILING}),
        # the version's own state while all is well
        (Row(), Ver("published"), T0 + DAY, Status.PUBLISHED, Severity.OK, {C.READY}),
        (Row(), Ver("deployed"), T0 + DAY, Status.DEPLOYED, Severity.OK, {C.READY}),
        (Row(), Ver("served"), T0 + DAY, Status.SERVED, Severity.OK, {C.READY}),
        # past the renewal time, nothing has failed (yet)
        (Row(), Ver(), RENEW_AT, Status.EXPIRING, Severity.WARNING, {C.READY, C.EXPIRING}),
        (Row(), Ver(renew_at=None), RENEW_AT, Status.SERVED, Severity.OK, {C.READY}),
        # a renewal time never recorded does not hide the hard deadline
        (Row(), Ver(renew_at=None), NOT_AFTER - DAY, Status.CRITICAL, Severity.CRITICAL, {C.READY, C.CRITICAL}),
        # failing with time left, before and after the renewal time
        (FAILED, Ver(), T0 + DAY, Status.FAILING, Severity.WARNING, {C.READY, C.FAILING}),
        (FAILED, Ver(), RENEW_AT + DAY, Status.FAILING, Severity.WARNING, {C.READY, C.FAILING, C.EXPIRING}),
        # a deploy that failed leaves the published version "failed" and current
        (FAILED, Ver("failed"), T0 + DAY, Status.FAILING, Severity.WARNING, {C.FAILING}),
        (Row(), Ver("failed"), T0 + DAY, Status.FAILING, Severity.WARNING, {C.FAILING}),
        # inside the hard deadline and not renewed: critical, whether the last attempt failed or one is still
        # running (or hangs) and nothing failed yet
        (FAILED, Ver(), DEADLINE, Status.CRITICAL, Severity.CRITICAL,
         {C.READY, C.FAILING, C.EXPIRING, C.CRITICAL}),
        (Row(), Ver(), DEADLINE, Status.CRITICAL, Severity.CRITICAL, {C.READY, C.EXPIRING, C.CRITICAL}),
        (Row(), Ver(), DEADLINE - DAY, Status.EXPIRING, Severity.WARNING, {C.READY, C.EXPIRING}),
        # expired wins over everything that happened to the files
        (Row(), Ver("served"), NOT_AFTER, Status.EXPIRED, Severity.CRITICAL, {C.EXPIRED, C.EXPIRING, C.CRITICAL}),
        (FAILED, Ver("served"), NOT_AFTER + DAY, Status.EXPIRED, Severity.CRITICAL,
         {C.EXPIRED, C.EXPIRING, C.FAILING, C.CRITICAL}),
        (Row(), Ver("revoked"), NOT_AFTER, Status.EXPIRED, Severity.CRITICAL,
         {C.EXPIRED, C.EXPIRING, C.REVOKED, C.CRITICAL}),
        # revoked and not replaced
        (Row(), Ver("revoked"), T0 + DAY, Status.REVOKED, Severity.WARNING, {C.REVOKED}),
        (FAILED, Ver("revoked"), T0 + DAY, Status.REVOKED, Severity.WARNING, {C.REVOKED, C.FAILING}),
        # ... but a revoked certificate whose replacement keeps failing near expiry is critical
        (FAILED, Ver("revoked"), DEADLINE, Status.CRITICAL, Severity.CRITICAL,
         {C.REVOKED, C.FAILING, C.EXPIRING, C.CRITICAL}),
        # removed from the config: nothing else matters
        (Row(retired_at=T0), Ver(), NOT_AFTER + DAY, Status.RETIRED, Severity.OK,
         {C.EXPIRED, C.EXPIRING, C.CRITICAL}),
        (Row(failures=None), Ver(), T0 + DAY, Status.SERVED, Severity.OK, {C.READY}),
    ],
)
def test_status_table(row: Row | None, version: Ver | None, at: datetime, status: Status, severity: Severity,
                      conditions: set[Condition]) -> None:
    clock = FakeClock(at)
    got = assess(row, version, clock.now())
    assert (got.status, got.severity, set(got.conditions)) == (status, severity, conditions), got.message
    assert got.hard_deadline == (None if version is None else DEADLINE)


def test_renewing_is_the_policy_verdict_passed_in() -> None:
    assert C.RENEWING in assess(Row(), Ver(), T0 + DAY, due=True).conditions
    assert C.RENEWING not in assess(Row(), Ver(), RENEW_AT, due=False).conditions


@pytest.mark.parametrize(
    ("status", "severity"),
    [
        (Status.PENDING, Severity.OK), (Status.PUBLISHED, Severity.OK), (Status.DEPLOYED, Severity.OK),
        (Status.SERVED, Severity.OK), (Status.RETIRED, Severity.OK),
        (Status.EXPIRING, Severity.WARNING), (Status.FAILING, Severity.WARNING), (Status.REVOKED, Severity.WARNING),
        (Status.CRITICAL, Severity.CRITICAL), (Status.EXPIRED, Severity.CRITICAL),
    ],
)
def test_every_status_has_a_severity(status: Status, severity: Severity) -> None:
    from certd.core.status import SEVERITY

    assert SEVERITY[status] is severity
    assert set(SEVERITY) == set(Status)


def test_severity_rank_is_the_nagios_exit_code() -> None:
    assert [s.rank for s in (Severity.OK, Severity.WARNING, Severity.CRITICAL)] == [0, 1, 2]


def test_a_fake_clock_walks_one_failing_certificate_through_its_life() -> None:
    clock = FakeClock(T0)
    seen = []
    for _ in range(100):
        seen.append(assess(FAILED, Ver(), clock.now()).status)
        clock.advance(DAY)
    assert list(dict.fromkeys(seen)) == [Status.FAILING, Status.CRITICAL, Status.EXPIRED]
    assert seen.index(Status.CRITICAL) == 81 and seen.index(Status.EXPIRED) == 90


def test_real_inventory_models() -> None:
    row = Certificate(name="edge", failures=1, last_error="deploy: deploy hook: command false exited 1",
                      retired_at=None)
    version = Version(state="served", not_before=T0, not_after=NOT_AFTER, renew_at=RENEW_AT)
    got = assess(row, version, T0 + DAY)
    assert got.status is Status.FAILING and got.severity is Severity.WARNING
    assert "1 failed attempt;" not in got.message and "1 failed attempt)" in got.message
    assert "2026-04-01T00:00:00Z" in got.message  # when it expires, in RFC 3339
