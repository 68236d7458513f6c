"""What a load balancer pins for an issuer, and keeping the issuer's ``bundle_file`` current and pushed.

The bundle is the issuing CA certificates — intermediates and the pinned
root — never the system store. It is the union of

* what the issuer says it signs with now (``CaChain``: Vault, the local CA;
  during a CA rotation that includes the staged next CA), and
* the CA certificates every certificate of this issuer that is served now
  chains to (its version's chain plus the pinned root that signed it) — and,
  while a certificate's current version is not confirmed deployed (its
  rollout is running, or failed without a rollback), the version before it,
  which servers may still present.

So an old CA stays pinned exactly as long as a served certificate needs it,
and leaves the bundle on its own once the last such certificate was replaced:
the trust overlap of a CA rotation needs no bookkeeping of its own.

Order matters for zero downtime: a load balancer must trust a new CA before
any backend serves a certificate under it. ``ensure_trusted`` runs before a
rollout and pushes a bundle that includes the new certificate's CAs; if a
trust sink does not take it, the rollout does not happen (the old certificate
keeps being served). ``refresh_bundle_file`` runs after it and lets go of
what is no longer needed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from certd.config.model import CertificateConfig, Config
from certd.core.kinds import EventKind, Step
from certd.deploy.base import TrustSink
from certd.deploy.publish import write_file_atomic
from certd.engine.recorder import Recorder
from certd.errors import CertdError, DeployError, TargetAbsent
from certd.inputs import read_file
from certd.inventory.models import VersionState
from certd.inventory.store import Inventory
from certd.issuers.base import CaChain, Issuer
from certd.pki.certs import certs_pem, fingerprint, issued_by, load_pem_certs

__all__ = ["anchors", "ensure_trusted", "issuer_bundle", "push_bundle", "refresh_bundle_file", "trust_bundle"]


def anchors(leaf: x509.Certificate, chain: Sequence[x509.Certificate],
            roots: Iterable[x509.Certificate]) -> list[x509.Certificate]:
    """The chain's CA certificates and the root(s) among ``roots`` that signed its top."""
    top = chain[-1] if chain else leaf
    return [*chain, *(r for r in roots if issued_by(top, r))]


def _confirmed(state: str, cfg: CertificateConfig, in_operation: bool) -> bool:
    """The version is what servers present: its rollout ended (no lease held) in deployed or served, or in
    published where there is nothing to deploy. While the rollout runs, ``deployed`` only says the server
    was told (a SIGHUP sent: old workers may still present the old certificate while verify runs)."""
    if in_operation:
        return False
    final = {VersionState.DEPLOYED.value, VersionState.SERVED.value}
    return state in final or (not cfg.deploy and state == VersionState.PUBLISHED.value)


def issuer_bundle(config: Config, issuer_name: str, issuer: Issuer, inventory: Inventory,
                  extra: Iterable[x509.Certificate] = (), settled: str | None = None) -> list[x509.Certificate]:
    """Every CA certificate a server of ``issuer_name`` may present a chain to now, each once."""
    certs = list(issuer.ca_chain()) if isinstance(issuer, CaChain) else []
    roots = issuer.roots() or []
    current, before = inventory.current_versions(), inventory.previously_served()
    # Leases are compared with the wall clock, as the lease holders themselves do.
    busy = inventory.held_leases(datetime.now(UTC)) - {settled}  # the caller's own rollout has finished
    for name, cfg in config.certificates.items():
        if cfg.issuer != issuer_name:
            continue
        version = current.get(name)
        maybe_served = [version] if version is not None else []
        if version is None or not _confirmed(version.state, cfg, name in busy):
            maybe_served += [before[name]] if name in before else []
        for v in maybe_served:
            leaf = load_pem_certs(v.cert_pem.encode())[0]
            chain = load_pem_certs(v.chain_pem.encode()) if v.chain_pem else []
            certs += anchors(leaf, chain, roots)
    certs += extra
    if not certs:
        certs += roots
    return list({fingerprint(c): c for c in certs}.values())


def trust_bundle(name: str, issuer_name: str, issuer: Issuer, inventory: Inventory,
                 config: Config) -> list[x509.Certificate]:
    """What a load balancer pins for ``name``: its issuer's bundle."""
    certs = issuer_bundle(config, issuer_name, issuer, inventory, settled=name)
    if not certs:
        raise CertdError(f"certificate {name}: issuer {issuer_name} has no CA certificates to pin yet")
    return certs


