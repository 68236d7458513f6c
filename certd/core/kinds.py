"""The names certd writes into its record: event kinds and the steps an operation goes through.

Enums, so code compares members and a typo is an error, not a silent
mismatch; ``StrEnum`` with the very strings events always carried, because
they are public (``history --json``, the HTTP API, the ``step`` column) and
stay as they were.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["EventKind", "Step"]


class Step(StrEnum):
    """Where an operation was when something happened (``failed_step``, an event's ``step``)."""

    PLAN = "plan"
    KEY = "key"
    ISSUE = "issue"
    CHECK = "check"
    RECORD = "record"
    TRUST = "trust"
    PUBLISH = "publish"
    DEPLOY = "deploy"
    VERIFY = "verify"
    ROLLBACK = "rollback"
    REVOKE = "revoke"
    IMPORT = "import"
    INSTALL = "install"
    LEASE = "lease"
    INTERNAL = "internal"


class EventKind(StrEnum):
    """What happened to a certificate (an event's ``kind``)."""

    RENEWAL_STARTED = "renewal.started"
    RENEWAL_SKIPPED = "renewal.skipped"
    RENEWAL_SUCCEEDED = "renewal.succeeded"
    RENEWAL_FAILED = "renewal.failed"
    CHECK_WARNING = "check.warning"
    CHECK_LIFETIME_SHORTENED = "check.lifetime_shortened"
    PUBLISH_DONE = "publish.done"
    PUBLISH_REPAIRED = "publish.repaired"
    DEPLOY_DONE = "deploy.done"
    DEPLOY_PENDING = "deploy.pending"
    DEPLOY_FAILED = "deploy.failed"
    VERIFY_DONE = "verify.done"
    ROLLBACK_DONE = "rollback.done"
    ROLLBACK_FAILED = "rollback.failed"
    ROLLBACK_SKIPPED = "rollback.skipped"
    IMPORT_WARNING = "import.warning"
    IMPORT_REJECTED = "import.rejected"
    IMPORT_SUCCEEDED = "import.succeeded"
    IMPORT_FAILED = "import.failed"
    REVOKE_DONE = "revoke.done"
    REVOKE_REASON_DROPPED = "revoke.reason_dropped"
    REVOKE_FAILED = "revoke.failed"
    ACCOUNT_REGISTERED_AGAIN = "account.registered_again"
    AGENT_PUBLISHED = "agent.published"
    AGENT_FAILED = "agent.failed"
    BUDGET_OVERRIDDEN = "budget.overridden"
    BACKOFF_CLEARED = "backoff.cleared"
    ARI_WINDOW = "ari.window"
    BUNDLE_WRITTEN = "bundle.written"
    BUNDLE_PUSHED = "bundle.pushed"
    BUNDLE_PUSH_FAILED = "bundle.push_failed"
    BUNDLE_FAILED = "bundle.failed"
    CONFIG_ADDED = "config.added"
    CONFIG_CHANGED = "config.changed"
    CONFIG_RETIRED = "config.retired"
