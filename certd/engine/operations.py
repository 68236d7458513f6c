"""The operations other than renew: deploy, install (agent role), import, revoke, account key rollover.

Each body runs inside ``runner.run`` (lease, gathered ``Attempt``,
recorded failure), except ``install``, which belongs to an agent: it holds
no lease (issuing is cluster-wide, installing is per host, under a
host-local lock) and records its failures as events only, so an agent's
trouble on one host never backs off the issuing replicas' renewals.
"""

from __future__ import annotations

import fcntl
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography import x509

from certd.core.kinds import EventKind, Step
from certd.deploy.publish import Publisher, current_generation, published_serial
from certd.engine import runner
from certd.engine.attempt import Attempt, StepError, as_step_error
from certd.engine.renew import add_version
from certd.engine.repair import repaired
from certd.engine.result import Result
from certd.engine.rollout import Material, mark_server_down
from certd.engine.services import Services
from certd.engine.trust import refresh_bundle_file
from certd.errors import CertdError, DeployError
from certd.inputs import InputError
from certd.inventory.models import VersionState
from certd.issuers.base import KeyRollover
from certd.pki.certs import load_pem_certs
from certd.pki.keys import PrivateKey, key_pem, load_key_pem
from certd.pki.revocation import RevocationReason
from certd.pki.x509check import check_certificate, usable_chain
from certd.places import LOCK, claim

__all__ = ["deploy", "import_certificate", "install", "needs_install", "revoke", "rollover"]


def deploy(s: Services, name: str, *, wait: timedelta = timedelta(minutes=5)) -> Result:
    """Re-run deploy + verify for the current version, from the files this host has."""
    return runner.run(s, "deploy", name, lambda attempt: _deploy(s, attempt), wait=wait)


def _deploy(s: Services, attempt: Attempt) -> Result:
    name, cfg, version = attempt.name, attempt.cfg, attempt.old
    if version is None:  # nothing to deploy is not a failure: recording one would back off the first issue
        return Result(name, "skipped", renewal_id=attempt.rid, reason="NothingIssued",
                      error=f"nothing issued yet: `certd renew {name}` first")
    with attempt.step(Step.DEPLOY, at="issuer"):
        roots = tuple(s.issuer(cfg.issuer).roots() or ())
    with attempt.step(Step.DEPLOY, at="files"):
        gen = current_generation(cfg.output_dir)
        if gen is None:
            raise DeployError(f"certificate {name}: nothing published on this host yet (`certd renew {name}` "
                              "publishes it, or `certd run --agent` installs it)")
        material = repaired(s, attempt, gen, version, roots)
        gen = current_generation(cfg.output_dir) or gen
    try:
        state, pending = s.rollout.deploy_and_verify(attempt, material, version.id, attempt.beat.lease
                                                     if attempt.beat else None)
    except StepError as exc:
        mark_server_down(cfg, exc)  # still down: looked at again within seconds, not after the backoff
        raise
    Publisher.mark_good(gen)  # served now: it counts towards keep again and can be rolled back to
    if attempt.row is not None and attempt.row.failed_step == Step.TRUST:
        with attempt.step(Step.TRUST):  # what a failed bundle push left undone after the renewal
            issuer = s.issuer(cfg.issuer)
            refresh_bundle_file(s.config, name, cfg.issuer, issuer, s.inventory, s.recorder, attempt.rid,
                                s.rollout.targets.values())
    s.recorder.success(attempt)
    return Result(name, "deployed", serial=version.serial, state=state, renewal_id=attempt.rid,
                  reason="DeployPending" if pending else None)


def revoke(s: Services, name: str, reason: RevocationReason) -> Result:
    """Revoke the current version at the issuer that issued it; the replacement is the caller's next step."""
    return runner.run(s, "revoke", name, lambda attempt: _revoke(s, attempt, reason), wait=timedelta(minutes=5))


