"""The renewal: ``plan → key → issue → check(chain) → record → check → trust → publish → deploy → verify``.

The one place that knows the order of a renewal's steps. It runs inside
``runner.run`` (lease, gathered ``Attempt``, recorded failure).

Guarantees:
- the worker decides again under the lease (the certificate may have been
  renewed while it waited) and skips if nothing is due;
- a version that fails ``check`` is never published: the files on disk and
  what servers load stay as they were;
- the load balancers trust the new CA before any server presents it;
- a certificate already issued is never ordered again because its rollout
  failed: while a newer version whose publish, deploy or verify failed still
  has its files and its life ahead of it, a due renewal rolls that version
  out again (a load balancer down for an hour costs no order);
- certd's own rate-limit budget never holds a renewal inside the hard
  deadline, nor one the operator forced: there the CA's own answer decides.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta

from cryptography import x509

from certd.core.kinds import EventKind, Step
from certd.core.policy import evaluate, hard_deadline, pick_renew_at
from certd.deploy.publish import Generation
from certd.engine import runner
from certd.engine.attempt import Attempt
from certd.engine.plan import current, wanted
from certd.engine.result import Result
from certd.engine.rollout import Material
from certd.engine.services import Services
from certd.engine.trust import anchors, ensure_trusted, refresh_bundle_file
from certd.inventory.models import NewVersion, Version, VersionState
from certd.issuers.base import Issued, Issuer, IssueRequest, RenewalInfo
from certd.pki.certs import certs_pem, fingerprint, serial_hex
from certd.pki.keys import PrivateKey, build_csr, generate_key, key_pem, key_type_of
from certd.pki.x509check import check_certificate, shortened_lifetime, usable_chain

__all__ = ["add_version", "renew"]


def renew(s: Services, name: str, *, force: bool = False, wait: timedelta = timedelta(minutes=5),
          requested_at: datetime | None = None) -> Result:
    """Renew one certificate now if due (or forced); see the module docstring.

    ``requested_at`` is when the caller asked (default: now); a renewal of
    ``name`` that finished after it answers this request.
    """
    started = time.monotonic()
    result = runner.run(s, "renew", name, lambda a: _renew(s, a, force), wait=wait, requested_at=requested_at)
    cfg = s.config.certificates.get(name)
    if cfg is not None and result.outcome != "skipped":
        s.recorder.renewal_result(name, cfg.issuer, result.ok, time.monotonic() - started)
    return result


def _renew(s: Services, attempt: Attempt, force: bool) -> Result:
    name, cfg, rid, old = attempt.name, attempt.cfg, attempt.rid, attempt.old
    with attempt.step(Step.PLAN):
        row = attempt.row
        verdict = evaluate(wanted(cfg), current(old), s.clock.now(), force=force,
                           next_attempt_at=row.next_attempt_at if row else None)
    if not verdict.due:
        s.recorder.event(name, EventKind.RENEWAL_SKIPPED, f"{verdict.reason}: {verdict.message}", rid, step=Step.PLAN)
        return Result(name, "skipped", serial=old.serial if old else None, state=old.state if old else None,
                      renewal_id=rid, reason=str(verdict.reason))
    s.recorder.event(name, EventKind.RENEWAL_STARTED, f"{verdict.reason}: {verdict.message}", rid, step=Step.PLAN)
    with attempt.step(Step.PLAN, at="output_dir"):
        s.rollout.preflight(cfg)
    if not force:
        with attempt.step(Step.PLAN):
            again = _issued_before(s, attempt)
        if again is not None:
            return _roll_out_again(s, attempt, *again)
    with attempt.step(Step.KEY):
        key = generate_key(cfg.key)
        csr = build_csr(key, cfg.names)
    with attempt.step(Step.ISSUE, at="issuer"):
        issuer = s.issuer(cfg.issuer)
    with attempt.step(Step.ISSUE):
        request = IssueRequest(certificate=name, names=tuple(cfg.names), key_type=cfg.key, csr=csr,
                               lifetime=cfg.lifetime, replaces=old.ari_cert_id if old else None)
        issued = _issue(s, attempt, issuer, request, force)
        for kind, message in issued.notices:
            s.recorder.event(name, kind, message, rid, step=Step.ISSUE, level="warning")
        if issued.private_key is not None:
            key = issued.private_key
    with attempt.step(Step.CHECK, at="chain"):
        roots = issuer.roots()
        chain = usable_chain(issued.leaf, issued.chain, roots,
                             lambda dropped: s.recorder.dropped_from_chain(name, dropped, rid))
    with attempt.step(Step.RECORD):
        attempt.version_id = add_version(s, attempt, issuer, issued.leaf, chain, key)
    with attempt.step(Step.CHECK):
        expect = s.expectations(cfg, roots, issued.leaf)
        for warning in check_certificate(issued.leaf, chain, key, expect, s.clock.now()):
            s.recorder.event(name, EventKind.CHECK_WARNING, warning, rid, step=Step.CHECK, level="warning")
        shortened = shortened_lifetime(issued.leaf, chain, cfg.lifetime, expect.cap)
        if shortened is not None:  # usable, but renewals come sooner than planned: said once per renewal
            s.recorder.lifetime_shortened(name, cfg.issuer, shortened, rid)
        assert attempt.beat is not None
        s.inventory.update_version(attempt.beat.lease, attempt.version_id, s.clock.now(),
                                   state=VersionState.CHECKED.value)
    material = Material(issued.leaf, chain, key_pem(key), tuple(roots or ()))
    targets = s.rollout.targets.values()
    with attempt.step(Step.TRUST):  # the load balancers trust the new CA before any server presents it
        ensure_trusted(s.config, name, cfg.issuer, issuer, s.inventory, s.recorder, rid,
                       anchors(issued.leaf, chain, roots or ()), targets)
    state, pending = s.rollout.roll_out(attempt, material)
    with attempt.step(Step.TRUST):  # a load balancer that did not take the bundle (or died) is no success
        refresh_bundle_file(s.config, name, cfg.issuer, issuer, s.inventory, s.recorder, rid, targets)
    s.recorder.success(attempt)
    s.recorder.event(name, EventKind.RENEWAL_SUCCEEDED, f"serial {material.serial} {state} "
                     f"({attempt.timing_summary()})", rid, step=Step.RECORD)
    return Result(name, "renewed", serial=material.serial, state=state, renewal_id=rid,
                  reason="DeployPending" if pending else str(verdict.reason))


# A version that failed in one of these steps was issued and checked: it can be rolled out again.
_AFTER_ISSUANCE = frozenset({Step.TRUST, Step.PUBLISH, Step.DEPLOY, Step.VERIFY, Step.ROLLBACK})


def _issued_before(s: Services, attempt: Attempt) -> tuple[Version, Generation] | None:
    """The newest version, newer than the current one, that failed after issuance and can be rolled out again.

    It must be what the config asks for (issuer, names, key type), not be due itself, and still have its
    generation on this host (the key is read from there).
    """
    cfg, old, now = attempt.cfg, attempt.old, s.clock.now()
    newest = next(iter(s.inventory.versions(attempt.name)), None)
    if newest is None or (old is not None and newest.id <= old.id) or newest.state != VersionState.FAILED.value:
        return None
    if newest.failed_step not in _AFTER_ISSUANCE or newest.generation is None:
        return None
    if (newest.issuer, json.loads(newest.names), newest.key_type) != (cfg.issuer, list(cfg.names), str(cfg.key)):
        return None
    if (newest.renew_at or newest.not_after) <= now:
        return None
    path = cfg.output_dir / newest.generation
    if not (path / "privkey.pem").is_file():
        return None
    return newest, Generation(newest.generation, path)


def _roll_out_again(s: Services, attempt: Attempt, version: Version, generation: Generation) -> Result:
    name, cfg, rid = attempt.name, attempt.cfg, attempt.rid
    with attempt.step(Step.PUBLISH, at="issuer"):
        roots = tuple(s.issuer(cfg.issuer).roots() or ())
    state, pending = s.rollout.roll_out_again(attempt, version, generation, roots)
    s.recorder.success(attempt)
    s.recorder.event(name, EventKind.RENEWAL_SUCCEEDED, f"serial {version.serial} {state}, issued earlier and "
                     f"rolled out again: no new order ({attempt.timing_summary()})", rid, step=Step.RECORD)
    return Result(name, "renewed", serial=version.serial, state=state, renewal_id=rid,
                  reason="DeployPending" if pending else "RolledOutAgain")


def _issue(s: Services, attempt: Attempt, issuer: Issuer, request: IssueRequest, force: bool) -> Issued:
    """Spend from the budget (unless overridden), then ask the CA; a failed order gives the units back."""
    cfg, now, old = attempt.cfg, s.clock.now(), attempt.old
    budget = s.budget(cfg.issuer)
    reservation: list[int] = []
    if budget is not None:
        override = None
        if force:
            override = "renewal forced by the operator"
        elif old is not None and now >= hard_deadline(old.not_before, old.not_after):
            override = "inside the hard deadline"
        if override is not None:
            s.recorder.event(attempt.name, EventKind.BUDGET_OVERRIDDEN, f"issuer {cfg.issuer}: {override}: certd's "
                             "budget is not consulted; the CA's own limits decide", attempt.rid, step=Step.ISSUE,
                             level="warning")
        reservation = budget.reserve(attempt.name, cfg.names, now, exempt=request.replaces is not None,
                                     enforce=override is None)
    try:
        issued = issuer.issue(request)
    except Exception:
        s.recorder.issuer_request(cfg.issuer, False)
        if budget is not None:
            budget.release(reservation)
        raise
    s.recorder.issuer_request(cfg.issuer, True)
    return issued


def add_version(s: Services, attempt: Attempt, issuer: Issuer, leaf: x509.Certificate,
                chain: tuple[x509.Certificate, ...], key: PrivateKey) -> int:
    """Record the issued (or imported) certificate, fenced, with its renewal time drawn once."""
    name, cfg = attempt.name, attempt.cfg
    ari_window = ari_id = ari_next = None
    if isinstance(issuer, RenewalInfo) and chain:
        window = issuer.renewal_window(leaf, chain[0])
        if window is not None:  # the CA speaks ARI: renewals will carry `replaces`
            ari_window, ari_id, ari_next = (window.start, window.end), issuer.cert_id(leaf), window.retry_after
    renew_at = pick_renew_at(leaf.not_valid_before_utc, leaf.not_valid_after_utc, renew_before=cfg.renew_before,
                             renew_fraction=cfg.renew_fraction, ari_window=ari_window, rng=s.rng)
    serial = serial_hex(leaf)
    key_enc = s.keybox.seal(key_pem(key), f"version:{name}:{serial}") if s.keybox.enabled else None
    assert attempt.beat is not None
    return s.inventory.add_version(attempt.beat.lease, s.clock.now(), NewVersion(
        renewal_id=attempt.rid, serial=serial, fingerprint=fingerprint(leaf), issuer=cfg.issuer,
        key_type=str(key_type_of(key) or cfg.key), names=json.dumps(cfg.names),
        not_before=leaf.not_valid_before_utc, not_after=leaf.not_valid_after_utc, renew_at=renew_at,
        ari_cert_id=ari_id, ari_next_check_at=ari_next, cert_pem=certs_pem([leaf]).decode(),
        chain_pem=certs_pem(chain).decode(), key_enc=key_enc,
    ))
