"""RFC 5280 revocation reasons, by the names operators type (``certd revoke --reason``).

A module of its own, importing nothing, so the CLI can offer the names
without loading an issuer.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["RevocationReason"]


class RevocationReason(StrEnum):
    """RFC 5280 CRLReason names, as accepted by ``certd revoke --reason``."""

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "keyCompromise"
    CA_COMPROMISE = "cACompromise"
    AFFILIATION_CHANGED = "affiliationChanged"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessationOfOperation"
    CERTIFICATE_HOLD = "certificateHold"
    PRIVILEGE_WITHDRAWN = "privilegeWithdrawn"
    AA_COMPROMISE = "aACompromise"

    @property
    def code(self) -> int:
        """The RFC 5280 integer code (7 is unused)."""
        order = list(RevocationReason)
        idx = order.index(self)
        return idx if idx < 7 else idx + 1
