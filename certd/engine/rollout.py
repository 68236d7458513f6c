"""From a checked certificate to a served one: publish → deploy → verify, and rollback when that fails.

The pipeline (renew, import) and the operations (deploy, install) all go
through here, so the file layout is written by one owner (``publish.py``)
and every deploy target sees the same ``DeployContext``. A holder of the
lease writes version states (fenced); an agent (``lease=None``) installs for
its own host only and leaves the cluster-wide states alone.

On an estate's very first start (no version of the certificate was ever
deployed), a target that reports ``TargetAbsent`` (the server is not
running yet: no socket, no pid file) does not fail the rollout: the files
are in place for when it starts, the version stays ``published``, and a
later ``certd deploy`` (or the daemon's scan) completes it — unless a
verify endpoint answers: then the server runs and the target is wrong. After
a first deploy, a missing server is a failure like any other.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography import x509

from certd.config.model import CertificateConfig
from certd.core.clock import Clock
from certd.core.kinds import EventKind, Step
from certd.deploy.base import DeployContext, DeployTarget, PublishedPaths
from certd.deploy.integrity import published_damage
from certd.deploy.publish import Generation, Publisher, current_generation, file_set
from certd.engine.attempt import Attempt, StepError
from certd.engine.recorder import Recorder
from certd.errors import CertdError, DeployError, TargetAbsent, VerifyError
from certd.inputs import read_file
from certd.inventory.leases import LeaseInfo
from certd.inventory.models import Version, VersionState
from certd.inventory.store import Inventory
from certd.lb.health import baseline, confirm_accepted
from certd.pki.certs import load_pem_certs, serial_hex
from certd.places import check_claimable

# A server down at rollout is looked at again this soon (capped by the normal backoff): certd confirms the new
# certificate within seconds of the server's return, and a look costs a connect or a pid check, no order.
SERVER_DOWN_RETRY = timedelta(seconds=10)

__all__ = ["SERVER_DOWN_RETRY", "Material", "Prober", "Rollout", "default_sni", "mark_server_down"]

# verify(endpoint, sni, ca_bundle_roots, expected_leaf, timeout) -> message; raises VerifyError
Prober = Callable[[str, str, tuple[x509.Certificate, ...], x509.Certificate, timedelta], str]


def mark_server_down(cfg: CertificateConfig, exc: StepError) -> bool:
    """Whether the failure is a server that is down (``TargetAbsent`` and no verify endpoint answering); if so
    its retry is brought forward to ``SERVER_DOWN_RETRY``: looking again costs a connect, no order."""
    if not isinstance(exc.error, TargetAbsent) or _any_endpoint_up(cfg):
        return False
    exc.error.retry_within = SERVER_DOWN_RETRY
    return True


@dataclass(frozen=True)
class Material:
    """One certificate with its key and intermediates, and the roots it is checked against."""

    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key_pem: bytes
    roots: tuple[x509.Certificate, ...]

    @property
    def serial(self) -> str:
        return serial_hex(self.leaf)

    def files(self) -> dict[str, bytes]:
        return file_set(self.key_pem, self.leaf, self.chain)

    @classmethod
    def of_version(cls, version: Version, key_pem: bytes, roots: tuple[x509.Certificate, ...]) -> Material:
        leaf = load_pem_certs(version.cert_pem.encode())[0]
        chain = tuple(load_pem_certs(version.chain_pem.encode())) if version.chain_pem else ()
        return cls(leaf, chain, key_pem, roots)


def default_sni(cfg: CertificateConfig) -> str:
    """The first non-wildcard name: what a client would ask for."""
    return next((n for n in cfg.names if not n.startswith("*.")), cfg.names[0])


def _bootstrapping(attempt: Attempt) -> bool:
    """No version of this certificate was ever deployed: servers may not be running yet.

    Only then is a missing server (``TargetAbsent``) a pending deploy. Once a
    version has been deployed, a missing socket or pid file is a failure: a
    typo'd path must not let a running server keep the old certificate unseen.
    """
    old = attempt.old
    return old is None or old.state == VersionState.PUBLISHED.value


def _any_endpoint_up(cfg: CertificateConfig) -> bool:
    """Does any verify endpoint accept a connection? Then the server runs and an absent target is a mistake."""
    for ep in cfg.verify:
        host, _, port = ep.endpoint.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1):
                return True
        except OSError:
            continue
    return False


def _intact(publisher: Publisher, files: dict[str, bytes], generation: str | None, when: str) -> None:
    """Fail the deploy when the published set is no longer what certd wrote (a hook changed it)."""
    damage = published_damage(publisher, files, generation)
    if damage:
        exposed = " — the key was readable beyond its configured mode; `certd renew --force` replaces it" \
            if damage.exposed else ""
        raise DeployError(f"{when}, the published files changed: {damage}{exposed}; `certd deploy` publishes "
                          "them again")


def _load_bundle(path: Path) -> tuple[x509.Certificate, ...]:
    try:
        return tuple(load_pem_certs(read_file(path)))
    except (OSError, ValueError) as exc:
        raise VerifyError(f"cannot read CA bundle {path}: {exc}") from exc


class Rollout:
    """Publish, deploy, verify and roll back for one inventory and one set of deploy targets."""

    def __init__(self, inventory: Inventory, targets: Mapping[str, DeployTarget], prober: Prober | None,
                 recorder: Recorder, clock: Clock) -> None:
        self.inventory = inventory
        self.targets = targets
        self.prober = prober
        self.recorder = recorder
        self.clock = clock

    def preflight(self, cfg: CertificateConfig) -> None:
        """What the steps after issuance need that can be known before ordering: the owner and group exist,
        the directory may be taken, the inventory is still sealed with this process's key. A renewal checks
        it first, so a user deleted at runtime, another tool's files in ``output_dir`` or a rotated key
        fail where no certificate is spent — not after issuance on every retry."""
        self.publisher(cfg)
        check_claimable(cfg.output_dir)
        self.inventory.check_sealing_key()  # `db rotate-key` ran under this process: it would fail at record

    @staticmethod
    def publisher(cfg: CertificateConfig) -> Publisher:
        return Publisher(cfg.output_dir, keep=cfg.keep, key_mode=cfg.mode, owner=cfg.owner, group=cfg.group)

    def roll_out(self, attempt: Attempt, material: Material) -> tuple[str, bool]:
        """Publish the attempt's version (fenced), then deploy and verify it; roll back if that fails.

        Returns the version's state and whether a deploy is still pending (a target not running yet).
        """
        beat, version_id = attempt.beat, attempt.version_id
        assert beat is not None and version_id is not None
        with attempt.step(Step.PUBLISH, at="publisher"):
            publisher = self.publisher(attempt.cfg)
        with attempt.step(Step.PUBLISH):
            beat.fence()  # the fencing check and the switch are as close as the file system allows
            generation = publisher.publish(material.serial, material.files(),
                                           rollback_to=attempt.old.generation if attempt.old else None)
            now = self.clock.now()
            self.inventory.make_current(beat.lease, version_id, now)
            self.inventory.update_version(beat.lease, version_id, now, state=VersionState.PUBLISHED.value,
                                          generation=generation.name)
            self.recorder.event(attempt.name, EventKind.PUBLISH_DONE, f"serial {material.serial} in {generation.name}",
                                attempt.rid, step=Step.PUBLISH)
        try:
            return self.deploy_and_verify(attempt, material, version_id, beat.lease)
        except StepError as exc:
            if not self._server_down(attempt, exc, material.serial):
                publisher.mark_failed(generation)  # never counted by keep, never a rollback target
                if attempt.cfg.rollback and attempt.old is not None:
                    self.rollback(attempt, publisher, attempt.old, material.roots, beat.lease)
            raise

    def _server_down(self, attempt: Attempt, exc: StepError, serial: str) -> bool:
        """A server that is down, not refusing this certificate: leave the new one published, so the server
        loads it when it starts (rolling back would have it start on the old one), and look again soon — a
        socket or a pid file, no order and no reload — so certd confirms it within seconds of the return."""
        if not mark_server_down(attempt.cfg, exc):
            return False
        self.recorder.event(attempt.name, EventKind.ROLLBACK_SKIPPED, f"{exc.error}: serial {serial} stays "
                            f"published for when it starts; not rolled back; looked at again within "
                            f"{SERVER_DOWN_RETRY.total_seconds():g}s", attempt.rid, step=Step.DEPLOY,
                            level="warning")
        return True

    def roll_out_again(self, attempt: Attempt, version: Version, generation: Generation,
                       roots: tuple[x509.Certificate, ...]) -> tuple[str, bool]:
        """Roll out a version issued earlier whose rollout failed, from its generation on disk: no new order.

        As ``roll_out`` from the switch on: the generation becomes current, deploy and verify run, and a
        failure rolls back to the attempt's current version. Success makes the generation good again.
        """
        beat = attempt.beat
        assert beat is not None
        with attempt.step(Step.PUBLISH, at="publisher"):
            publisher = self.publisher(attempt.cfg)
        with attempt.step(Step.PUBLISH):
            key = generation.read("privkey.pem")
            beat.fence()
            publisher.switch(generation)
            now = self.clock.now()
            self.inventory.make_current(beat.lease, version.id, now)
            self.inventory.update_version(beat.lease, version.id, now, state=VersionState.PUBLISHED.value,
                                          failed_step=None, error=None)
            attempt.version_id = version.id
            self.recorder.event(attempt.name, EventKind.PUBLISH_DONE, f"serial {version.serial} in {generation.name} "
                                "again: issued earlier, its rollout failed; rolled out again instead of a new order",
                                attempt.rid, step=Step.PUBLISH)
        try:
            state = self.deploy_and_verify(attempt, Material.of_version(version, key, roots), version.id, beat.lease)
        except StepError as exc:
            if not self._server_down(attempt, exc, version.serial) and attempt.cfg.rollback \
                    and attempt.old is not None:
                self.rollback(attempt, publisher, attempt.old, roots, beat.lease)
            raise
        publisher.mark_good(generation)
        return state

    def deploy_and_verify(self, attempt: Attempt, material: Material, version_id: int,
                          lease: LeaseInfo | None) -> tuple[str, bool]:
        """Run every deploy target, then every verify endpoint; the version's state after them."""
        name, cfg = attempt.name, attempt.cfg
        state = VersionState.PUBLISHED
        files = material.files()
        ctx = DeployContext(
            certificate=name, serial=material.serial, names=tuple(cfg.names), leaf=material.leaf,
            chain=material.chain, roots=material.roots, key_pem=material.key_pem,
            fullchain_pem=files["fullchain.pem"], combined_pem=files["combined.pem"],
            paths=PublishedPaths.under(cfg.output_dir), secrets=self.recorder.secrets(),
        )
        pending: list[str] = []
        lb_before = [baseline(check) for check in cfg.lb_checks]  # HAProxy's counters before the rotation
        if cfg.deploy:
            with attempt.step(Step.DEPLOY):
                publisher = self.publisher(cfg)
                generation = current_generation(cfg.output_dir)
                switched = generation.name if generation is not None else None
                _intact(publisher, files, switched, "before any deploy target ran")
                for target_name in cfg.deploy:
                    try:
                        message = self.targets[target_name].deploy(ctx)
                        _intact(publisher, files, switched, f"deploy {target_name}: after it ran")
                    except TargetAbsent as exc:
                        if not _bootstrapping(attempt) or _any_endpoint_up(cfg):
                            self.recorder.deploy_result(name, target_name, False)
                            raise
                        pending.append(target_name)
                        self.recorder.event(name, EventKind.DEPLOY_PENDING, f"{target_name}: {exc}; the files are in "
                                            "place for when it starts (certd deploy completes this)",
                                            attempt.rid, step=Step.DEPLOY, level="warning")
                        continue
                    except Exception:
                        self.recorder.deploy_result(name, target_name, False)
                        raise
                    self.recorder.deploy_result(name, target_name, True)
                    self.recorder.event(name, EventKind.DEPLOY_DONE, f"{target_name}: {message}", attempt.rid,
                                        step=Step.DEPLOY)
                if not pending:
                    state = VersionState.DEPLOYED
                    # With checks to run, the version stays published until they pass: 'deployed' during a
                    # verify that takes seconds (old workers still presenting the old certificate) read as done.
                    if lease is not None and not cfg.verify and not cfg.lb_checks:
                        self.inventory.update_version(lease, version_id, self.clock.now(), state=state.value)
        if cfg.verify and not pending:
            with attempt.step(Step.VERIFY):
                if self.prober is None:
                    raise VerifyError(f"certificate {name}: verify endpoints are configured but no prober")
                for ep in cfg.verify:
                    bundle = _load_bundle(ep.ca_bundle) if ep.ca_bundle else material.roots
                    try:
                        message = self.prober(ep.endpoint, ep.sni or default_sni(cfg), bundle, material.leaf,
                                              cfg.verify_timeout)
                    except Exception:
                        self.recorder.probe_result(name, False)
                        raise
                    self.recorder.probe_result(name, True)
                    self.recorder.event(name, EventKind.VERIFY_DONE, f"{ep.endpoint}: {message}", attempt.rid,
                                        step=Step.VERIFY)
                state = VersionState.SERVED
                if lease is not None:
                    self.inventory.update_version(lease, version_id, self.clock.now(), state=state.value)
        if cfg.lb_checks and not pending:
            with attempt.step(Step.VERIFY):  # the whole path: the load balancer still accepts this backend
                for check, before in zip(cfg.lb_checks, lb_before, strict=True):
                    message = confirm_accepted(check, before, cfg.verify_timeout)
                    self.recorder.event(name, EventKind.VERIFY_DONE, message, attempt.rid, step=Step.VERIFY)
            if state is VersionState.DEPLOYED and lease is not None:  # no verify endpoint: deployed is the end
                self.inventory.update_version(lease, version_id, self.clock.now(), state=state.value)
        return state.value, bool(pending)

    def rollback(self, attempt: Attempt, publisher: Publisher, old: Version, roots: tuple[x509.Certificate, ...],
                 lease: LeaseInfo) -> None:
        """Switch back to the previous generation and re-run deploy + verify for it; failures are events."""
        try:
            with attempt.step(Step.ROLLBACK):
                if old.generation is None or not (attempt.cfg.output_dir / old.generation).is_dir():
                    raise DeployError(f"previous generation of serial {old.serial} is no longer on disk")
                publisher.switch(Generation(old.generation, attempt.cfg.output_dir / old.generation))
                now = self.clock.now()
                self.inventory.make_current(lease, old.id, now, previous_state=VersionState.FAILED.value)
                self.inventory.update_version(lease, old.id, now, state=old.state)
                gen = current_generation(attempt.cfg.output_dir)
                if gen is None:
                    raise DeployError("no generation is current after switching back")
                material = Material.of_version(old, gen.read("privkey.pem"), roots)
                self.deploy_and_verify(attempt, material, old.id, lease)
            self.recorder.event(attempt.name, EventKind.ROLLBACK_DONE, f"serial {old.serial} is served again",
                                attempt.rid, step=Step.DEPLOY, level="warning")
        except (StepError, CertdError, OSError) as exc:
            self.recorder.event(attempt.name, EventKind.ROLLBACK_FAILED,
                                f"rollback to serial {old.serial} failed: {exc}", attempt.rid, step=Step.DEPLOY,
                                level="error")
