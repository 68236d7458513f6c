"""TOML configuration, validated into frozen, typed models.

Why a hand-driven loader around pydantic rather than one big model: the
issuer and deploy tables are unions picked by ``type``, and an operator
needs errors that name *their* key path (``issuers.public.directory``), not
pydantic's internal union branches. So each table is validated on its own,
with its path as prefix, and every problem is collected before we report, so
one run shows all of them. What needs more than one table (a certificate
and its issuer, its neighbours' directories) or this host (users, groups,
files) is in ``config/rules.py``.

Loading (reading the file, collecting every error, running the rules) is
``config/load.py``; this module only declares the shapes.

Secrets are only ever read from ``*_file`` keys; an inline secret is rejected
with a hint. Relative paths (and relative SQLite URLs) are resolved against
the directory holding the config file, so a config can travel with its data.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StrictBool,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from certd.config.deploy import (
    CommandDeployConfig,
    DeployConfig,
    HaproxyDeployConfig,
    KubernetesSecretDeployConfig,
    SignalDeployConfig,
    WebhookDeployConfig,
)
from certd.config.issuers import (
    AcmeIssuerConfig,
    IssuerConfig,
    LocalCAIssuerConfig,
    RateLimitsConfig,
    VaultIssuerConfig,
    default_rate_limits,
)
from certd.config.types import ConfigPath, DatabaseUrl, Duration, HostPort, Model, PositiveDuration, RuntimeSocket
from certd.pki.keys import KeyType

__all__ = [
    "AcmeIssuerConfig",
    "CertificateConfig",
    "CommandDeployConfig",
    "Config",
    "DaemonConfig",
    "DatabaseConfig",
    "DeployConfig",
    "HaproxyDeployConfig",
    "IssuerConfig",
    "KubernetesSecretDeployConfig",
    "LbCheck",
    "LocalCAIssuerConfig",
    "RateLimitsConfig",
    "SignalDeployConfig",
    "VaultIssuerConfig",
    "VerifyEndpoint",
    "WebhookDeployConfig",
    "default_rate_limits",
]

DEFAULT_DB_URL = "sqlite:////var/lib/certd/certd.db"
# Also valid as a Kubernetes label value and a URL path segment: 63 chars, alphanumeric at both ends.
NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
NAME_RULE = "name must be letters, digits, '.', '_' or '-', start and end alphanumeric (max 63)"
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class DatabaseConfig(Model):
    """Where the inventory lives; ``key_file`` encrypts private keys stored in it."""

    url: DatabaseUrl = DEFAULT_DB_URL
    key_file: ConfigPath | None = None
    busy_timeout: Duration = timedelta(seconds=30)


def _read_auth(value: Any) -> Any:
    if value is True or value is False or value == "all":
        return value
    raise ValueError('must be true, false or "all"')


def _loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _api_rules(d: DaemonConfig) -> list[tuple[str, str]]:
    """(key, problem) for an API that would be open to more than this host, or self-contradictory."""
    out: list[tuple[str, str]] = []
    if (d.api_tls_cert_file is None) != (d.api_tls_key_file is None):
        out.append(("api_tls_key_file", "api_tls_cert_file and api_tls_key_file go together"))
    if d.api_client_ca_file is not None and d.api_tls_cert_file is None:
        out.append(("api_client_ca_file", "client certificates need TLS: set api_tls_cert_file and api_tls_key_file"))
    if d.api_read_auth is not False and d.api_public_reads:
        out.append(("api_public_reads", "contradicts api_read_auth: reads are either authenticated or public"))
    if d.api_read_auth is not False and d.api_token_file is None:
        out.append(("api_read_auth", "needs api_token_file: reads would need a token that does not exist"))
    if not _loopback(d.api_listen):
        exposed = f"{d.api_listen!r} is not a loopback address, so anyone who can reach it"
        if d.api_token_file is None:
            out.append(("api_listen", f"{exposed} could renew and deploy: set api_token_file (writes then need the "
                                      "token), and api_read_auth = true or api_public_reads = true"))
        elif d.api_read_auth is False and not d.api_public_reads and d.api_client_ca_file is None:
            out.append(("api_listen", f"{exposed} could read every certificate's details: set api_read_auth = true "
                                      "(reads need the token too), or api_public_reads = true to allow it"))
    return out


class DaemonConfig(Model):
    """``certd run``: how often to scan, how many workers, where the API listens and who may call it."""

    check_interval: PositiveDuration = timedelta(minutes=5)
    workers: int = Field(16, ge=1, le=256)
    api_listen: HostPort = "127.0.0.1:8787"
    api_token_file: ConfigPath | None = None
    # true: every path but /healthz, /readyz and /metrics needs credentials; "all": those too
    api_read_auth: Annotated[bool | Literal["all"], BeforeValidator(_read_auth)] = False
    api_public_reads: StrictBool = False
    api_tls_cert_file: ConfigPath | None = None
    api_tls_key_file: ConfigPath | None = None
    api_client_ca_file: ConfigPath | None = None  # mTLS: every connection needs a client certificate from it
    role: Literal["all", "agent"] = "all"
    lease_ttl: PositiveDuration = timedelta(minutes=2)

    @model_validator(mode="after")
    def _api_exposure(self) -> DaemonConfig:
        problems = _api_rules(self)
        if problems:  # raised per key, so the message names daemon.api_listen rather than just daemon
            raise ValidationError.from_exception_data("DaemonConfig", [
                InitErrorDetails(type=PydanticCustomError("value_error", message), loc=(key,),
                                 input=getattr(self, key))
                for key, message in problems
            ])
        return self


class VerifyEndpoint(Model):
    """An endpoint that must serve the new certificate after deploy."""

    endpoint: HostPort
    sni: str | None = None
    ca_bundle: ConfigPath | None = None


class LbCheck(Model):
    """A load balancer's own health check of a server using this (backend) certificate.

    After a rotation, the whole path is proven only when the load balancer
    still accepts the backend: HAProxy keeps checking the server with its
    own ``ca-file``, SNI and ``verifyhost``. ``interval`` is the server's
    check ``inter`` (HAProxy's default is 2s): certd waits for two checks.
    """

    socket: RuntimeSocket
    backend: str
    server: str
    interval: Duration = timedelta(seconds=2)


def _mode(value: Any) -> int:
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3}", value):
        mode = int(value, 8)
    else:
        raise ValueError("mode is an octal string such as '0640'")
    if mode & 0o007:
        raise ValueError(f"mode {value} gives others access to the private key; use e.g. '0640'")
    return mode


def _valid_name(name: str) -> str:
    if "%" in name:  # an IPv6 zone id (fe80::1%eth0) names an interface, not something a certificate holds
        raise ValueError(f"{name!r} is not a DNS name, wildcard (*.example.com) or IP address (no zone ids)")
    try:
        return str(ipaddress.ip_address(name))  # compressed and lowercase: 2001:DB8::0001 is 2001:db8::1
    except ValueError:
        pass
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
    if len(name) > 253 or len(labels) < 1 or not all(_DNS_LABEL.match(lb) for lb in labels):
        raise ValueError(f"{name!r} is not a DNS name, wildcard (*.example.com) or IP address")
    if labels[-1].isdigit():  # no top-level domain is all digits (RFC 3696 section 2): 1.2.3 is an IPv4 address
        raise ValueError(f"{name!r} is not a DNS name: its last label is all digits (an IPv4 address written "
                         "short? write it in full, as a.b.c.d)")
    return name.lower()


class CertificateConfig(Model):
    """One certificate certd keeps alive."""

    issuer: str
    names: list[Annotated[str, AfterValidator(_valid_name)]] = Field(min_length=1)
    key: KeyType = KeyType.ECDSA_P256
    renew_before: Duration | None = None
    renew_fraction: float | None = Field(None, gt=0, lt=1)
    lifetime: Duration | None = None
    # Usages the issued certificate must allow (checked, the CA's profile decides): a backend that also
    # authenticates to others with it (mutual TLS) needs "clientAuth".
    ext_key_usage: list[Literal["serverAuth", "clientAuth"]] = Field(default_factory=list)
    output_dir: ConfigPath
    deploy: list[str] = Field(default_factory=list)
    verify: list[VerifyEndpoint] = Field(default_factory=list)
    lb_checks: list[LbCheck] = Field(default_factory=list)
    rollback: bool = False
    verify_timeout: Duration = timedelta(seconds=10)
    keep: int = Field(3, ge=0, le=100)
    owner: str | None = None
    group: str | None = None
    mode: Annotated[int, BeforeValidator(_mode)] = 0o600

    @model_validator(mode="after")
    def _rules(self) -> CertificateConfig:
        if len(set(self.names)) != len(self.names):
            dupes = sorted({n for n in self.names if self.names.count(n) > 1})
            raise ValueError(f"names lists {', '.join(dupes)} more than once")
        if self.renew_before is not None and self.renew_fraction is not None:
            raise ValueError("set renew_before or renew_fraction, not both")
        if self.lifetime is not None and self.lifetime < timedelta(seconds=10):
            raise ValueError("lifetime must be at least 10s")
        if self.rollback and self.keep == 0:
            raise ValueError("rollback = true switches back to the previous generation, and keep = 0 keeps none: "
                             "set keep to 1 or more, or rollback = false")
        if self.renew_fraction is not None and self.renew_fraction > 0.9:
            raise ValueError(f"renew_fraction = {self.renew_fraction} starts renewing inside the hard deadline (the "
                             "last tenth of the lifetime), where every retry is already critical: use at most 0.9")
        return self


@dataclass(frozen=True)
class Config:
    """The whole validated configuration and the file it came from."""

    path: Path
    database: DatabaseConfig
    daemon: DaemonConfig
    issuers: Mapping[str, IssuerConfig]
    certificates: Mapping[str, CertificateConfig]
    deploy: Mapping[str, DeployConfig]
    warnings: tuple[str, ...] = field(default=())
