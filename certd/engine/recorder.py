"""Writing down what happened: events, logs, metrics, and the failure that feeds the backoff.

One object records for every operation, so a failure anywhere ends the same
way: the version (if one was issued) is marked ``failed`` with its step, the
certificate's ``failures`` is bumped, ``last_error`` and ``last_reason`` are
set, ``next_attempt_at`` is pushed out by ``policy.retry_at``, and an event
names the certificate and the step. Nothing else in certd writes a failure.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from datetime import datetime

from cryptography import x509

from certd.core.clock import Clock
from certd.core.kinds import EventKind, Step
from certd.core.policy import hard_deadline, retry_at
from certd.engine.attempt import Attempt, StepError
from certd.engine.budget import BUDGET_REASON
from certd.engine.result import Operation, Result
from certd.errors import LeaseLost
from certd.inventory.models import VersionState
from certd.inventory.store import Inventory
from certd.metrics import Metrics
from certd.pki.certs import describe
from certd.scrub import scrub

__all__ = ["Recorder"]

log = logging.getLogger("certd.pipeline")
_FAILED_KIND: dict[Operation, EventKind] = {
    "renew": EventKind.RENEWAL_FAILED,
    "deploy": EventKind.DEPLOY_FAILED,
    "install": EventKind.AGENT_FAILED,
    "import": EventKind.IMPORT_FAILED,
    "revoke": EventKind.REVOKE_FAILED,
}
# A success of these operations clears only failures of the steps they re-ran.
_CLEARS_STEPS: dict[Operation, tuple[Step, ...]] = {
    "deploy": (Step.DEPLOY, Step.VERIFY, Step.TRUST),
    "install": (Step.PUBLISH, Step.DEPLOY, Step.VERIFY),
    "revoke": (Step.REVOKE,),
}


class Recorder:
    """Events, metrics and outcomes for one inventory."""

    def __init__(self, inventory: Inventory, clock: Clock, rng: random.Random, metrics: Metrics | None,
                 secrets: Callable[[], tuple[str, ...]] = tuple) -> None:
        self.inventory = inventory
        self.clock = clock
        self.metrics = metrics
        self._rng = rng
        self._secrets = secrets  # scrub.held_secrets of the config: replaced by *** in all that is written

    def secrets(self) -> tuple[str, ...]:
        return self._secrets()

    def clean(self, text: str) -> str:
        return scrub(text, self._secrets())

    def event(self, name: str, kind: EventKind, message: str, rid: str | None, *, step: Step | None = None,
              level: str = "info") -> None:
        message = self.clean(message)
        log.log(logging.INFO if level == "info" else logging.WARNING if level == "warning" else logging.ERROR,
                "%s: %s: %s", name, kind, message, extra={"certificate": name, "renewal_id": rid, "event": kind})
        self.inventory.event(name, kind, message, self.clock.now(), renewal_id=rid, step=step, level=level)

    def dropped_from_chain(self, name: str, dropped: Sequence[x509.Certificate], rid: str | None, *,
                           kind: EventKind = EventKind.CHECK_WARNING) -> None:
        """A warning per certificate that came with the chain but is not on the leaf's path to its root."""
        for cert in dropped:
            self.event(name, kind, f"dropped {describe(cert)} from the chain: it is not on the path from the leaf "
                       "to its root (issuer name and signature checked)", rid, step=Step.CHECK, level="warning")

    # -- metrics ---------------------------------------------------------------------
    def issuer_request(self, issuer: str, ok: bool) -> None:
        if self.metrics is not None:
            self.metrics.issuer_requests.labels(issuer, "success" if ok else "failure").inc()

    def deploy_result(self, name: str, target: str, ok: bool) -> None:
        if self.metrics is not None:
            self.metrics.deploys.labels(name, target, "success" if ok else "failure").inc()

    def probe_result(self, name: str, ok: bool) -> None:
        if self.metrics is not None:
            self.metrics.probes.labels(name, "success" if ok else "failure").inc()

    def renewal_result(self, name: str, issuer: str, ok: bool, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.renewals.labels(name, issuer, "success" if ok else "failure").inc()
            self.metrics.renewal_duration.labels(issuer, "success" if ok else "failure").observe(seconds)

    def lifetime_shortened(self, name: str, issuer: str, message: str, rid: str | None) -> None:
        self.event(name, EventKind.CHECK_LIFETIME_SHORTENED, message, rid, step=Step.CHECK, level="warning")
        if self.metrics is not None:
            self.metrics.lifetime_shortened.labels(name, issuer).inc()

    def step_time(self, operation: str, step: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.step_duration.labels(operation, step).observe(seconds)

    # -- outcomes --------------------------------------------------------------------
    def failure(self, attempt: Attempt, exc: StepError) -> Result:
        """Record a failed operation (see the module docstring) and return its Result."""
        err, name, now = exc.error, attempt.name, self.clock.now()
        if err.message != (cleaned := self.clean(err.message)):
            err.message = cleaned
            err.args = (cleaned,)
        if attempt.version_id is not None and attempt.beat is not None and not isinstance(err, LeaseLost):
            try:
                self.inventory.update_version(attempt.beat.lease, attempt.version_id, now,
                                              state=VersionState.FAILED.value, failed_step=exc.step, error=str(err))
            except Exception:
                log.warning("%s: could not mark version failed (lease lost)", name)
        old = attempt.old
        deadline = hard_deadline(old.not_before, old.not_after) if old else None

        def backoff(failures: int) -> datetime:
            return retry_at(max(failures, 1), now, rng=self._rng, deadline=deadline, retryable=err.retryable,
                            retry_after=err.retry_after, own_budget=err.reason == BUDGET_REASON,
                            lifetime=old.not_after - old.not_before if old else None,
                            not_after=old.not_after if old else None, retry_within=err.retry_within)

        retry = self.inventory.record_failure(name, now, step=exc.step, error=f"{exc.step}: {err}", reason=err.reason,
                                              backoff=backoff) or backoff(1)
        timings = attempt.timing_summary()
        self.event(name, _FAILED_KIND[attempt.op], f"{exc.step}: {err} (next attempt after "
                   f"{retry:%Y-%m-%dT%H:%M:%SZ}{'; ' + timings if timings else ''})",
                   attempt.rid, step=exc.step, level="error")
        version = self.inventory.version(attempt.version_id) if attempt.version_id is not None else None
        return Result(name, "failed", serial=version.serial if version else None,
                      state=version.state if version else None, failed_step=exc.step, error=str(err),
                      renewal_id=attempt.rid, reason=err.reason)

    def success(self, attempt: Attempt) -> None:
        """Clear the failure record: all of it after a renewal or import, the re-run steps' after a deploy."""
        self.inventory.clear_failure(attempt.name, steps=_CLEARS_STEPS.get(attempt.op))