def push_bundle(path: Path, pem: bytes, sinks: Iterable[object]) -> tuple[list[str], list[str]]:
    """Push to every sink that pins ``path``: (what each said, what each refused).

    A sink that is not running (``TargetAbsent``) is no refusal: the file is written before the push.
    """
    said, refused = [], []
    for sink in sinks:
        if not isinstance(sink, TrustSink):
            continue
        try:
            message = sink.push_ca_file(path, pem)
        except TargetAbsent as exc:  # not running: it reads the file, already written, when it starts
            said.append(f"{sink.name}: not running, loads the bundle when it starts ({exc})")
            continue
        except CertdError as exc:
            refused.append(f"{sink.name}: {exc}")
            continue
        if message is not None:
            said.append(f"{sink.name}: {message}")
    return said, refused


def ensure_trusted(config: Config, name: str, issuer_name: str, issuer: Issuer, inventory: Inventory,
                   recorder: Recorder, rid: str, new_cas: Sequence[x509.Certificate], sinks: Iterable[object]) -> None:
    """Before a rollout: the bundle must already hold ``new_cas``, or be rewritten and pushed with them.

    Raises ``DeployError`` when a sink refused the bundle: deploying a
    certificate under a CA the load balancer does not trust yet would take the
    backend out of service.
    """
    path = config.issuers[issuer_name].bundle_file
    if path is None or not new_cas:
        return
    try:
        have = {fingerprint(c) for c in load_pem_certs(read_file(path))}
    except OSError:
        have = set()
    if all(fingerprint(c) in have for c in new_cas):
        return
    pem = certs_pem(issuer_bundle(config, issuer_name, issuer, inventory, extra=new_cas))
    write_file_atomic(path, pem)
    recorder.event(name, EventKind.BUNDLE_WRITTEN, f"issuer {issuer_name}: trust bundle written to {path} with the new "
                   "certificate's CA ahead of its rollout", rid, step=Step.TRUST)
    said, refused = push_bundle(path, pem, sinks)
    for message in said:
        recorder.event(name, EventKind.BUNDLE_PUSHED, message, rid, step=Step.TRUST)
    if refused:
        raise DeployError(f"the new certificate's CA is not trusted yet by {'; '.join(refused)}: not rolled out, "
                          "the old certificate stays in service", reason="TrustNotPushed")


def refresh_bundle_file(config: Config, name: str, issuer_name: str, issuer: Issuer, inventory: Inventory,
                        recorder: Recorder, rid: str, sinks: Iterable[object] = ()) -> None:
    """After a rollout: rewrite the issuer's ``bundle_file`` when it changed, and have every sink hold it.

    The bundle is offered after every renewal of the issuer's certificates,
    changed or not, so a server that missed one (down, refused) converges on
    the next; a sink that already holds exactly this bundle is not touched
    (``push_ca_file`` compares fingerprints first). A bundle that could not
    be written, or a sink that refused it or died taking it, fails the step
    (``DeployError``, reason ``TrustNotPushed``): the rollout is not a success
    while a load balancer does not hold what it should, or is gone. The
    certificate itself stays in service; the next deploy of it retries this.
    """
    path = config.issuers[issuer_name].bundle_file
    if path is None:
        return
    try:
        pem = certs_pem(trust_bundle(name, issuer_name, issuer, inventory, config))
        if write_file_atomic(path, pem):
            recorder.event(name, EventKind.BUNDLE_WRITTEN, f"issuer {issuer_name}: trust bundle written to {path}", rid)
    except CertdError as exc:
        recorder.event(name, EventKind.BUNDLE_FAILED, f"issuer {issuer_name}: cannot write {path}: {exc}", rid,
                       step=Step.TRUST, level="error")
        raise DeployError(f"issuer {issuer_name}: cannot write the trust bundle {path}: {exc}",
                          reason="TrustNotPushed") from exc
    said, refused = push_bundle(path, pem, sinks)
    for message in said:
        recorder.event(name, EventKind.BUNDLE_PUSHED, message, rid, step=Step.TRUST)
    for message in refused:
        recorder.event(name, EventKind.BUNDLE_PUSH_FAILED, message, rid, step=Step.TRUST, level="error")
    if refused:
        raise DeployError(f"the trust bundle {path} did not reach {'; '.join(refused)}", reason="TrustNotPushed")
