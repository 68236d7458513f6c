"""certd's one small error tree.

Every adapter (ACME, Vault, HAProxy, the file system, the database) converts
the errors of the library it wraps into one of these at its seam, with
``raise ... from exc``, so that the pipeline, the scheduler and the CLI only
ever deal with this tree. Each error carries what its callers need to decide:
a user-facing message, a short machine ``reason``, whether trying again can
help (``retryable``) and, when the other side said so, ``retry_after``.

Messages must never contain secrets (keys, tokens, EAB or TSIG secrets).
"""

from __future__ import annotations

import re
from datetime import timedelta

__all__ = [
    "CA_RATE_LIMIT_REASONS",
    "CertdError",
    "CheckFailed",
    "ConfigError",
    "DeployError",
    "InventoryError",
    "IssuerError",
    "IssuerUnavailable",
    "LeaseLost",
    "LeaseTimeout",
    "PublishError",
    "RateLimited",
    "TargetAbsent",
    "VerifyError",
    "tls_reason",
]


class CertdError(Exception):
    """Base of every error certd raises on purpose."""

    reason: str = "Error"
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        retryable: bool | None = None,
        retry_after: timedelta | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        if retryable is not None:
            self.retryable = retryable
        self.retry_after = retry_after
        # Look again no later than this (a server that is down: checking costs nothing at the CA).
        self.retry_within: timedelta | None = None

    def __str__(self) -> str:
        return self.message


class ConfigError(CertdError):
    """The configuration is invalid; the message names the file and the key."""

    reason = "ConfigInvalid"


class InventoryError(CertdError):
    """The database could not be opened, migrated or queried."""

    reason = "InventoryError"
    retryable = True


class IssuerError(CertdError):
    """The issuer refused or failed to issue or revoke."""

    reason = "IssuerError"


class RateLimited(IssuerError):
    """The issuer (or certd's own budget) says: not now; see ``retry_after``."""

    reason = "RateLimited"
    retryable = True


class IssuerUnavailable(IssuerError):
    """The issuer could not be reached or is temporarily unable to serve."""

    reason = "IssuerUnavailable"
    retryable = True


class CheckFailed(CertdError):
    """A newly issued certificate failed a check and must not be published."""

    reason = "CheckFailed"


class PublishError(CertdError):
    """Writing the files of a generation, or switching to it, failed."""

    reason = "PublishFailed"
    retryable = True


class DeployError(CertdError):
    """A deploy target failed to make the server load the new certificate."""

    reason = "DeployFailed"
    retryable = True


class TargetAbsent(DeployError):
    """The server to deploy to is not running yet (no pid file, no socket): it reads the files when it starts.

    Not a failure: on an estate's first start certd must publish before the
    servers can start at all. The version stays ``published`` until a later
    ``certd deploy`` (or the daemon's next scan) finds the server up.
    """

    reason = "TargetAbsent"


class VerifyError(CertdError):
    """The endpoint does not serve the certificate we deployed."""

    reason = "VerifyFailed"
    retryable = True


class LeaseLost(CertdError):
    """Our lease on the certificate expired or was taken; we must not write."""

    reason = "LeaseLost"
    retryable = True


class LeaseTimeout(CertdError):
    """Another holder kept the certificate's lease longer than we would wait."""

    reason = "LeaseTimeout"
    retryable = True


# Reasons of refusals by a CA's own rate limits (not certd's budget): a config reload keeps their backoff.
CA_RATE_LIMIT_REASONS = ("rateLimited", "VaultRateLimited")


def tls_reason(exc: BaseException) -> str:
    """The ssl module's reason, dug out of the long repr that requests and urllib3 wrap it in.

    An operator needs "certificate verify failed: unable to get local issuer certificate",
    not three layers of exception names.
    """
    found = re.search(r"certificate verify failed: [^(')\"]+", str(exc))
    return found.group(0).strip() if found else "TLS handshake failed"