def _revoke(s: Services, attempt: Attempt, reason: RevocationReason) -> Result:
    name, version = attempt.name, attempt.old
    if version is None:
        return Result(name, "failed", failed_step=Step.REVOKE, error="no current version to revoke",
                      renewal_id=attempt.rid, reason="NothingIssued")
    with attempt.step(Step.REVOKE, at="issuer"):
        issuer = s.issuer(version.issuer if version.issuer in s.config.issuers else attempt.cfg.issuer)
    dropped: str | None = None
    with attempt.step(Step.REVOKE):
        leaf = load_pem_certs(version.cert_pem.encode())[0]
        if isinstance(issuer, _ReportsDroppedReason):
            dropped = issuer.revoke_reporting(leaf, reason)
        else:
            issuer.revoke(leaf, reason)
        assert attempt.beat is not None
        s.inventory.update_version(attempt.beat.lease, version.id, s.clock.now(), state=VersionState.REVOKED.value)
    s.recorder.success(attempt)
    if dropped is not None:
        s.recorder.event(name, EventKind.REVOKE_REASON_DROPPED, f"serial {version.serial}: {dropped}", attempt.rid,
                         step=Step.REVOKE, level="warning")
    said = f"{reason}" if dropped is None else f"no reason: the CA refused {reason}"
    s.recorder.event(name, EventKind.REVOKE_DONE, f"serial {version.serial} revoked ({said})", attempt.rid,
                     step=Step.REVOKE, level="warning")
    return Result(name, "revoked", serial=version.serial, state=VersionState.REVOKED.value, renewal_id=attempt.rid,
                  reason="ReasonDropped" if dropped is not None else None)


@runtime_checkable
class _ReportsDroppedReason(Protocol):
    """An issuer whose CA may refuse the revocation reason (ACME ``badRevocationReason``) and revoke without it."""

    def revoke_reporting(self, certificate: x509.Certificate, reason: RevocationReason) -> str | None: ...


def import_certificate(s: Services, name: str, cert_pem: bytes, key_pem_data: bytes,
                       chain_pem: bytes | None) -> Result:
    """Adopt an existing certificate: checked like an issued one, then recorded and rolled out.

    Each input is parsed on its own and a parse failure is an ``InputError``
    naming it (``cert``, ``key``, ``chain``), so the operator is pointed at
    the right file. The chain is built by signature from the leaf out of
    every other certificate given (``build_chain``): what does not belong is
    dropped with an ``import.warning`` event naming it, and only the real
    intermediates are published.

    Input that fails to parse or check is refused before the lease is taken
    (``ValueError`` / ``CheckFailed`` to the caller, an ``import.rejected``
    event): the operator's file is wrong, the certificate is not failing, so
    no backoff is set. From recording on, a failure is recorded like any other.
    """
    cfg = s.cert_config(name)
    try:
        leaf, given, key = _parse_import(cert_pem, key_pem_data, chain_pem)
        roots = s.issuer(cfg.issuer).roots()
        chain = usable_chain(leaf, given, roots, lambda dropped: s.recorder.dropped_from_chain(
            name, dropped, None, kind=EventKind.IMPORT_WARNING))
        check_certificate(leaf, chain, key, s.expectations(cfg, roots), s.clock.now())
    except (CertdError, ValueError) as exc:
        # the CLI shows the error itself
        s.recorder.event(name, EventKind.IMPORT_REJECTED, str(exc), None, step=Step.CHECK)
        raise

    def body(attempt: Attempt) -> Result:
        issuer = s.issuer(cfg.issuer)
        with attempt.step(Step.RECORD):
            attempt.version_id = add_version(s, attempt, issuer, leaf, chain, key)
            assert attempt.beat is not None
            s.inventory.update_version(attempt.beat.lease, attempt.version_id, s.clock.now(),
                                       state=VersionState.CHECKED.value)
        material = Material(leaf, chain, key_pem(key), tuple(roots or ()))
        state, _pending = s.rollout.roll_out(attempt, material)
        s.recorder.success(attempt)
        s.recorder.event(name, EventKind.IMPORT_SUCCEEDED, f"imported serial {material.serial}", attempt.rid,
                         step=Step.RECORD)
        return Result(name, "imported", serial=material.serial, state=state, renewal_id=attempt.rid)

    return runner.run(s, "import", name, body, wait=timedelta(minutes=5))


