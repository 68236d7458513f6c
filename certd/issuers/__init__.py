"""Issuers behind one interface (``base.Issuer``), built from the config by type.

Each issuer module is imported only when configured, so a host that only
uses the local CA never imports the ACME or Vault client libraries.
"""

from __future__ import annotations

import importlib

from certd.config.model import AcmeIssuerConfig, IssuerConfig, LocalCAIssuerConfig, VaultIssuerConfig
from certd.errors import ConfigError
from certd.issuers.base import AccountStore, Issuer

__all__ = ["build_issuer"]


def build_issuer(name: str, config: IssuerConfig, accounts: AccountStore) -> Issuer:
    """Construct the issuer for one ``[issuers.NAME]`` table.

    Each non-builtin issuer module exposes ``build(name, config, accounts) -> Issuer``.
    """
    if isinstance(config, LocalCAIssuerConfig):
        from certd.issuers.local_ca import LocalCA

        return LocalCA(name, config)
    module_name = {VaultIssuerConfig: "vault", AcmeIssuerConfig: "acme.issuer"}[type(config)]
    try:
        module = importlib.import_module(f"certd.issuers.{module_name}")
    except ModuleNotFoundError as exc:
        raise ConfigError(f"issuers.{name}.type: {config.type!r} issuers are not available in this build") from exc
    issuer: Issuer = module.build(name, config, accounts)
    return issuer


