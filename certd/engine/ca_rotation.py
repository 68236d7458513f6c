"""Moving an issuer to a new CA without a failed handshake: ``certd ca rotate ISSUER``.

The state machine (each state kept by the issuer, so a crash or Ctrl-C
resumes where it stopped when the command runs again):

1. **stage** — the issuer makes its next CA (``CaRotation.stage_rotation``);
   nothing is signed with it yet.
2. **pin** — ``bundle_file`` is rewritten with old *and* new CA and pushed to
   every trust sink (HAProxy ``ca-file``); every sink must confirm it holds
   every certificate of the bundle, or the rotation stops here: promoting
   before a load balancer trusts the new CA would take backends out of
   service the moment they present a new certificate.
3. **promote** — the new CA signs; the old one is retired (its keys deleted,
   its certificates still pinned).
4. **re-issue** — every certificate of the issuer still served under a
   retired CA is renewed (the normal pipeline: publish, deploy, verify,
   whole-path checks, rollback), in batches; a batch with a failure stops
   the run, leaving the rest on the old CA, which stays pinned.
5. **unpin** — once no served certificate chains to a retired CA, the bundle
   (rebuilt by ``trust.issuer_bundle``, which keeps an old CA exactly as long
   as a served certificate needs it) is pushed without it, and the retired CA
   is forgotten.

A certificate that is never re-issued keeps its old CA pinned (state 4 and
5 wait for it): run ``certd ca rotate`` again after fixing what failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from certd.deploy.publish import write_file_atomic
from certd.engine.renew import renew
from certd.engine.result import Result
from certd.engine.services import Services
from certd.engine.trust import issuer_bundle, push_bundle
from certd.errors import ConfigError
from certd.issuers.base import CaChain, CaRotation, Issuer
from certd.pki.certs import certs_pem, describe, fingerprint, load_pem_certs

__all__ = ["RotationReport", "rotate", "rotation_status"]

log = logging.getLogger("certd.ca_rotation")


@dataclass
class RotationReport:
    """What one run did, phase by phase; ``ok`` is False when it stopped before the end."""

    issuer: str
    phases: list[tuple[str, str]] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    ok: bool = True

    def say(self, phase: str, message: str) -> None:
        log.info("ca rotate %s: %s: %s", self.issuer, phase, message)
        self.phases.append((phase, message))

    def as_json(self) -> dict[str, Any]:
        return {"issuer": self.issuer, "ok": self.ok,
                "phases": [{"phase": p, "message": m} for p, m in self.phases],
                "renewals": [r.as_json() for r in self.results]}


def _under(version_chain: list[x509.Certificate], cas: list[x509.Certificate]) -> bool:
    prints = {fingerprint(c) for c in cas}
    return any(fingerprint(c) in prints for c in version_chain)


def _still_on_retired(s: Services, issuer_name: str, retired: list[x509.Certificate]) -> list[str]:
    """Certificates of the issuer whose served version chains to a retired CA (by the intermediate served)."""
    served = s.inventory.current_versions()
    names = []
    for name, cfg in s.config.certificates.items():
        version = served.get(name)
        if cfg.issuer == issuer_name and version is not None and version.chain_pem and _under(
                load_pem_certs(version.chain_pem.encode()), retired):
            names.append(name)
    return names


def _pin(s: Services, issuer_name: str, issuer: Any, report: RotationReport, phase: str) -> bool:
    """Write the bundle and have every trust sink confirm it; False (and why, in the report) when one did not."""
    path = s.config.issuers[issuer_name].bundle_file
    bundle = issuer_bundle(s.config, issuer_name, issuer, s.inventory)
    if path is None:
        report.say(phase, "no bundle_file: nothing pins this issuer's CA, so there is nothing to push")
        return True
    pem = certs_pem(bundle)
    write_file_atomic(path, pem)
    said, refused = push_bundle(path, pem, s.rollout.targets.values())
    for message in said:
        report.say(phase, message)
    if refused:
        for message in refused:
            report.say(phase, f"refused: {message}")
        report.ok = False
        return False
    report.say(phase, f"{path} holds {len(bundle)} CA certificate(s): "
               + ", ".join(describe(c) for c in bundle))
    return True


def _issuer(s: Services, issuer_name: str) -> Issuer:
    if issuer_name not in s.config.issuers:
        known = ", ".join(sorted(s.config.issuers)) or "none"
        raise ConfigError(f"no issuer named {issuer_name} (known: {known})")
    return s.issuer(issuer_name)


def rotate(s: Services, issuer_name: str, *, batch: int = 10,
           progress: Callable[[Result], None] | None = None) -> RotationReport:
    """Run (or resume) the rotation of ``issuer_name``; see the module docstring."""
    issuer = _issuer(s, issuer_name)
    if not isinstance(issuer, CaRotation):
        if isinstance(issuer, CaChain):  # Vault: the CA operator switched the mount's issuer; certd follows
            return _follow(s, issuer_name, issuer, batch, progress)
        kind = s.config.issuers[issuer_name].type
        raise ConfigError(f"issuer {issuer_name} ({kind}) cannot be rotated by certd: its CA belongs to the CA "
                          "operator and publishes no CA chain of its own; certd pins whatever chain each renewal "
                          "brings (see docs/load-balancer.md)")
    report = RotationReport(issuer_name)
    staged, retired = issuer.rotation_state()
    if not staged and not retired:
        staged = issuer.stage_rotation()
        report.say("stage", f"next CA made: {describe(staged[0])}; not signing yet")
    elif staged:
        report.say("stage", f"resuming: next CA {describe(staged[0])} was staged before")
    else:
        report.say("stage", "resuming: the new CA signs already; certificates are still served under the old one")
    if staged:
        if not _pin(s, issuer_name, issuer, report, "pin"):
            report.say("pin", "stopped before promoting: the new CA is staged, nothing signs with it; "
                       "fix the sink and run `certd ca rotate` again")
            return report
        retired_now = issuer.promote_rotation()
        report.say("promote", f"the new CA signs from now on; retired {describe(retired_now[0])}")
    _, retired = issuer.rotation_state()
    if not _reissue(s, issuer_name, retired, batch, progress, report):
        return report
    keep = {fingerprint(c) for c in issuer_bundle(s.config, issuer_name, issuer, s.inventory)}
    for cert in issuer.drop_retired(keep):
        report.say("unpin", f"forgot {describe(cert)}")
    return report


def _follow(s: Services, issuer_name: str, issuer: Issuer, batch: int,
            progress: Callable[[Result], None] | None) -> RotationReport:
    """A CA that rotates itself (Vault's default issuer switched, a new intermediate): pin, re-issue, unpin.

    "Old" is every CA a served certificate chains to that the issuer no longer publishes.
    """
    report = RotationReport(issuer_name)
    chain = issuer.ca_chain() if isinstance(issuer, CaChain) else []
    current = {fingerprint(c) for c in chain}
    served = issuer_bundle(s.config, issuer_name, issuer, s.inventory)
    old = [c for c in served if fingerprint(c) not in current]
    report.say("stage", f"the CA signs with {describe(chain[0])}; {len(old)} old CA certificate(s) still pinned"
               if chain else "the CA publishes no chain")
    if not _pin(s, issuer_name, issuer, report, "pin"):
        report.say("pin", "stopped before re-issuing: fix the sink and run `certd ca rotate` again")
        return report
    _reissue(s, issuer_name, old, batch, progress, report)
    return report


def _reissue(s: Services, issuer_name: str, retired: list[x509.Certificate], batch: int,
             progress: Callable[[Result], None] | None, report: RotationReport) -> bool:
    """Re-issue what is served under ``retired`` in batches, then unpin; False when it stopped before the end."""
    issuer = s.issuer(issuer_name)
    todo = _still_on_retired(s, issuer_name, retired)
    report.say("reissue", f"{len(todo)} certificate(s) served under the old CA")
    workers = max(1, min(batch, s.config.daemon.workers))
    for start in range(0, len(todo), batch):
        names = todo[start:start + batch]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ca-rotate") as pool:
            results = list(pool.map(lambda n: renew(s, n, force=True), names))
        for result in results:
            report.results.append(result)
            if progress is not None:
                progress(result)
        failed = [r for r in results if not r.ok]
        if failed:
            report.ok = False
            report.say("reissue", "stopped: " + "; ".join(f"{r.name}: {r.error}" for r in failed)
                       + " — the old CA stays pinned; run `certd ca rotate` again once fixed")
            return False
    left = _still_on_retired(s, issuer_name, retired)
    if left:
        report.ok = False
        report.say("unpin", f"not yet: still served under the old CA: {', '.join(left)}")
        return False
    return _pin(s, issuer_name, issuer, report, "unpin")


def rotation_status(s: Services, issuer_name: str) -> dict[str, Any]:
    """For ``certd ca status``: the CA that signs, a staged one, retired ones, and who is served under which."""
    issuer = _issuer(s, issuer_name)
    if not isinstance(issuer, CaChain):
        raise ConfigError(f"issuer {issuer_name} publishes no CA chain of its own: `certd bundle NAME` shows "
                          "what its certificates chain to")
    chain = issuer.ca_chain()
    if isinstance(issuer, CaRotation):
        staged, retired = issuer.rotation_state()
    else:  # Vault: "retired" is what served certificates chain to that the mount no longer publishes
        now = {fingerprint(c) for c in chain}
        staged = []
        retired = [c for c in issuer_bundle(s.config, issuer_name, issuer, s.inventory)
                   if fingerprint(c) not in now]
    current = [c for c in chain if fingerprint(c) not in {fingerprint(s) for s in staged}]
    return {
        "issuer": issuer_name,
        "signing": [describe(c) for c in current],
        "staged": [describe(c) for c in staged],
        "retired": [describe(c) for c in retired],
        "on_retired": _still_on_retired(s, issuer_name, retired),
    }
