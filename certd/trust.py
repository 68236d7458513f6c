"""What a load balancer pins for a certificate's issuer, and keeping the issuer's ``bundle_file`` current.

The bundle is the issuing CA certificates — intermediates and the pinned
root — never the system store. An issuer that knows its own chain
(``CaChain``: Vault, the local CA) answers directly; for an ACME CA the chain
comes from the current version plus the pinned roots.
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography import x509

from certd.certs import certs_pem, fingerprint, load_pem_certs
from certd.config import Config
from certd.deploy.base import TrustSink
from certd.errors import CertdError
from certd.inventory.store import Inventory
from certd.issuers.base import CaChain, Issuer
from certd.publish import write_file_atomic
from certd.recorder import Recorder

__all__ = ["refresh_bundle_file", "trust_bundle"]


def trust_bundle(name: str, issuer_name: str, issuer: Issuer, inventory: Inventory) -> list[x509.Certificate]:
    """Intermediates and pinned roots of ``name``'s issuer, each once."""
    if isinstance(issuer, CaChain):
        certs = list(issuer.ca_chain())
    else:
        version = inventory.current_version(name)
        certs = list(load_pem_certs(version.chain_pem.encode())) if version and version.chain_pem else []
        certs += issuer.roots() or []
    if not certs:
        raise CertdError(f"certificate {name}: issuer {issuer_name} has no CA certificates to pin yet")
    return list({fingerprint(c): c for c in certs}.values())


def refresh_bundle_file(config: Config, name: str, issuer_name: str, issuer: Issuer, inventory: Inventory,
                        recorder: Recorder, rid: str, sinks: Iterable[object] = ()) -> None:
    """Rewrite the issuer's ``bundle_file`` when it changed, and push it to the servers that pin it live.

    The push runs after every renewal of the issuer's certificates, changed
    or not: it is idempotent, and a server that missed one (down, refused)
    converges on the next. A failure is a warning, not a failed renewal: the
    certificate itself was rolled out.
    """
    path = config.issuers[issuer_name].bundle_file
    if path is None:
        return
    try:
        pem = certs_pem(trust_bundle(name, issuer_name, issuer, inventory))
        if write_file_atomic(path, pem):
            recorder.event(name, "bundle.written", f"issuer {issuer_name}: trust bundle written to {path}", rid)
    except CertdError as exc:
        recorder.event(name, "bundle.failed", f"issuer {issuer_name}: cannot write {path}: {exc}", rid,
                       level="warning")
        return
    for sink in sinks:
        if not isinstance(sink, TrustSink):
            continue
        try:
            message = sink.push_ca_file(path, pem)
        except CertdError as exc:
            recorder.event(name, "bundle.push_failed", f"{sink.name}: {exc}", rid, level="warning")
            continue
        if message is not None:
            recorder.event(name, "bundle.pushed", f"{sink.name}: {message}", rid)
