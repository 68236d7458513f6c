"""A certificate's status: one pure computation behind every place that shows it.

``certd list``, ``GET /v1/certificates``, ``certd check``, ``GET /readyz``
and the ``certd_certificate_ready_status`` gauges all answer "is this
certificate all right?". They used to answer it separately, and disagreed:
an expired certificate whose renewals failed was listed as ``served``. Here
the answer is computed once, from the inventory row, the current version
and ``now`` (passed in; nothing here reads a clock, a file or the database),
in the manner of cert-manager's readiness checks: named results, not ad-hoc
strings.

Two views of the same facts:

- ``Condition`` flags are independent (several may hold at once: an expired
  certificate whose renewal failed is ``expired``, ``expiring``, ``failing``
  and ``critical``), for metrics and alert rules that select one fact;
- ``Status`` is the one word a person reads, chosen by this precedence
  (the first that holds wins):

  1. ``retired``  - removed from the config; monitoring no longer cares.
  2. ``expired``  - past ``not_after``, whatever happened to its files.
  3. ``critical`` - the hard deadline (``policy.hard_deadline``, the last
     tenth of the lifetime) has passed and the certificate was not
     renewed: whether the last attempt failed, is still running, or hangs
     (a renewal that never ends must not look better than one that fails).
  4. ``revoked``  - the current version was revoked and not yet replaced.
  5. ``failing``  - the last attempt failed and there is time left; also a
     certificate that was never issued because every attempt failed, and
     one whose current version is left ``failed`` (its deploy failed).
  6. ``expiring`` - past its renewal time, and no renewal has succeeded
     (nor failed) yet: the renewal is running, or nothing is running it.
  7. the version's state (``published``, ``deployed``, ``served``), or
     ``pending`` when nothing was ever issued.

  ``critical`` comes before ``revoked`` (the design lists revoked first)
  so that a revoked certificate whose replacement keeps failing near expiry
  is not shown as a mere warning.

``Severity`` is a function of the status alone, so ``check``'s exit code,
``/readyz`` and the ``list`` column cannot drift apart: ``critical`` for
expired and critical, ``warning`` for expiring, failing and revoked
(revoked is rarely left in place: ``certd revoke`` renews at once, and a
failing replacement turns critical near the deadline), ``ok`` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from certd.core.durations import rfc3339
from certd.core.policy import hard_deadline

__all__ = [
    "Assessment",
    "CertificateFacts",
    "Condition",
    "Severity",
    "Status",
    "VersionFacts",
    "assess",
]


class Status(StrEnum):
    """The one-word status shown by ``list``, the API and ``check`` (see the module docstring)."""

    PENDING = "pending"
    PUBLISHED = "published"
    DEPLOYED = "deployed"
    SERVED = "served"
    EXPIRING = "expiring"
    FAILING = "failing"
    CRITICAL = "critical"
    EXPIRED = "expired"
    REVOKED = "revoked"
    RETIRED = "retired"


class Severity(StrEnum):
    """How much a status needs a person: ``rank`` is also ``certd check``'s (Nagios) exit code."""

    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Severity.OK: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


class Condition(StrEnum):
    """Independent facts about a certificate; each is a ``certd_certificate_ready_status`` condition."""

    READY = "ready"  # a published, unexpired, unrevoked version is current
    RENEWING = "renewing"  # the policy wants a new certificate (due, or backing off after a failure)
    FAILING = "failing"  # the last attempt failed (even when also critical or expired)
    EXPIRING = "expiring"  # the current version is past its renewal time (also when expired)
    CRITICAL = "critical"  # failing, and past the hard deadline (also when expired)
    EXPIRED = "expired"  # the current version is past not_after
    REVOKED = "revoked"  # the current version was revoked


SEVERITY: dict[Status, Severity] = {
    Status.PENDING: Severity.OK,
    Status.PUBLISHED: Severity.OK,
    Status.DEPLOYED: Severity.OK,
    Status.SERVED: Severity.OK,
    Status.RETIRED: Severity.OK,
    Status.EXPIRING: Severity.WARNING,
    Status.FAILING: Severity.WARNING,
    Status.REVOKED: Severity.WARNING,
    Status.CRITICAL: Severity.CRITICAL,
    Status.EXPIRED: Severity.CRITICAL,
}

