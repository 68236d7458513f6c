"""What a load balancer pins for a certificate's issuer, and keeping the issuer's ``bundle_file`` current.

The bundle is the issuing CA certificates — intermediates and the pinned
root — never the system store. An issuer that knows its own chain
(``CaChain``: Vault, the local CA) answers directly; for an ACME CA the chain
comes from the current version plus the pinned roots.
"""

from __future__ import annotations

from cryptography import x509

from certd.certs import certs_pem, fingerprint, load_pem_certs
from certd.config import Config
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
                        recorder: Recorder, rid: str) -> None:
    """Rewrite the issuer's ``bundle_file`` when it changed; a failure is a warning, not a failed renewal."""
    path = config.issuers[issuer_name].bundle_file
    if path is None:
        return
    try:
        if write_file_atomic(path, certs_pem(trust_bundle(name, issuer_name, issuer, inventory))):
            recorder.event(name, "bundle.written", f"issuer {issuer_name}: trust bundle written to {path}", rid)
    except CertdError as exc:
        recorder.event(name, "bundle.failed", f"issuer {issuer_name}: cannot write {path}: {exc}", rid,
                       level="warning")
