"""Deciding when to renew, and running renewals on a bounded worker pool.

The scan only schedules (certmagic's maintain loop is the model): it asks the
pipeline's policy which certificates are due, hands each to the pool at most
once, and computes the next exact wake-up so a certificate is renewed at its
stored ``renew_at`` rather than up to ``check_interval`` late. Workers run
the same ``Pipeline.renew`` as the CLI and the API, which re-checks under
the lease. Renewals the scan starts never wait for another holder: if a
replica already holds a certificate's lease, this one skips it.

``Jobs`` is the in-memory record the HTTP API exposes (``/v1/jobs/{id}``);
asking to renew a certificate that already has a queued or running job
returns that job, so callers can retry requests freely.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from certd.core.clock import Clock
from certd.core.kinds import Step
from certd.core.policy import Reason, Verdict
from certd.core.status import assess
from certd.engine.app import App
from certd.engine.result import Result
from certd.errors import CertdError
from certd.inventory.models import VersionState
from certd.metrics import Metrics

__all__ = ["Job", "Jobs", "Scheduler"]

log = logging.getLogger("certd.scheduler")
JobKind = Literal["renew", "deploy", "install"]
JobState = Literal["queued", "running", "succeeded", "failed"]
_KEEP_FINISHED = 1000


@dataclass
class Job:
    """One requested piece of work and, once done, its result."""

    id: str
    name: str
    kind: JobKind
    force: bool
    state: JobState = "queued"
    result: Result | None = None
    created_at: float = field(default_factory=time.time)

    def as_json(self) -> dict[str, Any]:
        return {
            "job": self.id,
            "name": self.name,
            "kind": self.kind,
            "state": self.state,
            "result": self.result.as_json() if self.result else None,
        }


class Jobs:
    """Thread-safe job table: at most one open job per (certificate, kind)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._open: dict[tuple[str, JobKind], str] = {}

    def open_or_create(self, name: str, kind: JobKind, force: bool) -> tuple[Job, bool]:
        """The open job for this certificate and kind, or a new one (``True`` when new)."""
        with self._lock:
            existing = self._open.get((name, kind))
            if existing is not None:
                return self._jobs[existing], False
            job = Job(id=uuid.uuid4().hex[:16], name=name, kind=kind, force=force)
            self._jobs[job.id] = job
            self._open[(name, kind)] = job.id
            self._trim()
            return job, True

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def is_open(self, name: str, kind: JobKind) -> bool:
        with self._lock:
            return (name, kind) in self._open

    def start(self, job: Job) -> None:
        with self._lock:
            job.state = "running"

    def finish(self, job: Job, result: Result) -> None:
        with self._lock:
            job.result = result
            job.state = "succeeded" if result.ok else "failed"
            self._open.pop((job.name, job.kind), None)

    def _trim(self) -> None:
        finished = [j for j in self._jobs.values() if j.state in ("succeeded", "failed")]
        for job in sorted(finished, key=lambda j: j.created_at)[: max(0, len(finished) - _KEEP_FINISHED)]:
            del self._jobs[job.id]


