"""What one operation on one certificate did: the public answer, one entry of ``renew --json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["Operation", "Outcome", "Result"]

Outcome = Literal["renewed", "deployed", "skipped", "failed", "imported", "revoked"]
Operation = Literal["renew", "deploy", "install", "import", "revoke"]


@dataclass(frozen=True)
class Result:
    """What one call did; ``as_json`` is one entry of ``renew --json``."""

    name: str
    outcome: Outcome
    serial: str | None = None
    state: str | None = None
    failed_step: str | None = None
    error: str | None = None
    renewal_id: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome != "failed"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)