def _parse_import(cert_pem: bytes, key_pem_data: bytes, chain_pem: bytes | None
                  ) -> tuple[x509.Certificate, list[x509.Certificate], PrivateKey]:
    """The leaf, every other certificate given (``--cert`` after the leaf, then ``--chain``) and the key.

    Each input is parsed on its own, so a failure names the one at fault.
    """
    try:
        leaf, *others = load_pem_certs(cert_pem, strict=True)
    except ValueError as exc:
        raise InputError("cert", str(exc)) from exc
    if chain_pem is not None:
        try:
            others += load_pem_certs(chain_pem, strict=True)
        except ValueError as exc:
            raise InputError("chain", str(exc)) from exc
    try:
        key = load_key_pem(key_pem_data)
    except ValueError as exc:
        raise InputError("key", str(exc)) from exc
    return leaf, others, key


def needs_install(s: Services, name: str) -> bool:
    """True when this host's files do not hold the inventory's current version (agent role)."""
    cfg = s.cert_config(name)
    version = s.inventory.current_version(name)
    if version is None or version.state in (VersionState.REVOKED.value, VersionState.FAILED.value):
        return False
    return published_serial(cfg.output_dir) != version.serial


def install(s: Services, name: str) -> Result:
    """Agent role: publish the current version from the inventory on this host, then deploy + verify."""
    cfg = s.cert_config(name)
    version = s.inventory.current_version(name)
    attempt = Attempt("install", name, cfg, uuid.uuid4().hex[:16], old=version, fault=s.fault)
    host = socket.gethostname()
    try:
        if version is None:
            return Result(name, "skipped", renewal_id=attempt.rid, reason="NothingIssued")
        if published_serial(cfg.output_dir) == version.serial:
            return Result(name, "skipped", serial=version.serial, state=version.state, renewal_id=attempt.rid,
                          reason="UpToDate")
        with attempt.step(Step.PUBLISH):
            if version.key_enc is None:
                raise CertdError("the inventory holds no key for this version: set [database] key_file on the "
                                 "issuing replicas")
            key = s.keybox.open(version.key_enc, f"version:{name}:{version.serial}")
            roots = tuple(s.issuer(cfg.issuer).roots() or ())
            material = Material.of_version(version, key_pem(load_key_pem(key)), roots)
            with _host_lock(cfg.output_dir):
                generation = s.rollout.publisher(cfg).publish(version.serial, material.files())
            s.recorder.event(name, EventKind.AGENT_PUBLISHED, f"{host}: serial {version.serial} in {generation.name}",
                             attempt.rid, step=Step.PUBLISH)
        state, _pending = s.rollout.deploy_and_verify(attempt, material, version.id, None)
    except Exception as exc:
        err = as_step_error(attempt.current_step, exc)
        s.recorder.event(name, EventKind.AGENT_FAILED, f"{host}: {err.step}: {err.error}", attempt.rid, step=err.step,
                         level="error")
        return Result(name, "failed", serial=version.serial if version else None, failed_step=err.step,
                      error=str(err.error), renewal_id=attempt.rid, reason=err.error.reason)
    return Result(name, "deployed", serial=version.serial, state=state, renewal_id=attempt.rid)


def rollover(s: Services, issuer_name: str) -> str:
    """The issuer's account key change; ``CertdError`` when the issuer has no account key to roll."""
    issuer = s.issuer(issuer_name)
    if not isinstance(issuer, KeyRollover):
        raise CertdError(f"issuer {issuer_name} has no account key to roll over (only ACME issuers do)")
    return issuer.rollover()


@contextmanager
def _host_lock(output_dir: Path) -> Iterator[None]:
    """One installer per output_dir on this host (agents of one host share the files, not the lease)."""
    claim(output_dir)  # the lock file is certd's too: never made in a directory certd may not write
    with open(output_dir / LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
