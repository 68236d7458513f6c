"""The one interface every deploy target implements.

A deploy target makes a server load the generation that ``publish`` has just
switched to. It runs only after the switch, so every file it reads (through
``DeployContext.paths``) belongs to one matching set. Targets know nothing of
issuers. They raise only ``certd.errors.DeployError`` (message naming the
target and the cause, never a secret) and return a short human summary of
what they did, which the pipeline records as an event.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography import x509

__all__ = ["DeployContext", "DeployTarget", "PublishedPaths", "TrustSink"]


@dataclass(frozen=True)
class PublishedPaths:
    """Stable paths of the published files (through the switched link)."""

    output_dir: Path
    privkey: Path
    cert: Path
    chain: Path
    fullchain: Path
    combined: Path

    @classmethod
    def under(cls, output_dir: Path) -> PublishedPaths:
        """The layout from the design, rooted at ``output_dir``."""
        return cls(
            output_dir=output_dir,
            privkey=output_dir / "privkey.pem",
            cert=output_dir / "cert.pem",
            chain=output_dir / "chain.pem",
            fullchain=output_dir / "fullchain.pem",
            combined=output_dir / "combined.pem",
        )


@dataclass(frozen=True)
class DeployContext:
    """Everything a target may need about the version being deployed.

    ``key_pem`` and ``combined_pem`` hold the private key: targets may send
    them to the server they deploy to, and must never log or echo them.
    """

    certificate: str
    serial: str
    names: tuple[str, ...]
    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    roots: tuple[x509.Certificate, ...]
    key_pem: bytes
    fullchain_pem: bytes
    combined_pem: bytes
    paths: PublishedPaths
    secrets: tuple[str, ...] = ()  # every secret certd holds (scrub.held_secrets): never to be echoed


@runtime_checkable
class DeployTarget(Protocol):
    """Make one server load the new certificate; raise ``DeployError`` if it did not."""

    name: str

    def deploy(self, ctx: DeployContext) -> str: ...


@runtime_checkable
class TrustSink(Protocol):
    """Optional: the target's server pins a CA bundle file that it can reload live (HAProxy's ``ca-file``).

    ``push_ca_file`` returns ``None`` when the target does not use ``path``,
    else a one-line summary; it raises ``DeployError`` when the server refused.
    """

    name: str

    def push_ca_file(self, path: Path, pem: bytes) -> str | None: ...
