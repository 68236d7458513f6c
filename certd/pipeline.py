"""The renewal pipeline: the one place that knows the order of the steps.

``plan → key → issue → check → publish → deploy → verify → record`` for ONE
certificate, under its lease. The daemon, the CLI and the HTTP API all call
``Pipeline.renew`` (and ``deploy``, ``import_certificate``, ``revoke``); none
has its own copy of a step.

Guarantees:
- At most one renewal of a certificate runs at a time across processes
  (the lease). A caller that finds the lease held waits for that renewal and
  reports *its* outcome, so N simultaneous requests make one order.
- The worker checks again under the lease (the certificate may have been
  renewed while it waited) and skips if nothing is due.
- A version that fails ``check`` is never published; the files on disk and
  what servers load stay as they were.
- Every step's outcome becomes a version state and an event carrying the
  renewal id; failures also feed the scheduler's backoff.
"""

from __future__ import annotations

import fcntl
import json
import logging
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography import x509

from certd.budget import Budget
from certd.certs import certs_pem, fingerprint, intermediates_only, load_pem_certs, rfc3339, serial_hex
from certd.clock import Clock
from certd.config import CertificateConfig, Config
from certd.deploy.base import DeployContext, DeployTarget, PublishedPaths
from certd.errors import CertdError, LeaseLost, LeaseTimeout, VerifyError
from certd.inventory.keybox import KeyBox
from certd.inventory.leases import LeaseInfo, LeaseManager
from certd.inventory.models import Event, Version, VersionState
from certd.inventory.store import Inventory
from certd.issuers.base import Issuer, IssueRequest, RenewalInfo, RevocationReason
from certd.keys import PrivateKey, build_csr, generate_key, key_pem, key_type_of, load_key_pem
from certd.metrics import Metrics
from certd.policy import Current, Verdict, Wanted, backoff_until, evaluate, hard_deadline, pick_renew_at
from certd.publish import Generation, Publisher, current_generation
from certd.x509check import Expectations, check_certificate

__all__ = ["Outcome", "Pipeline", "Prober", "Result"]

log = logging.getLogger("certd.pipeline")
Outcome = Literal["renewed", "deployed", "skipped", "failed", "imported", "revoked"]
# verify(endpoint, sni, ca_bundle_pem_roots, expected_leaf, timeout) -> message; raises VerifyError
Prober = Callable[[str, str, tuple[x509.Certificate, ...], x509.Certificate, timedelta], str]


@dataclass(frozen=True)
class Result:
    """What one call did; ``as_json`` is one entry of ``renew --json``."""

    name: str
    outcome: Outcome
    serial: str | None = None
    state: str | None = None
    failed_step: str | None = None
    error: str | None = None
    renewal_id: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome != "failed"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class _StepError(Exception):
    """Carries the failing step name with the certd error that ended it."""

    def __init__(self, step: str, error: CertdError) -> None:
        super().__init__(str(error))
        self.step = step
        self.error = error


@contextmanager
def _step(name: str) -> Iterator[None]:
    try:
        yield
    except _StepError:
        raise
    except CertdError as exc:
        raise _StepError(name, exc) from exc
    except Exception as exc:
        log.exception("unexpected error in step %s", name)
        raise _StepError(name, CertdError(f"internal error in {name}: {type(exc).__name__}: {exc}")) from exc