# Version states that mean "a complete set of files was switched into place".
_USABLE = {"published": Status.PUBLISHED, "deployed": Status.DEPLOYED, "served": Status.SERVED}


class CertificateFacts(Protocol):
    """What status reads from an inventory ``Certificate`` row (or a test's stand-in)."""

    @property
    def failures(self) -> int | None: ...
    @property
    def last_error(self) -> str | None: ...
    @property
    def retired_at(self) -> datetime | None: ...


class VersionFacts(Protocol):
    """What status reads from the current ``Version`` (or a test's stand-in)."""

    @property
    def state(self) -> str: ...
    @property
    def not_before(self) -> datetime: ...
    @property
    def not_after(self) -> datetime: ...
    @property
    def renew_at(self) -> datetime | None: ...


@dataclass(frozen=True)
class Assessment:
    """The named result: status, its severity, a sentence, and the independent conditions."""

    status: Status
    severity: Severity
    message: str
    conditions: frozenset[Condition]
    hard_deadline: datetime | None

    def has(self, condition: Condition) -> bool:
        return condition in self.conditions


def _conditions(
    row: CertificateFacts | None, version: VersionFacts | None, now: datetime, *, due: bool
) -> tuple[frozenset[Condition], datetime | None]:
    found: set[Condition] = set()
    failing = row is not None and ((row.failures or 0) > 0 or row.last_error is not None)
    # A current version left in another state (``failed``: its deploy failed) is not vouched for either.
    failing = failing or (version is not None and version.state not in _USABLE and version.state != "revoked")
    if failing:
        found.add(Condition.FAILING)
    if due:
        found.add(Condition.RENEWING)
    if version is None:
        return frozenset(found), None
    deadline = hard_deadline(version.not_before, version.not_after)
    expired = now >= version.not_after
    if expired:
        found.add(Condition.EXPIRED)
    if now >= (version.renew_at or version.not_after):
        found.add(Condition.EXPIRING)
    if now >= deadline:
        found.add(Condition.CRITICAL)
    if version.state == "revoked":
        found.add(Condition.REVOKED)
    elif version.state in _USABLE and not expired:
        found.add(Condition.READY)
    return frozenset(found), deadline


def _failures(row: CertificateFacts | None) -> str:
    n = (row.failures or 0) if row is not None else 0
    return f"{n} failed attempt{'s' if n != 1 else ''}" if n else "the last attempt failed"


def assess(
    row: CertificateFacts | None,
    version: VersionFacts | None,
    now: datetime,
    *,
    due: bool = False,
) -> Assessment:
    """The status of one certificate at ``now``.

    ``row`` is its inventory row (``None`` before the config was first synced),
    ``version`` its current version (``None`` until one was published), and
    ``due`` what the renewal policy says (due now, or backing off) - policy is
    not recomputed here; it only feeds the ``renewing`` condition.
    """
    conditions, deadline = _conditions(row, version, now, due=due)

    def result(status: Status, message: str) -> Assessment:
        return Assessment(status, SEVERITY[status], message, conditions, deadline)

    if row is not None and row.retired_at is not None:
        return result(Status.RETIRED, f"removed from the config at {rfc3339(row.retired_at)}")
    if version is None:
        if Condition.FAILING in conditions:
            return result(Status.FAILING, f"never issued: {_failures(row)}")
        return result(Status.PENDING, "never issued")
    expires = f"expires at {rfc3339(version.not_after)}"
    if Condition.EXPIRED in conditions:
        return result(Status.EXPIRED, f"expired at {rfc3339(version.not_after)}")
    if Condition.CRITICAL in conditions:
        why = f"renewal failing ({_failures(row)})" if Condition.FAILING in conditions else (
            "not renewed (the renewal is running, hangs, or nothing runs it)")
        return result(Status.CRITICAL, f"{why} past the hard deadline {rfc3339(deadline)}; {expires}")
    if Condition.REVOKED in conditions:
        return result(Status.REVOKED, f"the current certificate was revoked and not replaced; {expires}")
    if Condition.FAILING in conditions:
        return result(Status.FAILING, f"renewal failing ({_failures(row)}); {expires}")
    if Condition.EXPIRING in conditions:
        return result(Status.EXPIRING,
                      f"past its renewal time {rfc3339(version.renew_at or version.not_after)}, not renewed yet; "
                      f"{expires}")
    return result(_USABLE[version.state], f"valid; {expires}")
