"""Holding a certificate's lease for one operation: acquire, heartbeat, release, and the join rule.

Every operation on a certificate (renew, deploy, import, revoke) holds the
certificate's lease row while it writes, so two of them never interleave,
across threads, processes and replicas. What a caller does when it finds the
lease held depends on what it asked for:

- a **renewal** is answered by a renewal that finished after the request was
  made (the *join rule*): twenty simultaneous ``renew --force`` calls make one
  order, whatever the scheduling;
- **revoke, deploy and import** are never answered by someone else's work:
  they wait their turn, then do their own. (A ``revoke --reason
  keyCompromise`` that a concurrent renewal "answered" would never revoke.)

The heartbeat extends the lease while the operation runs and records when it
was lost, so a holder that stalled past its lease cannot publish (the
fencing token is checked by every fenced write).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from certd.core.clock import Clock
from certd.core.kinds import Step
from certd.engine.result import Operation, Result
from certd.errors import LeaseLost, LeaseTimeout
from certd.inventory.leases import LeaseInfo, LeaseManager
from certd.inventory.models import Event
from certd.inventory.store import Inventory

__all__ = ["Heartbeat", "Hold"]

log = logging.getLogger("certd.hold")


class Heartbeat:
    """Extends the lease in the background; ``lost`` is set once it could not be."""

    def __init__(self, leases: LeaseManager, lease: LeaseInfo, clock: Clock) -> None:
        self.lease = lease
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._leases, self._clock = leases, clock
        self._thread = threading.Thread(target=self._run, name=f"lease-{lease.certificate}", daemon=True)

    def _run(self) -> None:
        interval = max(self._leases.ttl.total_seconds() / 3, 0.5)
        while not self._stop.wait(interval):
            try:
                self.lease = self._leases.extend(self.lease, self._clock.now())
            except LeaseLost:
                self.lost.set()
                return
            except Exception:
                log.warning("could not extend lease on %s", self.lease.certificate, exc_info=True)

    def fence(self) -> None:
        """Right before an irreversible write: raise ``LeaseLost`` unless the lease is still ours."""
        if self.lost.is_set():
            raise LeaseLost(f"certificate {self.lease.certificate}: lease lost; not writing")
        self.lease = self._leases.extend(self.lease, self._clock.now())

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Hold:
    """Acquires leases by the rule of the operation asking."""

    def __init__(self, leases: LeaseManager, inventory: Inventory, clock: Clock,
                 finished: Callable[[str, Event], Result]) -> None:
        self.leases = leases
        self._inventory = inventory
        self._clock = clock
        self._finished = finished

    def acquire(
        self, name: str, rid: str, op: Operation, wait: timedelta, requested_at: datetime | None = None
    ) -> LeaseInfo | Result:
        """Our lease, or the Result that ends the request without it (joined, skipped, timed out)."""
        now = self._clock.now()
        started = min(requested_at, now) if requested_at else now
        deadline = time.monotonic() + wait.total_seconds()
        delay = 0.02
        while True:
            lease = self.leases.try_acquire(name, rid, self._clock.now())
            if op == "renew":
                done = self._inventory.finished_since(name, started, exclude=rid)
                if done is not None:
                    if lease is not None:
                        self.leases.release(lease, self._clock.now())
                    return self._finished(name, done)
            if lease is not None:
                return lease
            if not wait:
                return Result(name, "skipped", renewal_id=rid, reason="LeaseHeld")
            if time.monotonic() >= deadline:
                err = LeaseTimeout(f"certificate {name}: another operation held the lease for longer than {wait}")
                return Result(name, "failed", failed_step=Step.LEASE, error=str(err), renewal_id=rid,
                              reason=err.reason)
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    @contextmanager
    def held(self, lease: LeaseInfo) -> Iterator[Heartbeat]:
        """Heartbeat while the body runs; the lease is released however the body ends."""
        with Heartbeat(self.leases, lease, self._clock) as beat:
            try:
                yield beat
            finally:
                self.leases.release(beat.lease, self._clock.now())
