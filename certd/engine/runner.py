"""Running one operation on one certificate: lease, gather, body, and the one place a failure is recorded.

Guarantees (every door relies on them):
- whatever fails, wherever — inside a step or between two — ends in
  ``Recorder.failure`` (event naming the certificate and step, ``failures``
  bumped, ``last_error`` set, backoff until ``next_attempt_at``);
- at most one operation on a certificate runs at a time across processes
  (the lease, ``hold.py``); a renewal that finds it held waits and reports
  the renewal that finished meanwhile, other operations wait their turn.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from certd.core.kinds import Step
from certd.engine.attempt import Attempt, as_step_error
from certd.engine.result import Operation, Result
from certd.engine.services import Services
from certd.errors import CertdError

__all__ = ["run"]


def run(s: Services, op: Operation, name: str, body: Callable[[Attempt], Result], *, wait: timedelta,
        requested_at: datetime | None = None) -> Result:
    """Lease, gather, run ``body``; any failure in it is recorded (see the module docstring)."""
    rid = uuid.uuid4().hex[:16]
    try:
        cfg = s.cert_config(name)
    except CertdError as exc:
        step = Step.PLAN if op == "renew" else Step(op)
        return Result(name, "failed", failed_step=step, error=str(exc), renewal_id=rid, reason=exc.reason)
    got = s.hold.acquire(name, rid, op, wait, requested_at)
    if isinstance(got, Result):
        return got
    with s.hold.held(got) as beat:
        # Gathered once, under the lease: every step of this operation works from this picture.
        attempt = Attempt(op, name, cfg, rid, old=s.inventory.current_version(name),
                          row=s.inventory.certificate(name), beat=beat, fault=s.fault,
                          timer=s.recorder.step_time)
        try:
            return body(attempt)
        except Exception as exc:
            return s.recorder.failure(attempt, as_step_error(attempt.current_step, exc))
