"""Issuers behind one interface (``base.Issuer``), built from the config by type.

Each issuer module is imported only when configured, so a host that only
uses the local CA never imports the ACME or Vault client libraries.
"""

from __future__ import annotations

from collections.abc import Mapping

from certd.config import AcmeIssuerConfig, IssuerConfig, LocalCAIssuerConfig, VaultIssuerConfig
from certd.issuers.base import Issuer

__all__ = ["build_issuer", "build_issuers"]


def build_issuer(name: str, config: IssuerConfig) -> Issuer:
    """Construct the issuer for one ``[issuers.NAME]`` table."""
    if isinstance(config, LocalCAIssuerConfig):
        from certd.issuers.local_ca import LocalCA

        return LocalCA(name, config)
    if isinstance(config, VaultIssuerConfig):
        from certd.issuers.vault import VaultIssuer

        return VaultIssuer(name, config)
    if isinstance(config, AcmeIssuerConfig):
        from certd.issuers.acme import AcmeIssuer

        return AcmeIssuer(name, config)
    raise TypeError(f"unknown issuer config {type(config).__name__}")


def build_issuers(configs: Mapping[str, IssuerConfig]) -> dict[str, Issuer]:
    return {name: build_issuer(name, cfg) for name, cfg in configs.items()}