class Scheduler:
    """Scans for due certificates and runs renewals; shared by the daemon and the API."""

    def __init__(
        self,
        app: Callable[[], App],
        clock: Clock,
        *,
        workers: int,
        metrics: Metrics | None = None,
        inline: bool = False,
        agent: bool = False,
    ) -> None:
        self._app = app
        self._clock = clock
        self._metrics = metrics
        self.jobs = Jobs()
        self._inline = inline
        self.agent = agent
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="renew")
        self._next_wakeup: datetime | None = None
        self.last_scan: datetime | None = None
        # Called with the new next wake-up after a scan and after each finished job (the daemon re-arms its timer).
        self.on_wakeup_changed: Callable[[datetime | None], None] | None = None

    # -- submitting work -----------------------------------------------------------
    def submit(self, name: str, *, kind: JobKind = "renew", force: bool = True, wait_for_lease: bool = True) -> Job:
        """Queue work for one certificate, or return the job already open for it."""
        job, created = self.jobs.open_or_create(name, kind, force)
        if created:
            if self._inline:
                self._run(job, wait_for_lease)
            else:
                fut: Future[None] = self._pool.submit(self._run, job, wait_for_lease)
                fut.add_done_callback(_log_crash)
        return job

    def _run(self, job: Job, wait_for_lease: bool) -> None:
        self.jobs.start(job)
        app = self._app()
        try:
            if job.kind == "deploy":
                result = app.pipeline.deploy(job.name, wait=timedelta(minutes=5) if wait_for_lease else timedelta(0))
            elif job.kind == "install":
                result = app.pipeline.install(job.name)
            else:
                wait = timedelta(minutes=5) if wait_for_lease else timedelta(0)
                result = app.pipeline.renew(job.name, force=job.force, wait=wait)
        except Exception as exc:
            log.exception("job %s for %s crashed", job.id, job.name)
            result = Result(job.name, "failed", failed_step=Step.INTERNAL, error=f"{type(exc).__name__}: {exc}")
        self.jobs.finish(job, result)
        if self._metrics is not None:
            self.refresh_metrics([job.name])
        if not self._inline and not self.agent:
            self.recompute_wakeup()

    # -- scanning ------------------------------------------------------------------
    def scan(self) -> list[str]:
        """Submit every due certificate not already in progress; return their names."""
        app = self._app()
        now = self._clock.now()
        started: list[str] = []
        if self.agent:
            return self._scan_installs(app, now)
        try:
            app.pipeline.refresh_renewal_info()
        except CertdError as exc:  # ARI is advice: a failure must not stop the scan that renews by the lifetime rule
            log.error("refreshing ARI renewal windows failed: %s", exc)
        except Exception:
            log.exception("refreshing ARI renewal windows failed")
        verdicts = app.pipeline.verdicts()
        # Earliest renewal time first: when the budget is short, certificates closest to expiry get it.
        due = sorted(((n, v) for n, v in verdicts.items() if v.due),
                     key=lambda item: item[1].at or datetime.min.replace(tzinfo=now.tzinfo))
        for name, _verdict in due:
            if not self.jobs.is_open(name, "renew"):
                self.submit(name, force=False, wait_for_lease=False)
                started.append(name)
        started += self._complete_pending_deploys(app, verdicts)
        self.recompute_wakeup(None if started else verdicts)
        self.last_scan = now
        if self._metrics is not None:
            self.refresh_metrics(list(app.config.certificates))
        return started

    def _complete_pending_deploys(self, app: App, verdicts: dict[str, Verdict]) -> list[str]:
        """Deploy again what is published but not deployed: a server not running on first start, or a
        rollout that failed (once its backoff has passed). A new order would not help either.
        """
        started = []
        versions = app.inventory.current_versions()
        for name, cfg in app.config.certificates.items():
            version, verdict = versions.get(name), verdicts.get(name)
            if not cfg.deploy or version is None or verdict is None or verdict.due:
                continue
            pending = version.state == VersionState.PUBLISHED.value
            # The verdict's time is the plan's own ``now`` when the backoff is over, read after the scan's:
            # compared with the scan's, a due retry looked a few microseconds early, and never ran.
            retry = verdict.reason is Reason.REDEPLOY and (verdict.at is None or verdict.at <= self._clock.now())
            if (pending or retry) and not self.jobs.is_open(name, "deploy") and not self.jobs.is_open(name, "renew"):
                self.submit(name, kind="deploy", wait_for_lease=False)
                started.append(f"{name} (deploy)")
        return started

    def _scan_installs(self, app: App, now: datetime) -> list[str]:
        """Agent role: install what another replica issued; never renew."""
        started = []
        for name in app.config.certificates:
            if not self.jobs.is_open(name, "install") and app.pipeline.needs_install(name):
                self.submit(name, kind="install")
                started.append(name)
        self._next_wakeup = None
        self.last_scan = now
        return started

    def recompute_wakeup(self, verdicts: dict[str, Verdict] | None = None) -> datetime | None:
        """The earliest future ``renew_at`` or backoff end, from the inventory as it is now."""
        now = self._clock.now()
        verdicts = verdicts if verdicts is not None else self._app().pipeline.verdicts()
        times = [v.at for v in verdicts.values() if not v.due and v.at is not None and v.at > now]
        self._next_wakeup = min(times, default=None)
        if self.on_wakeup_changed is not None:
            self.on_wakeup_changed(self._next_wakeup)
        return self._next_wakeup

    def refresh_metrics(self, names: list[str]) -> None:
        """Per-certificate gauges from the inventory (correct even for another replica's work).

        The conditions come from ``certd/status.py``, the same computation behind ``list``, ``check`` and
        ``/readyz``, so a gauge can never contradict them; only ``renewing`` needs the policy's verdict.
        """
        if self._metrics is None:
            return
        app = self._app()
        now = self._clock.now()
        rows = {r.name: r for r in app.inventory.certificates()}
        versions = app.inventory.current_versions()
        verdicts = app.pipeline.verdicts()
        for name in names:
            if name not in verdicts:
                continue
            version, verdict = versions.get(name), verdicts[name]
            found = assess(rows.get(name), version, now, due=verdict.due or verdict.reason is Reason.BACKING_OFF)
            self._metrics.set_certificate(
                name,
                not_after=version.not_after if version else None,
                renew_at=version.renew_at if version else None,
                conditions=found.conditions,
            )

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop taking work; with ``wait``, let running renewals finish (they release their leases)."""
        self._pool.shutdown(wait=wait, cancel_futures=True)


def _log_crash(fut: Future[None]) -> None:
    exc = fut.exception()
    if exc is not None:
        log.error("renewal worker crashed: %s", exc)