class _Heartbeat:
    """Extends the lease in the background; records when it was lost."""

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

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Pipeline:
    """Renew, deploy, import and revoke single certificates; thread-safe."""

    def __init__(
        self,
        config: Config,
        inventory: Inventory,
        leases: LeaseManager,
        *,
        issuer_factory: Callable[[str], Issuer],
        targets: Mapping[str, DeployTarget],
        keybox: KeyBox,
        clock: Clock,
        prober: Prober | None = None,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.inventory = inventory
        self.leases = leases
        self._issuer_factory = issuer_factory
        self._issuers: dict[str, Issuer] = {}
        self._issuers_lock = threading.Lock()
        self.targets = targets
        self.keybox = keybox
        self.clock = clock
        self.prober = prober
        self._rng = rng or random.SystemRandom()
        self.metrics = metrics

    # -- helpers -----------------------------------------------------------------
    def issuer(self, name: str) -> Issuer:
        with self._issuers_lock:
            if name not in self._issuers:
                self._issuers[name] = self._issuer_factory(name)
            return self._issuers[name]

    def budget(self, issuer: str) -> Budget | None:
        """The issuer's rate-limit budget, if it has one."""
        limits = self.config.issuers[issuer].rate_limits
        return None if limits is None else Budget(self.inventory.sessions, issuer, limits)

    def _cert_config(self, name: str) -> CertificateConfig:
        cfg = self.config.certificates.get(name)
        if cfg is None:
            raise CertdError(f"certificate {name!r} is not in the configuration", reason="UnknownCertificate")
        return cfg

    def publisher(self, cfg: CertificateConfig) -> Publisher:
        return Publisher(cfg.output_dir, keep=cfg.keep, key_mode=cfg.mode, owner=cfg.owner, group=cfg.group)

    def _event(self, name: str, kind: str, message: str, rid: str | None, **kw: Any) -> None:
        level = kw.get("level", "info")
        log.log(logging.WARNING if level != "info" else logging.INFO, "%s: %s: %s", name, kind, message,
                extra={"certificate": name, "renewal_id": rid, "event": kind})
        self.inventory.event(name, kind, message, self.clock.now(), renewal_id=rid, **kw)

    def _count(self, metric: str, *labels: str) -> None:
        if self.metrics is not None:
            getattr(self.metrics, metric).labels(*labels).inc()

    def wanted(self, name: str, cfg: CertificateConfig) -> Wanted:
        return Wanted(issuer=cfg.issuer, names=tuple(cfg.names), key_type=str(cfg.key))

    def current(self, version: Version | None) -> Current | None:
        if version is None:
            return None
        return Current(
            issuer=version.issuer,
            names=tuple(json.loads(version.names)),
            key_type=version.key_type,
            not_before=version.not_before,
            not_after=version.not_after,
            renew_at=version.renew_at or version.not_after,
            revoked=version.state == VersionState.REVOKED.value,
        )

    def verdict(self, name: str, *, force: bool = False) -> Verdict:
        """What ``plan`` shows and what ``renew`` acts on."""
        cfg = self._cert_config(name)
        row = self.inventory.certificate(name)
        return evaluate(
            self.wanted(name, cfg),
            self.current(self.inventory.current_version(name)),
            self.clock.now(),
            force=force,
            next_attempt_at=row.next_attempt_at if row else None,
        )

    def trust_bundle(self, name: str) -> list[x509.Certificate]:
        """Intermediates and pinned roots of ``name``'s issuer: what a load balancer pins."""
        cfg = self._cert_config(name)
        issuer = self.issuer(cfg.issuer)
        ca_chain = getattr(issuer, "ca_chain", None)
        if callable(ca_chain):
            certs: list[x509.Certificate] = list(ca_chain())
        else:
            version = self.inventory.current_version(name)
            certs = list(load_pem_certs(version.chain_pem.encode())) if version and version.chain_pem else []
            certs += issuer.roots() or []
        if not certs:
            raise CertdError(f"certificate {name}: issuer {cfg.issuer} has no CA certificates to pin yet")
        unique = {fingerprint(c): c for c in certs}
        return list(unique.values())

    def refresh_renewal_info(self) -> list[str]:
        """Ask the CA again for the ARI window of every current version whose ``Retry-After`` has passed.

        A CA moves a window earlier when it plans to revoke (RFC 9773 section 4.2), so the
        renewal time follows the newest window; a time already inside the window is kept, so a
        fleet's jitter is not redrawn on every poll. Returns the certificates whose time moved.
        """
        now = self.clock.now()
        moved = []
        for version in self.inventory.ari_due(now):
            cfg = self.config.certificates.get(version.certificate)
            if cfg is None or cfg.issuer != version.issuer:
                continue
            issuer = self.issuer(cfg.issuer)
            chain = load_pem_certs(version.chain_pem.encode())
            if not isinstance(issuer, RenewalInfo) or not chain:
                continue
            leaf = load_pem_certs(version.cert_pem.encode())[0]
            window = issuer.renewal_window(leaf, chain[0])
            if window is None:  # CA unreachable or no ARI now: ask again later, keep the time we have
                self.inventory.set_renewal_info(version.id, now, renew_at=version.renew_at or version.not_after,
                                                next_check=now + timedelta(hours=1))
                continue
            renew_at = version.renew_at
            if renew_at is None or not window.start <= renew_at <= window.end:
                renew_at = pick_renew_at(
                    version.not_before, version.not_after, renew_before=cfg.renew_before,
                    renew_fraction=cfg.renew_fraction, ari_window=(window.start, window.end), rng=self._rng,
                )
            next_check = window.retry_after or now + timedelta(hours=6)
            self.inventory.set_renewal_info(version.id, now, renew_at=renew_at, next_check=next_check)
            if renew_at != version.renew_at:
                moved.append(version.certificate)
                self._event(version.certificate, "ari.window", f"the CA suggests renewing between "
                            f"{rfc3339(window.start)} and {rfc3339(window.end)}; renewal now at {rfc3339(renew_at)}",
                            None)
        return moved

    def verdicts(self) -> dict[str, Verdict]:
        """``verdict`` for every configured certificate, from two queries (for scans)."""
        rows = self.inventory.plan_rows()
        now = self.clock.now()
        out: dict[str, Verdict] = {}
        for name, cfg in self.config.certificates.items():
            row, current = rows.get(name, (None, None))
            out[name] = evaluate(self.wanted(name, cfg), current, now,
                                 next_attempt_at=row.next_attempt_at if row else None)
        return out

    def _refresh_bundle_file(self, name: str, cfg: CertificateConfig, rid: str) -> None:
        """Keep the issuer's ``bundle_file`` (what load balancers pin) current; a failure only warns."""
        path = self.config.issuers[cfg.issuer].bundle_file
        if path is None:
            return
        try:
            pem = certs_pem(self.trust_bundle(name))
            if path.exists() and path.read_bytes() == pem:
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(pem)
            tmp.replace(path)
            self._event(name, "bundle.written", f"issuer {cfg.issuer}: trust bundle written to {path}", rid)
        except (CertdError, OSError) as exc:
            self._event(name, "bundle.failed", f"issuer {cfg.issuer}: cannot write {path}: {exc}", rid,
                        level="warning")

    # -- leases ------------------------------------------------------------------
    def _acquire(
        self, name: str, rid: str, wait: timedelta, requested_at: datetime | None = None
    ) -> LeaseInfo | Result:
        """Our lease, or the outcome of a renewal that finished while this request was waiting.

        A renewal of ``name`` that finished after this request began answers it:
        twenty simultaneous ``renew --force`` calls make one order, however the
        threads or processes happen to be scheduled.
        """
        started = min(requested_at, self.clock.now()) if requested_at else self.clock.now()
        deadline = time.monotonic() + wait.total_seconds()
        delay = 0.02
        while True:
            lease = self.leases.try_acquire(name, rid, self.clock.now())
            finished = self.inventory.finished_since(name, started, exclude=rid)
            if finished is not None:
                if lease is not None:
                    self.leases.release(lease, self.clock.now())
                return self._finished(name, finished)
            if lease is not None:
                return lease
            if not wait:
                return Result(name, "skipped", renewal_id=rid, reason="LeaseHeld")
            if time.monotonic() >= deadline:
                err = LeaseTimeout(f"certificate {name}: another renewal held the lease for longer than {wait}")
                return Result(name, "failed", failed_step="lease", error=str(err), reason=err.reason)
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _finished(self, name: str, ev: Event) -> Result:
        rid = ev.renewal_id or ""
        version = self.inventory.version_for_renewal(rid)
        outcome: Outcome = {"renewal.succeeded": "renewed", "renewal.skipped": "skipped"}.get(ev.kind, "failed")  # type: ignore[assignment]
        return Result(
            name,
            outcome,
            serial=version.serial if version else None,
            state=version.state if version else None,
            failed_step=ev.step if outcome == "failed" else None,
            error=ev.message if outcome == "failed" else None,
            renewal_id=rid,
        )

    # -- renew -------------------------------------------------------------------
    def _begin(
        self, name: str, step: str, wait: timedelta, requested_at: datetime | None = None
    ) -> tuple[CertificateConfig, str, LeaseInfo] | Result:
        """Config, renewal id and lease for one operation, or the Result that ends it early."""
        rid = uuid.uuid4().hex[:16]
        try:
            cfg = self._cert_config(name)
        except CertdError as exc:
            return Result(name, "failed", failed_step=step, error=str(exc), reason=exc.reason)
        got = self._acquire(name, rid, wait, requested_at)
        return got if isinstance(got, Result) else (cfg, rid, got)

    def renew(
        self,
        name: str,
        *,
        force: bool = False,
        wait: timedelta = timedelta(minutes=5),
        requested_at: datetime | None = None,
    ) -> Result:
        """Renew one certificate now if due (or forced); see the module docstring.

        ``requested_at`` is when the caller asked (default: now); a renewal of
        ``name`` that finished after it answers this request.
        """
        begun = self._begin(name, "plan", wait, requested_at)
        if isinstance(begun, Result):
            return begun
        cfg, rid, got = begun
        started = time.monotonic()
        with _Heartbeat(self.leases, got, self.clock) as beat:
            try:
                result = self._renew_locked(name, cfg, beat, force, rid)
            finally:
                self.leases.release(beat.lease, self.clock.now())
        if self.metrics is not None and result.outcome != "skipped":
            self.metrics.renewals.labels(name, cfg.issuer, "success" if result.ok else "failure").inc()
            self.metrics.renewal_duration.observe(time.monotonic() - started)
        return result

    def _renew_locked(self, name: str, cfg: CertificateConfig, beat: _Heartbeat, force: bool, rid: str) -> Result:
        old = self.inventory.current_version(name)
        try:
            with _step("plan"):
                verdict = self.verdict(name, force=force)
        except _StepError as exc:
            return self._fail(name, rid, exc, None, old)
        if not verdict.due:
            msg = f"{verdict.reason}: {verdict.message}"
            self._event(name, "renewal.skipped", msg, rid, step="plan")
            return Result(name, "skipped", serial=old.serial if old else None, state=old.state if old else None,
                          renewal_id=rid, reason=str(verdict.reason))
        self._event(name, "renewal.started", f"{verdict.reason}: {verdict.message}", rid, step="plan")
        version_id: int | None = None
        try:
            with _step("key"):
                key = generate_key(cfg.key)
                csr = build_csr(key, cfg.names)
            issuer = self.issuer(cfg.issuer)
            with _step("issue"):
                request = IssueRequest(
                    certificate=name, names=tuple(cfg.names), key_type=cfg.key, csr=csr,
                    lifetime=cfg.lifetime, replaces=old.ari_cert_id if old else None,
                )
                budget = self.budget(cfg.issuer)
                exempt = request.replaces is not None
                reservation = budget.reserve(name, cfg.names, self.clock.now(), exempt=exempt) if budget else []
                try:
                    issued = issuer.issue(request)
                except CertdError:
                    self._count("issuer_requests", cfg.issuer, "failure")
                    if budget is not None:
                        budget.release(reservation)
                    raise
                self._count("issuer_requests", cfg.issuer, "success")
                if issued.private_key is not None:
                    key = issued.private_key
                chain = intermediates_only(issued.chain)
            with _step("record"):
                version_id = self._add_version(beat.lease, name, cfg, issuer, issued.leaf, chain, key, rid)
            with _step("check"):
                roots = issuer.roots()
                warnings = check_certificate(
                    issued.leaf, chain, key, self._expectations(cfg, roots), self.clock.now()
                )
                for w in warnings:
                    self._event(name, "check.warning", w, rid, step="check", level="warning")
                self.inventory.update_version(beat.lease, version_id, self.clock.now(), state=VersionState.CHECKED)
            state = self._publish_and_deploy(name, cfg, beat, version_id, issued.leaf, chain, key, rid,
                                             old, tuple(roots or ()))
        except _StepError as exc:
            return self._fail(name, rid, exc, version_id, old, beat)
        self.inventory.record_outcome(name, self.clock.now(), error=None)
        self._refresh_bundle_file(name, cfg, rid)
        serial = serial_hex(issued.leaf)
        self._event(name, "renewal.succeeded", f"serial {serial} {state}", rid, step="record")
        return Result(name, "renewed", serial=serial, state=state, renewal_id=rid, reason=str(verdict.reason))

    def _expectations(self, cfg: CertificateConfig, roots: list[x509.Certificate] | None) -> Expectations:
        # A new certificate must outlive its own renewal window; for very short lifetimes, a tenth of it.
        floor = min(timedelta(minutes=1), cfg.lifetime / 10) if cfg.lifetime else timedelta(minutes=1)
        return Expectations(
            names=tuple(cfg.names),
            key_type=cfg.key,
            roots=tuple(roots) if roots else None,
            min_remaining=cfg.renew_before + floor if cfg.renew_before else floor,
        )

    def _add_version(
        self, lease: LeaseInfo, name: str, cfg: CertificateConfig, issuer: Issuer,
        leaf: x509.Certificate, chain: tuple[x509.Certificate, ...], key: PrivateKey, rid: str,
    ) -> int:
        ari_window = None
        ari_id = None
        ari_next = None
        if isinstance(issuer, RenewalInfo) and chain:
            window = issuer.renewal_window(leaf, chain[0])
            if window is not None:  # the CA speaks ARI: renewals will carry `replaces`
                ari_window = (window.start, window.end)
                ari_id = issuer.cert_id(leaf)
                ari_next = window.retry_after
        renew_at = pick_renew_at(
            leaf.not_valid_before_utc, leaf.not_valid_after_utc, renew_before=cfg.renew_before,
            renew_fraction=cfg.renew_fraction, ari_window=ari_window, rng=self._rng,
        )
        serial = serial_hex(leaf)
        key_enc = self.keybox.seal(key_pem(key), f"version:{name}:{serial}") if self.keybox.enabled else None
        return self.inventory.add_version(
            lease, self.clock.now(), renewal_id=rid, serial=serial, fingerprint=fingerprint(leaf),
            issuer=cfg.issuer, key_type=str(key_type_of(key) or cfg.key), names=json.dumps(cfg.names),
            not_before=leaf.not_valid_before_utc, not_after=leaf.not_valid_after_utc, renew_at=renew_at,
            ari_cert_id=ari_id, ari_next_check_at=ari_next, state=VersionState.ISSUED.value,
            cert_pem=certs_pem([leaf]).decode(), chain_pem=certs_pem(chain).decode(), key_enc=key_enc,
        )

    def _publish_and_deploy(
        self, name: str, cfg: CertificateConfig, beat: _Heartbeat, version_id: int,
        leaf: x509.Certificate, chain: tuple[x509.Certificate, ...], key: PrivateKey, rid: str,
        old: Version | None, roots: tuple[x509.Certificate, ...],
    ) -> str:
        publisher = self.publisher(cfg)
        with _step("publish"):
            if beat.lost.is_set():
                raise LeaseLost(f"certificate {name}: lease lost before publishing; not publishing")
            # The fencing check and the switch are as close as the file system allows.
            self.leases.extend(beat.lease, self.clock.now())
            files = _files(key, leaf, chain)
            generation = publisher.publish(serial_hex(leaf), files)
            self.inventory.make_current(beat.lease, version_id, self.clock.now())
            self.inventory.update_version(beat.lease, version_id, self.clock.now(),
                                          state=VersionState.PUBLISHED.value, generation=generation.name)
            self._event(name, "publish.done", f"serial {serial_hex(leaf)} in {generation.name}", rid,
                        step="publish")
        try:
            return self._deploy_and_verify(name, cfg, beat.lease, version_id, leaf, chain, files, rid, roots)
        except _StepError as exc:
            if cfg.rollback and old is not None:
                self._rollback(name, cfg, beat.lease, publisher, old, rid, roots)
            raise exc

    def _deploy_and_verify(
        self, name: str, cfg: CertificateConfig, lease: LeaseInfo | None, version_id: int,
        leaf: x509.Certificate, chain: tuple[x509.Certificate, ...], files: dict[str, bytes], rid: str,
        roots: tuple[x509.Certificate, ...],
    ) -> str:
        state = VersionState.PUBLISHED
        ctx = DeployContext(
            certificate=name, serial=serial_hex(leaf), names=tuple(cfg.names), leaf=leaf, chain=chain,
            roots=roots, key_pem=files["privkey.pem"], fullchain_pem=files["fullchain.pem"],
            combined_pem=files["combined.pem"], paths=PublishedPaths.under(cfg.output_dir),
        )
        if cfg.deploy:
            with _step("deploy"):
                for target_name in cfg.deploy:
                    try:
                        message = self.targets[target_name].deploy(ctx)
                    except CertdError:
                        self._count("deploys", name, target_name, "failure")
                        raise
                    self._count("deploys", name, target_name, "success")
                    self._event(name, "deploy.done", f"{target_name}: {message}", rid, step="deploy")
                state = VersionState.DEPLOYED
                if lease is not None:  # an agent installs for its host only; version states are cluster-wide
                    self.inventory.update_version(lease, version_id, self.clock.now(), state=state.value)
        if cfg.verify:
            with _step("verify"):
                if self.prober is None:
                    raise VerifyError(f"certificate {name}: verify endpoints are configured but no prober")
                for ep in cfg.verify:
                    bundle = _load_bundle(ep.ca_bundle) if ep.ca_bundle else roots
                    try:
                        message = self.prober(ep.endpoint, ep.sni or _default_sni(cfg), bundle, leaf,
                                              cfg.verify_timeout)
                    except CertdError:
                        self._count("probes", name, "failure")
                        raise
                    self._count("probes", name, "success")
                    self._event(name, "verify.done", f"{ep.endpoint}: {message}", rid, step="verify")
                state = VersionState.SERVED
                if lease is not None:  # an agent installs for its host only; version states are cluster-wide
                    self.inventory.update_version(lease, version_id, self.clock.now(), state=state.value)
        return state.value

    def _rollback(
        self, name: str, cfg: CertificateConfig, lease: LeaseInfo, publisher: Publisher, old: Version,
        rid: str, roots: tuple[x509.Certificate, ...],
    ) -> None:
        """Switch back to the previous generation and re-run deploy + verify for it."""
        try:
            if old.generation is None or not (cfg.output_dir / old.generation).is_dir():
                raise CertdError(f"previous generation of serial {old.serial} is no longer on disk")
            publisher.switch(Generation(old.generation, cfg.output_dir / old.generation))
            self.inventory.make_current(lease, old.id, self.clock.now(), previous_state=VersionState.FAILED.value)
            self.inventory.update_version(lease, old.id, self.clock.now(), state=old.state)
            gen = current_generation(cfg.output_dir)
            assert gen is not None
            files = {f: gen.read(f) for f in ("privkey.pem", "fullchain.pem", "combined.pem")}
            leaf = load_pem_certs(old.cert_pem.encode())[0]
            chain = tuple(load_pem_certs(old.chain_pem.encode())) if old.chain_pem else ()
            self._deploy_and_verify(name, cfg, lease, old.id, leaf, chain, files, rid, roots)
            self._event(name, "rollback.done", f"serial {old.serial} is served again", rid, step="deploy",
                        level="warning")
        except (CertdError, _StepError, OSError) as exc:
            self._event(name, "rollback.failed", f"rollback to serial {old.serial} failed: {exc}", rid,
                        step="deploy", level="error")

    def _fail(
        self, name: str, rid: str, exc: _StepError, version_id: int | None, old: Version | None,
        beat: _Heartbeat | None = None,
    ) -> Result:
        err = exc.error
        message = f"{exc.step}: {err}"
        now = self.clock.now()
        if version_id is not None and beat is not None and not isinstance(err, LeaseLost):
            try:
                self.inventory.update_version(beat.lease, version_id, now, state=VersionState.FAILED.value,
                                              failed_step=exc.step, error=str(err))
            except CertdError:
                log.warning("%s: could not mark version failed (lease lost)", name)
        row = self.inventory.certificate(name)
        failures = (row.failures if row else 0) + 1
        deadline = hard_deadline(old.not_before, old.not_after) if old else None
        retry = backoff_until(failures, now, rng=self._rng, deadline=deadline)
        if err.retry_after is not None:
            retry = max(retry, now + err.retry_after)
        self.inventory.record_outcome(name, now, error=message, next_attempt_at=retry)
        self._event(name, "renewal.failed", str(err), rid, step=exc.step, level="error")
        version = self.inventory.version(version_id) if version_id is not None else None
        return Result(name, "failed", serial=version.serial if version else None,
                      state=version.state if version else None, failed_step=exc.step, error=str(err),
                      renewal_id=rid, reason=err.reason)

    # -- deploy (re-run for the current version) -----------------------------------
    def deploy(self, name: str, *, wait: timedelta = timedelta(minutes=5)) -> Result:
        """Re-run deploy + verify for the current version."""
        begun = self._begin(name, "deploy", wait)
        if isinstance(begun, Result):
            return begun
        cfg, rid, got = begun
        try:
            version = self.inventory.current_version(name)
            gen = current_generation(cfg.output_dir)
            if version is None or gen is None:
                return Result(name, "failed", failed_step="deploy", error="nothing published yet", renewal_id=rid)
            files = {f: gen.read(f) for f in ("privkey.pem", "fullchain.pem", "combined.pem")}
            leaf = load_pem_certs(version.cert_pem.encode())[0]
            chain = tuple(load_pem_certs(version.chain_pem.encode())) if version.chain_pem else ()
            roots = tuple(self.issuer(cfg.issuer).roots() or ())
            try:
                state = self._deploy_and_verify(name, cfg, got, version.id, leaf, chain, files, rid, roots)
            except _StepError as exc:
                self._event(name, "deploy.failed", str(exc.error), rid, step=exc.step, level="error")
                return Result(name, "failed", serial=version.serial, state=version.state, failed_step=exc.step,
                              error=str(exc.error), renewal_id=rid, reason=exc.error.reason)
            return Result(name, "deployed", serial=version.serial, state=state, renewal_id=rid)
        finally:
            self.leases.release(got, self.clock.now())

    # -- install (agent role) ------------------------------------------------------
    def needs_install(self, name: str) -> bool:
        """True when this host's files do not hold the inventory's current version."""
        cfg = self._cert_config(name)
        version = self.inventory.current_version(name)
        if version is None or version.state in (VersionState.REVOKED.value, VersionState.FAILED.value):
            return False
        return _local_serial(cfg) != version.serial

    def install(self, name: str) -> Result:
        """Agent role: publish the current version from the inventory on this host, then deploy + verify.

        Issuing stays cluster-wide (other replicas hold the leases); this only
        touches this host's files, under a host-local lock, so it takes no lease.
        """
        rid = uuid.uuid4().hex[:16]
        cfg = self._cert_config(name)
        version = self.inventory.current_version(name)
        if version is None:
            return Result(name, "skipped", renewal_id=rid, reason="NothingIssued")
        if _local_serial(cfg) == version.serial:
            return Result(name, "skipped", serial=version.serial, state=version.state, renewal_id=rid,
                          reason="UpToDate")
        if version.key_enc is None:
            err = "the inventory holds no key for this version: set [database] key_file on the issuing replicas"
            return Result(name, "failed", serial=version.serial, failed_step="publish", error=err, renewal_id=rid)
        try:
            with _step("publish"):
                key = load_key_pem(self.keybox.open(version.key_enc, f"version:{name}:{version.serial}"))
                leaf = load_pem_certs(version.cert_pem.encode())[0]
                chain = tuple(load_pem_certs(version.chain_pem.encode())) if version.chain_pem else ()
                files = _files(key, leaf, chain)
                with _host_lock(cfg.output_dir):
                    generation = self.publisher(cfg).publish(version.serial, files)
                self._event(name, "agent.published", f"{socket.gethostname()}: serial {version.serial} in "
                            f"{generation.name}", rid, step="publish")
            roots = tuple(self.issuer(cfg.issuer).roots() or ())
            state = self._deploy_and_verify(name, cfg, None, version.id, leaf, chain, files, rid, roots)
        except _StepError as exc:
            self._event(name, "agent.failed", f"{socket.gethostname()}: {exc.error}", rid, step=exc.step,
                        level="error")
            return Result(name, "failed", serial=version.serial, failed_step=exc.step, error=str(exc.error),
                          renewal_id=rid, reason=exc.error.reason)
        return Result(name, "deployed", serial=version.serial, state=state, renewal_id=rid)

    # -- import ------------------------------------------------------------------
    def import_certificate(self, name: str, cert_pem: bytes, key_pem_data: bytes, chain_pem: bytes | None) -> Result:
        """Adopt an existing certificate: check it like an issued one, publish it, record it."""
        rid = uuid.uuid4().hex[:16]
        cfg = self._cert_config(name)
        certs = load_pem_certs(cert_pem)
        leaf, rest = certs[0], certs[1:]
        if chain_pem:
            rest += load_pem_certs(chain_pem)
        chain = intermediates_only(rest)
        key = load_key_pem(key_pem_data)
        issuer = self.issuer(cfg.issuer)
        check_certificate(leaf, chain, key, self._expectations(cfg, issuer.roots()), self.clock.now())
        got = self._acquire(name, rid, timedelta(minutes=5))
        if isinstance(got, Result):
            raise LeaseTimeout(got.error or f"certificate {name}: busy")
        with _Heartbeat(self.leases, got, self.clock) as beat:
            try:
                old = self.inventory.current_version(name)
                version_id = self._add_version(beat.lease, name, cfg, issuer, leaf, chain, key, rid)
                self.inventory.update_version(beat.lease, version_id, self.clock.now(),
                                              state=VersionState.CHECKED.value)
                state = self._publish_and_deploy(name, cfg, beat, version_id, leaf, chain, key, rid, old,
                                                 tuple(issuer.roots() or ()))
            except _StepError as exc:
                return self._fail(name, rid, exc, None, None, beat)
            finally:
                self.leases.release(beat.lease, self.clock.now())
        self._event(name, "renewal.succeeded", f"imported serial {serial_hex(leaf)}", rid, step="record")
        return Result(name, "imported", serial=serial_hex(leaf), state=state, renewal_id=rid)

    # -- revoke ------------------------------------------------------------------
    def revoke(self, name: str, reason: RevocationReason) -> Result:
        """Revoke the current version at its issuer and mark it revoked (no replacement here)."""
        rid = uuid.uuid4().hex[:16]
        cfg = self._cert_config(name)
        got = self._acquire(name, rid, timedelta(minutes=5))
        if isinstance(got, Result):
            return got
        try:
            version = self.inventory.current_version(name)
            if version is None:
                return Result(name, "failed", failed_step="revoke", error="no current version to revoke")
            leaf = load_pem_certs(version.cert_pem.encode())[0]
            try:
                with _step("revoke"):
                    self.issuer(version.issuer if version.issuer in self.config.issuers else cfg.issuer).revoke(
                        leaf, reason
                    )
            except _StepError as exc:
                self._event(name, "revoke.failed", str(exc.error), rid, step="revoke", level="error")
                return Result(name, "failed", serial=version.serial, state=version.state, failed_step="revoke",
                              error=str(exc.error), renewal_id=rid, reason=exc.error.reason)
            self.inventory.update_version(got, version.id, self.clock.now(), state=VersionState.REVOKED.value)
            self._event(name, "revoke.done", f"serial {version.serial} revoked ({reason})", rid, step="revoke",
                        level="warning")
            return Result(name, "revoked", serial=version.serial, state=VersionState.REVOKED.value, renewal_id=rid)
        finally:
            self.leases.release(got, self.clock.now())


def _files(key: PrivateKey, leaf: x509.Certificate, chain: tuple[x509.Certificate, ...]) -> dict[str, bytes]:
    key_bytes = key_pem(key)
    leaf_pem = certs_pem([leaf])
    chain_bytes = certs_pem(chain)
    return {
        "privkey.pem": key_bytes,
        "cert.pem": leaf_pem,
        "chain.pem": chain_bytes,
        "fullchain.pem": leaf_pem + chain_bytes,
        "combined.pem": key_bytes + leaf_pem + chain_bytes,
    }


def _local_serial(cfg: CertificateConfig) -> str | None:
    gen = current_generation(cfg.output_dir)
    if gen is None:
        return None
    try:
        return serial_hex(load_pem_certs(gen.read("cert.pem"))[0])
    except (OSError, ValueError):
        return None


@contextmanager
def _host_lock(output_dir: Path) -> Iterator[None]:
    """One installer per output_dir on this host (agents of one host share the files, not the lease)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / ".certd.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _load_bundle(path: Any) -> tuple[x509.Certificate, ...]:
    try:
        return tuple(load_pem_certs(path.read_bytes()))
    except (OSError, ValueError) as exc:
        raise VerifyError(f"cannot read CA bundle {path}: {exc}") from exc


def _default_sni(cfg: CertificateConfig) -> str:
    return next((n for n in cfg.names if not n.startswith("*.")), cfg.names[0])

