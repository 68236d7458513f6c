"""The ``plan`` step: is a certificate due, why, and when will it be.

Pure functions over explicit inputs and ``now`` (cert-manager's policy
chains are the model): each check returns a ``Verdict`` with a named reason,
or ``None`` to pass. Random choices (jitter, the pick inside an ARI window)
are made once by ``pick_renew_at`` when a version is recorded and stored as
its ``renew_at``; nothing here re-draws them, so ``plan`` and ``list`` show
the same time as the scheduler acts on.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

__all__ = [
    "Current",
    "Reason",
    "Verdict",
    "Wanted",
    "backoff_until",
    "evaluate",
    "hard_deadline",
    "jitter_bound",
    "lifetime_renew_at",
    "min_remaining",
    "pick_renew_at",
    "remaining_floor",
    "retry_at",
]

_SHORT_LIFETIME = timedelta(days=10)
_DEFAULT_FRACTION = 2 / 3
_SHORT_FRACTION = 1 / 2
_BACKOFF_BASE = timedelta(minutes=1)
_BACKOFF_CAP = timedelta(hours=6)
# Retrying cannot fix a non-retryable failure (a check the CA's certificate fails, a bad owner):
# wait at least this long, even near the deadline, so certd does not order from the CA in a loop.
_HOPELESS_FLOOR = timedelta(hours=1)


class Reason(StrEnum):
    """Why a certificate is (or is not) due; shown in ``plan``, events and ``last_error``."""

    DOES_NOT_EXIST = "DoesNotExist"
    REVOKED = "Revoked"
    ISSUER_CHANGED = "IssuerChanged"
    NAMES_CHANGED = "NamesChanged"
    KEY_TYPE_CHANGED = "KeyTypeChanged"
    EXPIRED = "Expired"
    RENEWAL_TIME = "RenewalTimeReached"
    FORCED = "Forced"
    BACKING_OFF = "BackingOff"
    REDEPLOY = "RedeployPending"
    NOT_DUE = "NotDue"


@dataclass(frozen=True)
class Verdict:
    """A decision: ``due`` now or not, the reason, and the time it refers to."""

    reason: Reason
    message: str
    due: bool
    at: datetime | None = None


@dataclass(frozen=True)
class Wanted:
    """What the config asks for."""

    issuer: str
    names: tuple[str, ...]
    key_type: str


@dataclass(frozen=True)
class Current:
    """The version currently published, and the scheduler's memory of failures."""

    issuer: str
    names: tuple[str, ...]
    key_type: str
    not_before: datetime
    not_after: datetime
    renew_at: datetime
    revoked: bool = False
    failed: bool = False  # published, then deploy or verify failed and nothing rolled it back


def lifetime_renew_at(
    not_before: datetime,
    not_after: datetime,
    *,
    renew_before: timedelta | None = None,
    renew_fraction: float | None = None,
) -> datetime:
    """The lifetime rule: ``not_after - renew_before``, else a fraction of the lifetime."""
    lifetime = not_after - not_before
    if renew_before is not None:
        return max(not_before, not_after - renew_before)
    fraction = renew_fraction or (_SHORT_FRACTION if lifetime < _SHORT_LIFETIME else _DEFAULT_FRACTION)
    return not_before + lifetime * fraction


def jitter_bound(lifetime: timedelta) -> timedelta:
    """Jitter is drawn in [0, min(lifetime/50, 10 min)] and only makes renewal earlier."""
    return min(lifetime / 50, timedelta(minutes=10))


def pick_renew_at(
    not_before: datetime,
    not_after: datetime,
    *,
    renew_before: timedelta | None = None,
    renew_fraction: float | None = None,
    ari_window: tuple[datetime, datetime] | None = None,
    rng: random.Random,
) -> datetime:
    """Draw the renewal time once: earliest of the ARI pick and the lifetime rule, minus jitter."""
    candidates = [lifetime_renew_at(not_before, not_after, renew_before=renew_before, renew_fraction=renew_fraction)]
    if ari_window is not None:
        start, end = ari_window
        span = max((end - start).total_seconds(), 0.0)
        candidates.append(start + timedelta(seconds=rng.uniform(0, span)))
    chosen = min(candidates)
    bound = jitter_bound(not_after - not_before).total_seconds()
    return max(not_before, chosen - timedelta(seconds=rng.uniform(0, bound)))


def remaining_floor(lifetime: timedelta | None) -> timedelta:
    """What a new certificate must have left beyond ``renew_before``: a minute, a tenth of a short lifetime."""
    return min(timedelta(minutes=1), lifetime / 10) if lifetime else timedelta(minutes=1)


def min_remaining(lifetime: timedelta | None, renew_before: timedelta | None) -> timedelta:
    """The validity the ``check`` step demands of a new certificate: it must outlive its own renewal window.

    The config refuses a ``renew_before`` that no certificate of the known lifetime can meet, using
    this same rule, so every renewal would not issue a certificate only to discard it.
    """
    return (renew_before or timedelta(0)) + remaining_floor(lifetime)


def hard_deadline(not_before: datetime, not_after: datetime) -> datetime:
    """Past this point a failing certificate is 'expiring': retries go to the minimum interval."""
    return not_after - (not_after - not_before) / 10


