"""The interface between the ACME issuer and the ways it proves control of a name.

A solver is given every challenge of one order at once, because DNS-01 pays
its propagation wait once per order rather than once per name, and the
HTTP-01 responder is started once for all of them. ``present`` returns only
when the CA can validate; ``cleanup`` must never raise (the order's outcome
is already decided by then) and must undo everything ``present`` did, even
after a partial ``present``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Challenge", "ChallengeSolver"]


@dataclass(frozen=True)
class Challenge:
    """One challenge to satisfy.

    ``domain`` is the identifier as ordered (``*.example.com`` for a wildcard);
    ``token`` is the challenge token (base64url, the HTTP-01 file name);
    ``validation`` is what the CA expects to find: the key authorization for
    HTTP-01, the base64url SHA-256 digest of it (the TXT value) for DNS-01.
    """

    domain: str
    token: str
    validation: str


class ChallengeSolver(Protocol):
    """Presents one challenge type (``http-01`` or ``dns-01``). Safe to use from several threads."""

    challenge_type: str

    def present(self, challenges: Sequence[Challenge]) -> None:
        """Make every challenge answerable; raise ``certd.errors.IssuerError`` naming the step if not."""
        ...

    def cleanup(self, challenges: Sequence[Challenge]) -> None:
        """Undo ``present`` (also after a partial one); log failures, never raise."""
        ...
