"""One operation on one certificate while it runs, and the step it is in.

``Attempt`` is gathered once when the operation starts (the config, the
current version, the lease) instead of being re-read from the inventory at
every step. ``Attempt.step`` names the step the code is in,
so a failure anywhere — inside a step or between two — is reported with the
step it happened in, and gives tests one seam (``fault``) to inject a fault
at every step boundary.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from certd.config.model import CertificateConfig
from certd.core.kinds import Step
from certd.engine.hold import Heartbeat
from certd.engine.result import Operation
from certd.errors import CertdError
from certd.inventory.models import Certificate, Version

__all__ = ["Attempt", "Fault", "StepError", "as_step_error"]

log = logging.getLogger("certd.pipeline")
# Called with (operation, step) as each step begins; raising there is a fault in that step (tests only).
Fault = Callable[[str, str], None]


class StepError(Exception):
    """Carries the failing step name with the certd error that ended it."""

    def __init__(self, step: Step, error: CertdError) -> None:
        super().__init__(str(error))
        self.step = step
        self.error = error


def as_step_error(step: Step, exc: BaseException) -> StepError:
    """Any exception, as the failure of ``step``: certd's own errors keep their reason."""
    if isinstance(exc, StepError):
        return exc
    if isinstance(exc, CertdError):
        return StepError(step, exc)
    log.error("unexpected error in step %s", step, exc_info=exc)
    return StepError(step, CertdError(f"internal error in {step}: {type(exc).__name__}: {exc}"))


@dataclass
class Attempt:
    """One operation on one certificate, from lease to record."""

    op: Operation
    name: str
    cfg: CertificateConfig
    rid: str
    old: Version | None
    row: Certificate | None = None  # failures and backoff as they were when the lease was taken
    beat: Heartbeat | None = None
    fault: Fault | None = None
    timer: Callable[[str, str, float], None] | None = None  # (operation, step, seconds), for metrics
    current_step: Step = Step.PLAN
    version_id: int | None = None
    timings: list[tuple[str, float]] = field(default_factory=list)  # (step, seconds), in order

    def timing_summary(self) -> str:
        """``plan 1 ms, key 4 ms, issue 850 ms, ...``: each step's duration, for the closing event."""
        merged: dict[str, float] = {}
        for step, seconds in self.timings:
            merged[step] = merged.get(step, 0.0) + seconds
        return ", ".join(f"{step} {seconds * 1000:.0f} ms" for step, seconds in merged.items())

    @contextmanager
    def step(self, name: Step, *, at: str | None = None) -> Iterator[None]:
        """Run one step; whatever it raises becomes a ``StepError`` naming it.

        ``at`` names a finer boundary inside a step (``issuer`` construction
        inside ``issue``) for fault injection; users see the step.
        """
        self.current_step = name
        started = time.monotonic()
        try:
            if self.fault is not None:
                self.fault(self.op, at or name)
            yield
        except BaseException as exc:
            if not isinstance(exc, Exception):
                raise
            raise as_step_error(name, exc) from exc
        finally:
            elapsed = time.monotonic() - started
            self.timings.append((name, elapsed))
            if self.timer is not None and at is None:
                self.timer(self.op, name, elapsed)