def backoff_until(
    failures: int,
    now: datetime,
    *,
    rng: random.Random,
    deadline: datetime | None = None,
    lifetime: timedelta | None = None,
    not_after: datetime | None = None,
) -> datetime:
    """When to try again after ``failures`` consecutive failures (>= 1).

    1 minute doubling, capped at 6 hours, with up to 10 % random spread so a
    fleet that failed together does not retry together. The minimum interval
    is a fiftieth of the lifetime when that is shorter, so a minutes-long
    certificate still gets several tries before it expires.

    Never scheduled past the hard ``deadline``: a wait that would cross it ends
    at it. Inside it (``not_after`` known) the wait is at most an eighth of the
    time left (never under the minimum interval): a CA that answers again is
    used while seven eighths of the time remain, and the attempts stay few —
    about a hundred across a 90-day certificate's last nine days, where a
    fixed minimum interval would make thousands of orders.
    """
    base = _base_interval(lifetime)
    delay = min(base * (1 << min(max(failures - 1, 0), 20)), _BACKOFF_CAP)
    delay += delay * rng.uniform(0, 0.1)
    at = now + delay
    if deadline is None or at <= deadline:
        return at
    if now < deadline:
        return deadline
    if not_after is None:
        return now + base
    return now + max(base, min(delay, (not_after - now) / 8))


def _base_interval(lifetime: timedelta | None) -> timedelta:
    return min(_BACKOFF_BASE, lifetime / 50) if lifetime is not None and lifetime > timedelta(0) else _BACKOFF_BASE


def retry_at(
    failures: int,
    now: datetime,
    *,
    rng: random.Random,
    deadline: datetime | None,
    retryable: bool,
    retry_after: timedelta | None,
    own_budget: bool,
    lifetime: timedelta | None = None,
    not_after: datetime | None = None,
    retry_within: timedelta | None = None,
) -> datetime:
    """When a certificate whose last attempt failed may be tried again.

    - the backoff of ``backoff_until`` (which ends at the hard deadline, and inside it waits at most an
      eighth of the time left);
    - a failure retrying cannot fix waits at least an hour (doubling to a day) — but never past the hard
      deadline, and inside it never past expiry: there it waits a quarter of the time left (at least the
      base interval), so a few more attempts happen before ``not_after`` and their number stays small;
    - the other side's ``retry_after`` is honoured — except certd's *own* budget, which never
      holds a certificate past its hard deadline (there certd asks the CA, whose answer decides);
    - ``retry_within`` (a server that was down at rollout) brings the retry forward to that: looking
      again costs a connect, no order.
    """
    at = backoff_until(failures, now, rng=rng, deadline=deadline, lifetime=lifetime, not_after=not_after)
    if not retryable:  # an hour, doubling to a day: an operator has to change something first
        hopeless = now + min(_HOPELESS_FLOOR * (1 << min(max(failures - 1, 0), 5)), timedelta(days=1))
        if deadline is not None and not_after is not None and now >= deadline:
            hopeless = min(hopeless, max(now + (not_after - now) / 4, now + _base_interval(lifetime)))
        elif deadline is not None and now < deadline < hopeless:
            hopeless = max(deadline, at)  # wake at the hard deadline, where the rule above takes over
        at = max(at, hopeless)
    if retry_after is not None:
        wanted = now + retry_after
        if own_budget and deadline is not None:
            wanted = min(wanted, max(deadline, now + _base_interval(lifetime)))
        at = max(at, wanted)
    if retry_within is not None:
        at = min(at, now + retry_within)
    return at


Check = Callable[[Wanted, Current, datetime], Verdict | None]


def _revoked(w: Wanted, c: Current, now: datetime) -> Verdict | None:
    return Verdict(Reason.REVOKED, "the current certificate was revoked", True) if c.revoked else None


def _issuer(w: Wanted, c: Current, now: datetime) -> Verdict | None:
    if w.issuer != c.issuer:
        return Verdict(Reason.ISSUER_CHANGED, f"issuer changed from {c.issuer} to {w.issuer}", True)
    return None


def _names(w: Wanted, c: Current, now: datetime) -> Verdict | None:
    if set(w.names) != set(c.names):
        return Verdict(Reason.NAMES_CHANGED, f"names changed to {', '.join(w.names)}", True)
    return None


def _key_type(w: Wanted, c: Current, now: datetime) -> Verdict | None:
    if w.key_type != c.key_type:
        return Verdict(Reason.KEY_TYPE_CHANGED, f"key type changed from {c.key_type} to {w.key_type}", True)
    return None


def _expired(w: Wanted, c: Current, now: datetime) -> Verdict | None:
    if c.not_after <= now:
        return Verdict(Reason.EXPIRED, "the current certificate has expired", True, c.not_after)
    return None


def _renewal_time(w: Wanted, c: Current, now: datetime) -> Verdict | None:
    if c.renew_at <= now:
        return Verdict(Reason.RENEWAL_TIME, "renewal time reached", True, c.renew_at)
    return None


CHECKS: Sequence[Check] = (_revoked, _issuer, _names, _key_type, _expired, _renewal_time)


def evaluate(
    wanted: Wanted,
    current: Current | None,
    now: datetime,
    *,
    force: bool = False,
    next_attempt_at: datetime | None = None,
) -> Verdict:
    """Run the checks in order; the first that fires decides."""
    if force:
        return Verdict(Reason.FORCED, "renewal forced", True, now)
    if current is None:
        verdict = Verdict(Reason.DOES_NOT_EXIST, "no certificate issued yet", True)
    else:
        verdict = next((v for check in CHECKS if (v := check(wanted, current, now)) is not None),
                       Verdict(Reason.NOT_DUE, "not due yet", False, current.renew_at))
    if verdict.due and next_attempt_at is not None and next_attempt_at > now:
        return Verdict(Reason.BACKING_OFF, f"backing off after failures ({verdict.reason})", False, next_attempt_at)
    if not verdict.due and current is not None and current.failed:
        # Not a renewal (the certificate is good, the rollout was not): deploy + verify are retried.
        at = max(next_attempt_at, now) if next_attempt_at is not None else now
        return Verdict(Reason.REDEPLOY, "the current version failed to deploy or verify; deploy is retried", False,
                       at)
    return verdict
