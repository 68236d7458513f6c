"""HashiCorp Vault's (and OpenBao's) PKI secrets engine as a certd issuer.

One module per job, so each can be read alone: ``client`` is the only one that
speaks HTTP and turns Vault's errors into certd's, ``auth`` keeps a token alive,
``issuer`` decides what to ask for and checks what came back. All of them log to
``certd.issuers.vault``: an operator filters on one issuer, not on our files.
``certd.issuers.build_issuer`` imports this package only when a Vault issuer is
configured, so hvac stays unimported otherwise.
"""

from __future__ import annotations

from certd.issuers.vault.issuer import VaultIssuer, build

__all__ = ["VaultIssuer", "build"]
