"""The renewal pipeline: the one place that knows the order of the steps.

``plan → key → issue → record → check → publish → deploy → verify`` for ONE
certificate, under its lease. The daemon, the CLI and the HTTP API all call
``Pipeline.renew`` (and ``deploy``, ``import_certificate``, ``revoke``,
``install``, whose bodies live in ``operations.py``); none has its own copy
of a step.

Guarantees:
- Every operation runs inside ``Pipeline.run``: whatever fails, wherever —
  inside a step or between two — ends in ``Recorder.failure`` (event naming
  the certificate and step, ``failures`` bumped, ``last_error`` set, backoff
  until ``next_attempt_at``). Nothing of an operation runs outside it.
- At most one operation on a certificate runs at a time across processes
  (the lease, ``hold.py``). A renewal that finds the lease held waits and
  reports the renewal that finished meanwhile; other operations wait their
  turn and then do their own work.
- The worker decides again under the lease (the certificate may have been
  renewed while it waited) and skips if nothing is due.
- A version that fails ``check`` is never published; the files on disk and
  what servers load stay as they were.
- certd's own rate-limit budget never holds a renewal inside the hard
  deadline, nor one the operator forced: there the CA's own answer decides.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from cryptography import x509

from certd.config.model import CertificateConfig, Config
from certd.core.clock import Clock
from certd.core.policy import Current, Verdict, Wanted, evaluate, hard_deadline, min_remaining, pick_renew_at
from certd.deploy.base import DeployTarget
from certd.engine import operations
from certd.engine.ari_refresh import refresh_renewal_info
from certd.engine.attempt import Attempt, Fault, as_step_error
from certd.engine.budget import Budget
from certd.engine.hold import Hold
from certd.engine.recorder import Recorder
from certd.engine.result import Operation, Outcome, Result
from certd.engine.rollout import Material, Prober, Rollout
from certd.engine.trust import anchors, ensure_trusted, refresh_bundle_file, trust_bundle
from certd.errors import CertdError
from certd.inventory.leases import LeaseManager
from certd.inventory.models import Event, Version, VersionState
from certd.inventory.store import Inventory
from certd.issuers.base import Issued, Issuer, IssueRequest, RenewalInfo, RevocationReason
from certd.metrics import Metrics
from certd.pki.certs import certs_pem, fingerprint, serial_hex
from certd.pki.keybox import KeyBox
from certd.pki.keys import PrivateKey, build_csr, generate_key, key_pem, key_type_of
from certd.pki.x509check import Expectations, check_certificate, shortened_lifetime, usable_chain
from certd.scrub import held_secrets, refreshed

__all__ = ["Outcome", "Pipeline", "Prober", "Result"]


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
        fault: Fault | None = None,
    ) -> None:
        self.config = config
        self.inventory = inventory
        self.leases = leases
        self.keybox = keybox
        self.clock = clock
        self.metrics = metrics
        self.fault = fault
        self._issuer_factory = issuer_factory
        self._issuers: dict[str, Issuer] = {}
        self._issuers_lock = threading.Lock()
        self._rng = rng or random.SystemRandom()
        self.recorder = Recorder(inventory, clock, self._rng, metrics, secrets=refreshed(lambda: held_secrets(config)))
        self.hold = Hold(leases, inventory, clock, self._finished)
        self.rollout = Rollout(inventory, targets, prober, self.recorder, clock)

    # -- what the doors read ----------------------------------------------------------
    def issuer(self, name: str) -> Issuer:
        """The issuer, built on first use (building may fail: call it inside a step)."""
        with self._issuers_lock:
            if name not in self._issuers:
                self._issuers[name] = self._issuer_factory(name)
            return self._issuers[name]

    def budget(self, issuer: str) -> Budget | None:
        """The issuer's rate-limit budget, if it has one."""
        limits = self.config.issuers[issuer].rate_limits
        return None if limits is None else Budget(self.inventory.sessions, issuer, limits)

    def cert_config(self, name: str) -> CertificateConfig:
        cfg = self.config.certificates.get(name)
        if cfg is None:
            raise CertdError(f"certificate {name!r} is not in the configuration", reason="UnknownCertificate")
        return cfg

    @staticmethod
    def current(version: Version | None) -> Current | None:
        if version is None:
            return None
        return Current(
            issuer=version.issuer, names=tuple(json.loads(version.names)), key_type=version.key_type,
            not_before=version.not_before, not_after=version.not_after,
            renew_at=version.renew_at or version.not_after, revoked=version.state == VersionState.REVOKED.value,
            failed=version.state == VersionState.FAILED.value,
        )

    @staticmethod
    def wanted(cfg: CertificateConfig) -> Wanted:
        return Wanted(issuer=cfg.issuer, names=tuple(cfg.names), key_type=str(cfg.key))

    def verdict(self, name: str, *, force: bool = False) -> Verdict:
        """What ``plan`` shows and what ``renew`` acts on."""
        row = self.inventory.certificate(name)
        return evaluate(self.wanted(self.cert_config(name)), self.current(self.inventory.current_version(name)),
                        self.clock.now(), force=force, next_attempt_at=row.next_attempt_at if row else None)

    def verdicts(self) -> dict[str, Verdict]:
        """``verdict`` for every configured certificate, from two queries (for scans)."""
        rows = self.inventory.plan_rows()
        now = self.clock.now()
        out: dict[str, Verdict] = {}
        for name, cfg in self.config.certificates.items():
            row, current = rows.get(name, (None, None))
            out[name] = evaluate(self.wanted(cfg), current, now, next_attempt_at=row.next_attempt_at if row else None)
        return out

    def trust_bundle(self, name: str) -> list[x509.Certificate]:
        """Intermediates and pinned roots of ``name``'s issuer: what a load balancer pins."""
        cfg = self.cert_config(name)
        return trust_bundle(name, cfg.issuer, self.issuer(cfg.issuer), self.inventory, self.config)

    def refresh_renewal_info(self) -> list[str]:
        """Follow moved ARI windows (see ``ari_refresh``); the certificates whose renewal time moved."""
        return refresh_renewal_info(self.config, self.inventory, self.issuer, self.clock, self._rng, self.recorder)

    # -- running one operation ---------------------------------------------------------
    def run(self, op: Operation, name: str, body: Callable[[Attempt], Result], *, wait: timedelta,
            requested_at: datetime | None = None) -> Result:
        """Lease, gather, run ``body``; any failure in it is recorded (see the module docstring)."""
        rid = uuid.uuid4().hex[:16]
        try:
            cfg = self.cert_config(name)
        except CertdError as exc:
            step = "plan" if op == "renew" else op
            return Result(name, "failed", failed_step=step, error=str(exc), renewal_id=rid, reason=exc.reason)
        got = self.hold.acquire(name, rid, op, wait, requested_at)
        if isinstance(got, Result):
            return got
        with self.hold.held(got) as beat:
            # Gathered once, under the lease: every step of this operation works from this picture.
            attempt = Attempt(op, name, cfg, rid, old=self.inventory.current_version(name),
                              row=self.inventory.certificate(name), beat=beat, fault=self.fault,
                              timer=self.recorder.step_time)
            try:
                return body(attempt)
            except Exception as exc:
                return self.recorder.failure(attempt, as_step_error(attempt.current_step, exc))

    def _finished(self, name: str, ev: Event) -> Result:
        """The Result of someone else's renewal, for a request that joined it."""
        rid = ev.renewal_id or ""
        version = self.inventory.version_for_renewal(rid)
        outcome: Outcome = "renewed" if ev.kind == "renewal.succeeded" else "failed"
        return Result(
            name, outcome, serial=version.serial if version else None, state=version.state if version else None,
            failed_step=ev.step if outcome == "failed" else None, error=ev.message if outcome == "failed" else None,
            renewal_id=rid,
        )

    # -- renew -------------------------------------------------------------------------
    def renew(self, name: str, *, force: bool = False, wait: timedelta = timedelta(minutes=5),
              requested_at: datetime | None = None) -> Result:
        """Renew one certificate now if due (or forced); see the module docstring.

        ``requested_at`` is when the caller asked (default: now); a renewal of
        ``name`` that finished after it answers this request.
        """
        started = time.monotonic()
        result = self.run("renew", name, lambda a: self._renew(a, force), wait=wait, requested_at=requested_at)
        cfg = self.config.certificates.get(name)
        if cfg is not None and result.outcome != "skipped":
            self.recorder.renewal_result(name, cfg.issuer, result.ok, time.monotonic() - started)
        return result

    def _renew(self, attempt: Attempt, force: bool) -> Result:
        name, cfg, rid, old = attempt.name, attempt.cfg, attempt.rid, attempt.old
        with attempt.step("plan"):
            row = attempt.row
            verdict = evaluate(self.wanted(cfg), self.current(old), self.clock.now(), force=force,
                               next_attempt_at=row.next_attempt_at if row else None)
        if not verdict.due:
            self.recorder.event(name, "renewal.skipped", f"{verdict.reason}: {verdict.message}", rid, step="plan")
            return Result(name, "skipped", serial=old.serial if old else None, state=old.state if old else None,
                          renewal_id=rid, reason=str(verdict.reason))
        self.recorder.event(name, "renewal.started", f"{verdict.reason}: {verdict.message}", rid, step="plan")
        with attempt.step("key"):
            key = generate_key(cfg.key)
            csr = build_csr(key, cfg.names)
        with attempt.step("issue", at="issuer"):
            issuer = self.issuer(cfg.issuer)
        with attempt.step("issue"):
            request = IssueRequest(certificate=name, names=tuple(cfg.names), key_type=cfg.key, csr=csr,
                                   lifetime=cfg.lifetime, replaces=old.ari_cert_id if old else None)
            issued = self._issue(attempt, issuer, request, force)
            if issued.private_key is not None:
                key = issued.private_key
        with attempt.step("check", at="chain"):
            roots = issuer.roots()
            chain = usable_chain(issued.leaf, issued.chain, roots,
                                 lambda dropped: self.recorder.dropped_from_chain(name, dropped, rid))
        with attempt.step("record"):
            attempt.version_id = self._add_version(attempt, issuer, issued.leaf, chain, key)
        with attempt.step("check"):
            expect = self.expectations(cfg, roots, issued.leaf)
            for warning in check_certificate(issued.leaf, chain, key, expect, self.clock.now()):
                self.recorder.event(name, "check.warning", warning, rid, step="check", level="warning")
            shortened = shortened_lifetime(issued.leaf, chain, cfg.lifetime, expect.cap)
            if shortened is not None:  # usable, but renewals come sooner than planned: said once per renewal
                self.recorder.lifetime_shortened(name, cfg.issuer, shortened, rid)
            assert attempt.beat is not None
            self.inventory.update_version(attempt.beat.lease, attempt.version_id, self.clock.now(),
                                          state=VersionState.CHECKED.value)
        material = Material(issued.leaf, chain, key_pem(key), tuple(roots or ()))
        with attempt.step("trust"):  # the load balancers trust the new CA before any server presents it
            ensure_trusted(self.config, name, cfg.issuer, issuer, self.inventory, self.recorder, rid,
                           anchors(issued.leaf, chain, roots or ()), self.rollout.targets.values())
        state, pending = self.rollout.release(attempt, material)
        self.recorder.success(attempt)
        refresh_bundle_file(self.config, name, cfg.issuer, issuer, self.inventory, self.recorder, rid,
                            self.rollout.targets.values())
        self.recorder.event(name, "renewal.succeeded", f"serial {material.serial} {state} "
                            f"({attempt.timing_summary()})", rid, step="record")
        return Result(name, "renewed", serial=material.serial, state=state, renewal_id=rid,
                      reason="DeployPending" if pending else str(verdict.reason))

    def _issue(self, attempt: Attempt, issuer: Issuer, request: IssueRequest, force: bool) -> Issued:
        """Spend from the budget (unless overridden), then ask the CA; a failed order gives the units back."""
        cfg, now, old = attempt.cfg, self.clock.now(), attempt.old
        budget = self.budget(cfg.issuer)
        reservation: list[int] = []
        if budget is not None:
            override = None
            if force:
                override = "renewal forced by the operator"
            elif old is not None and now >= hard_deadline(old.not_before, old.not_after):
                override = "inside the hard deadline"
            if override is not None:
                self.recorder.event(attempt.name, "budget.overridden", f"issuer {cfg.issuer}: {override}: certd's "
                                    "budget is not consulted; the CA's own limits decide", attempt.rid, step="issue",
                                    level="warning")
            reservation = budget.reserve(attempt.name, cfg.names, now, exempt=request.replaces is not None,
                                         enforce=override is None)
        try:
            issued = issuer.issue(request)
        except Exception:
            self.recorder.issuer_request(cfg.issuer, False)
            if budget is not None:
                budget.release(reservation)
            raise
        self.recorder.issuer_request(cfg.issuer, True)
        return issued

    def expectations(self, cfg: CertificateConfig, roots: list[x509.Certificate] | None,
                     leaf: x509.Certificate | None = None) -> Expectations:
        """What ``check`` demands: a new certificate must outlive its own renewal window (short ones: a tenth).

        Where the CA chooses the lifetime (ACME), the issued certificate's own lifetime sets the floor.
        """
        lifetime = cfg.lifetime or (leaf.not_valid_after_utc - leaf.not_valid_before_utc if leaf else None)
        return Expectations(names=tuple(cfg.names), key_type=cfg.key, roots=tuple(roots) if roots else None,
                            min_remaining=min_remaining(lifetime, cfg.renew_before), lifetime=cfg.lifetime,
                            ext_key_usage=tuple(cfg.ext_key_usage), cap=self.lifetime_cap(cfg.issuer))

    def lifetime_cap(self, issuer_name: str) -> str:
        """What can make ``issuer_name`` sign for less than asked, for the message that says it did."""
        icfg = self.config.issuers.get(issuer_name)
        if icfg is not None and icfg.type == "vault":
            return (f"Vault role {getattr(icfg, 'role', '?')}'s max_ttl or the mount's max lease TTL "
                    f"at {getattr(icfg, 'url', '?')}")
        return "the CA's maximum lifetime"

    def _add_version(self, attempt: Attempt, issuer: Issuer, leaf: x509.Certificate,
                     chain: tuple[x509.Certificate, ...], key: PrivateKey) -> int:
        """Record the issued certificate (fenced) with its renewal time drawn once."""
        name, cfg = attempt.name, attempt.cfg
        ari_window = ari_id = ari_next = None
        if isinstance(issuer, RenewalInfo) and chain:
            window = issuer.renewal_window(leaf, chain[0])
            if window is not None:  # the CA speaks ARI: renewals will carry `replaces`
                ari_window, ari_id, ari_next = (window.start, window.end), issuer.cert_id(leaf), window.retry_after
        renew_at = pick_renew_at(leaf.not_valid_before_utc, leaf.not_valid_after_utc, renew_before=cfg.renew_before,
                                 renew_fraction=cfg.renew_fraction, ari_window=ari_window, rng=self._rng)
        serial = serial_hex(leaf)
        key_enc = self.keybox.seal(key_pem(key), f"version:{name}:{serial}") if self.keybox.enabled else None
        assert attempt.beat is not None
        return self.inventory.add_version(
            attempt.beat.lease, self.clock.now(), renewal_id=attempt.rid, serial=serial, fingerprint=fingerprint(leaf),
            issuer=cfg.issuer, key_type=str(key_type_of(key) or cfg.key), names=json.dumps(cfg.names),
            not_before=leaf.not_valid_before_utc, not_after=leaf.not_valid_after_utc, renew_at=renew_at,
            ari_cert_id=ari_id, ari_next_check_at=ari_next, state=VersionState.ISSUED.value,
            cert_pem=certs_pem([leaf]).decode(), chain_pem=certs_pem(chain).decode(), key_enc=key_enc,
        )

    # -- the other operations (bodies in operations.py) ---------------------------------
    def deploy(self, name: str, *, wait: timedelta = timedelta(minutes=5)) -> Result:
        """Re-run deploy + verify for the current version."""
        return self.run("deploy", name, lambda a: operations.deploy(self, a), wait=wait)

    def revoke(self, name: str, reason: RevocationReason) -> Result:
        """Revoke the current version at its issuer and mark it revoked (no replacement here)."""
        return self.run("revoke", name, lambda a: operations.revoke(self, a, reason), wait=timedelta(minutes=5))

    def import_certificate(self, name: str, cert_pem: bytes, key_pem_data: bytes, chain_pem: bytes | None) -> Result:
        """Adopt an existing certificate: check it like an issued one, publish it, record it."""
        return operations.import_certificate(self, name, cert_pem, key_pem_data, chain_pem)

    def needs_install(self, name: str) -> bool:
        """True when this host's files do not hold the inventory's current version (agent role)."""
        return operations.needs_install(self, name)

    def install(self, name: str) -> Result:
        """Agent role: publish the inventory's current version on this host, then deploy + verify."""
        return operations.install(self, name)

    def rollover(self, issuer_name: str) -> str:
        """Replace an issuer's account key (ACME key change); ``CertdError`` if the issuer has none."""
        return operations.rollover(self, issuer_name)
