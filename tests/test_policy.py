"""Renewal policy: pure checks over explicit times (fake clock, tables of cases)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from certd.core.policy import (
    Current,
    Reason,
    Wanted,
    backoff_until,
    evaluate,
    hard_deadline,
    jitter_bound,
    lifetime_renew_at,
    pick_renew_at,
    retry_at,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
WANT = Wanted(issuer="local", names=("a.test",), key_type="ecdsa-p256")


def cur(**kw: object) -> Current:
    base = dict(issuer="local", names=("a.test",), key_type="ecdsa-p256", not_before=T0,
                not_after=T0 + timedelta(days=90), renew_at=T0 + timedelta(days=60))
    base.update(kw)
    return Current(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("lifetime", "renew_before", "fraction", "expected"),
    [
        (timedelta(days=90), None, None, timedelta(days=60)),
        (timedelta(days=90), timedelta(days=30), None, timedelta(days=60)),
        (timedelta(days=90), None, 0.5, timedelta(days=45)),
        (timedelta(days=6), None, None, timedelta(days=3)),  # short-lived: half
        (timedelta(hours=1), timedelta(hours=2), None, timedelta(0)),  # never before not_before
    ],
)
def test_lifetime_rule(lifetime: timedelta, renew_before: timedelta | None, fraction: float | None,
                       expected: timedelta) -> None:
    assert lifetime_renew_at(T0, T0 + lifetime, renew_before=renew_before, renew_fraction=fraction) == T0 + expected


def test_jitter_only_makes_renewal_earlier_and_is_bounded() -> None:
    rng = random.Random(1)
    base = T0 + timedelta(days=60)
    picks = [pick_renew_at(T0, T0 + timedelta(days=90), rng=rng) for _ in range(500)]
    assert all(base - timedelta(minutes=10) <= p <= base for p in picks)
    assert len(set(picks)) > 400
    assert jitter_bound(timedelta(minutes=5)) == timedelta(seconds=6)


def test_ari_window_pick_is_used_when_earlier() -> None:
    rng = random.Random(2)
    window = (T0 + timedelta(days=10), T0 + timedelta(days=11))
    p = pick_renew_at(T0, T0 + timedelta(days=90), ari_window=window, rng=rng)
    assert window[0] - timedelta(minutes=10) <= p <= window[1]


@pytest.mark.parametrize(
    ("current", "now", "reason", "due"),
    [
        (None, T0, Reason.DOES_NOT_EXIST, True),
        (cur(), T0 + timedelta(days=1), Reason.NOT_DUE, False),
        (cur(), T0 + timedelta(days=60), Reason.RENEWAL_TIME, True),
        (cur(), T0 + timedelta(days=91), Reason.EXPIRED, True),
        (cur(names=("b.test",)), T0, Reason.NAMES_CHANGED, True),
        (cur(key_type="rsa-2048"), T0, Reason.KEY_TYPE_CHANGED, True),
        (cur(issuer="other"), T0, Reason.ISSUER_CHANGED, True),
        (cur(revoked=True), T0, Reason.REVOKED, True),
    ],
)
def test_evaluate(current: Current | None, now: datetime, reason: Reason, due: bool) -> None:
    verdict = evaluate(WANT, current, now)
    assert verdict.reason is reason
    assert verdict.due is due


def test_force_and_backoff() -> None:
    assert evaluate(WANT, cur(), T0, force=True).reason is Reason.FORCED
    v = evaluate(WANT, None, T0, next_attempt_at=T0 + timedelta(minutes=4))
    assert (v.reason, v.due, v.at) == (Reason.BACKING_OFF, False, T0 + timedelta(minutes=4))


@pytest.mark.parametrize(("failures", "low", "high"), [(1, 60, 66), (2, 120, 132), (5, 960, 1056),
                                                       (20, 21600, 23760)])
def test_backoff_doubles_and_caps(failures: int, low: int, high: int) -> None:
    at = backoff_until(failures, T0, rng=random.Random(3))
    assert low <= (at - T0).total_seconds() <= high


def test_backoff_never_past_deadline() -> None:
    at = backoff_until(20, T0, rng=random.Random(3), deadline=T0 + timedelta(hours=1))
    assert at == T0 + timedelta(hours=1)  # the wait ends at the deadline, where the near-expiry rule begins
    inside = backoff_until(20, T0, rng=random.Random(3), deadline=T0 - timedelta(hours=1))
    assert inside == T0 + timedelta(minutes=1)  # no not_after known: the minimum interval


def test_inside_the_hard_deadline_the_wait_is_an_eighth_of_the_time_left() -> None:
    """Issue 18: a fixed one-minute retry across a 90-day certificate's last nine days made ~13,000 attempts
    (orders, against a CA that refuses them); an eighth of the time left keeps them to about a hundred, and a
    CA that answers again is used while seven eighths of the time remain."""
    lifetime = timedelta(days=90)
    not_after = T0 + lifetime
    deadline = hard_deadline(T0, not_after)
    now, failures, attempts = deadline, 1, 0
    while now < not_after - timedelta(minutes=1):
        at = backoff_until(failures, now, rng=random.Random(failures), deadline=deadline, lifetime=lifetime,
                           not_after=not_after)
        assert now < at < not_after and at - now <= max(timedelta(minutes=1), (not_after - now) / 8)
        now, failures, attempts = at, failures + 1, attempts + 1
    assert 50 <= attempts <= 120, attempts


def test_backoff_of_a_short_lived_certificate_scales_with_its_lifetime() -> None:
    lifetime = timedelta(seconds=150)
    at = backoff_until(1, T0, rng=random.Random(3), lifetime=lifetime)
    assert timedelta(seconds=3) <= at - T0 <= timedelta(seconds=3.3)
    near = backoff_until(10, T0, rng=random.Random(3), deadline=T0 - timedelta(seconds=10), lifetime=lifetime,
                         not_after=T0 + timedelta(seconds=5))
    assert near - T0 == timedelta(seconds=3)  # inside the deadline, 5 s left: the minimum interval
    assert backoff_until(1, T0, rng=random.Random(3), lifetime=timedelta(days=90)) - T0 >= timedelta(minutes=1)


def test_a_failure_retrying_cannot_fix_backs_off_from_an_hour_to_a_day() -> None:
    gaps = [retry_at(n, T0, rng=random.Random(1), deadline=T0, retryable=False, retry_after=None,
                     own_budget=False) - T0 for n in range(1, 10)]
    assert gaps[0] >= timedelta(hours=1) and gaps[1] >= timedelta(hours=2)
    assert max(gaps) <= timedelta(days=1) and gaps[-1] == timedelta(days=1)


def test_a_failure_retrying_cannot_fix_never_sleeps_past_expiry_inside_the_hard_deadline() -> None:
    """Issue 18: an hour (doubling to a day) outside the deadline; inside it a quarter of what is left, so
    attempts keep coming before not_after, and few of them (each wait is a share of the time left)."""
    lifetime = timedelta(days=90)
    not_before = T0
    not_after = not_before + lifetime
    deadline = hard_deadline(not_before, not_after)
    now, failures, attempts = deadline, 1, 0
    while not_after - now > timedelta(minutes=30):
        at = retry_at(failures, now, rng=random.Random(failures), deadline=deadline, retryable=False,
                      retry_after=None, own_budget=False, lifetime=lifetime, not_after=not_after)
        assert now < at < not_after, (now, at)
        now, failures, attempts = at, failures + 1, attempts + 1
    assert 5 <= attempts <= 40, attempts  # tries keep coming to the end, yet no order storm
    before = retry_at(3, deadline - timedelta(days=2), rng=random.Random(1), deadline=deadline, retryable=False,
                      retry_after=None, own_budget=False, lifetime=lifetime, not_after=not_after)
    assert before - (deadline - timedelta(days=2)) >= timedelta(hours=4)  # outside the deadline: the long wait


def test_a_failure_retrying_cannot_fix_never_sleeps_past_the_hard_deadline() -> None:
    """The hour's wait ends at the hard deadline when that comes first: a short-lived certificate that failed
    just before its deadline is not left to expire (found by the fault matrix with 180 s certificates)."""
    lifetime = timedelta(seconds=180)
    not_after = T0 + lifetime
    deadline = hard_deadline(T0, not_after)
    now = deadline - timedelta(seconds=30)
    at = retry_at(1, now, rng=random.Random(1), deadline=deadline, retryable=False, retry_after=None,
                  own_budget=False, lifetime=lifetime, not_after=not_after)
    assert at == deadline
