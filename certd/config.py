"""TOML configuration, validated into frozen, typed models.

Why a hand-driven loader around pydantic rather than one big model: the
issuer and deploy tables are unions picked by ``type``, and an operator
needs errors that name *their* key path (``issuers.public.directory``), not
pydantic's internal union branches. So each table is validated on its own,
with its path as prefix, and every problem is collected before we report, so
one run shows all of them. What needs more than one table (a certificate
and its issuer, its neighbours' directories) or this host (users, groups,
files) is in ``config_rules.py``.

Secrets are only ever read from ``*_file`` keys; an inline secret is rejected
with a hint. Relative paths (and relative SQLite URLs) are resolved against
the directory holding the config file, so a config can travel with its data.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from certd.config_rules import check_files, check_secret_modes, cross_check, key_file_rules
from certd.durations import format_duration, parse_duration
from certd.errors import ConfigError
from certd.keys import KeyType

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
    "check_files",
    "check_secret_modes",
    "default_config_path",
    "default_rate_limits",
    "load_config",
]

DEFAULT_DB_URL = "sqlite:////var/lib/certd/certd.db"
# Also valid as a Kubernetes label value and a URL path segment: 63 chars, alphanumeric at both ends.
_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
_NAME_RULE = "name must be letters, digits, '.', '_' or '-', start and end alphanumeric (max 63)"
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_SECRET_HINTS = {
    "token": "token_file",
    "secret_id": "secret_id_file",
    "role_id": "role_id_file",
    "tsig_secret": "tsig_secret_file",
    "eab_hmac_key": "eab_hmac_key_file",
    "secret": "secret_file",
    "api_token": "api_token_file",
    "password": "a *_file key",
}


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError("durations are strings such as '90s', '5m', '12h' or '30d'")
    return parse_duration(value)


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError(f"must be longer than 0s, got {format_duration(value)}")
    return value


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base")
    value = value.expanduser()
    if base is not None and not value.is_absolute():
        return Path(base) / value
    return value


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:8787)")
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]
PositiveDuration = Annotated[timedelta, BeforeValidator(_duration), AfterValidator(_positive)]
ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]
HostPort = Annotated[str, AfterValidator(_host_port)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseConfig(_Model):
    """Where the inventory lives; ``key_file`` encrypts private keys stored in it."""

    url: str = DEFAULT_DB_URL
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


class DaemonConfig(_Model):
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


class RateLimitsConfig(_Model):
    """certd's own issuance budget per issuer, so a fleet never hits the CA's limits.

    The field defaults are Let's Encrypt's published production limits: 50
    certificates per registered domain per 7 days, 5 duplicate certificates
    (same set of names) per 7 days, 300 new orders per account per 3 hours.
    ARI renewals (orders with ``replaces``) are exempt, as they are at Let's
    Encrypt. Which issuers get a budget at all is decided by
    ``default_rate_limits``: a budget is a guess at someone else's limits, so
    certd only guesses where the CA has published them.
    """

    certificates_per_domain: int | None = Field(default=50, ge=1)
    window: Duration = timedelta(days=7)
    duplicate_certificates: int | None = Field(default=5, ge=1)
    new_orders: int | None = Field(default=300, ge=1)
    orders_window: Duration = timedelta(hours=3)


# Let's Encrypt's published limits (letsencrypt.org/docs/rate-limits, staging-environment).
_LETSENCRYPT = {
    "acme-v02.api.letsencrypt.org": RateLimitsConfig(),
    "acme-staging-v02.api.letsencrypt.org": RateLimitsConfig(
        certificates_per_domain=30000, duplicate_certificates=30000, new_orders=1500
    ),
}


def default_rate_limits(directory: str) -> RateLimitsConfig | None:
    """The budget an ACME directory gets when ``rate_limits`` is not set: Let's Encrypt's, or none."""
    host = directory.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0].lower()
    return _LETSENCRYPT.get(host)


def _rate_limits(value: Any) -> Any:
    """``rate_limits = false`` switches a budget off (TOML has no null); ``true`` is not a budget."""
    if value is False:
        return None
    if value is True:
        raise ValueError("rate_limits is a table of limits, or false to switch the budget off")
    return value


class _IssuerBase(_Model):
    bundle_file: ConfigPath | None = None
    rate_limits: Annotated[RateLimitsConfig | None, BeforeValidator(_rate_limits)] = None


class AcmeIssuerConfig(_IssuerBase):
    """An ACME CA (RFC 8555), e.g. Let's Encrypt; agreeing to its terms is implied."""

    type: Literal["acme"]
    directory: str
    email: str | None = None
    ca_bundle: ConfigPath | None = None
    roots: ConfigPath | None = None
    challenge: Literal["http-01", "dns-01"] = "http-01"
    http01_listen: HostPort | None = None
    http01_webroot: ConfigPath | None = None
    dns_server: HostPort | None = None
    tsig_key_name: str | None = None
    tsig_secret_file: ConfigPath | None = None
    tsig_algorithm: str = "hmac-sha256"
    dns_propagation_timeout: Duration = timedelta(seconds=60)
    profile: str | None = None
    eab_kid: str | None = None
    eab_hmac_key_file: ConfigPath | None = None
    preferred_chain: str | None = None
    timeout: Duration = timedelta(seconds=30)

    @model_validator(mode="before")
    @classmethod
    def _default_budget(cls, data: Any) -> Any:
        if isinstance(data, dict) and "rate_limits" not in data and isinstance(data.get("directory"), str):
            data = {**data, "rate_limits": default_rate_limits(data["directory"])}
        return data

    @field_validator("directory")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("https://", "http://")):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v

    @model_validator(mode="after")
    def _challenge_keys(self) -> AcmeIssuerConfig:
        if self.challenge == "http-01" and self.http01_listen and self.http01_webroot:
            raise ValueError("set http01_listen or http01_webroot, not both")
        if self.challenge == "dns-01" and not self.dns_server:
            raise ValueError("challenge = 'dns-01' needs dns_server (RFC 2136 primary, HOST:PORT)")
        if bool(self.tsig_key_name) != bool(self.tsig_secret_file):
            raise ValueError("tsig_key_name and tsig_secret_file go together")
        if bool(self.eab_kid) != bool(self.eab_hmac_key_file):
            raise ValueError("eab_kid and eab_hmac_key_file go together")
        return self

    @property
    def http01_address(self) -> str:
        """Where the standalone responder listens when no webroot is set."""
        return self.http01_listen or "0.0.0.0:80"


class VaultIssuerConfig(_IssuerBase):
    """HashiCorp Vault's PKI secrets engine."""

    type: Literal["vault"]
    url: str
    ca_bundle: ConfigPath | None = None
    roots: ConfigPath | None = None
    mount: str = "pki"
    role: str
    auth: Literal["token", "approle", "kubernetes"] = "token"
    token_file: ConfigPath | None = None
    role_id_file: ConfigPath | None = None
    secret_id_file: ConfigPath | None = None
    approle_mount: str = "approle"
    kubernetes_role: str | None = None
    kubernetes_mount: str = "kubernetes"
    jwt_file: ConfigPath = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    namespace: str | None = None
    vault_generates_key: bool = False
    issuer_ref: str | None = None
    timeout: Duration = timedelta(seconds=30)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("https://", "http://")):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _auth_keys(self) -> VaultIssuerConfig:
        if self.auth == "token" and not self.token_file:
            raise ValueError("auth = 'token' needs token_file")
        if self.auth == "approle" and not (self.role_id_file and self.secret_id_file):
            raise ValueError("auth = 'approle' needs role_id_file and secret_id_file")
        if self.auth == "kubernetes" and not self.kubernetes_role:
            raise ValueError("auth = 'kubernetes' needs kubernetes_role")
        return self


class LocalCAIssuerConfig(_IssuerBase):
    """certd's own CA: created on first use in ``dir``; its root is the pinned root."""

    # How long the intermediate (which signs every leaf) is valid from its creation. No leaf can
    # outlive it: longer lifetimes are refused here, and by the CA once its intermediate has aged.
    intermediate_lifetime: ClassVar[timedelta] = timedelta(days=1825)

    type: Literal["local-ca"]
    dir: ConfigPath
    key: KeyType = KeyType.ECDSA_P256
    default_lifetime: Duration = timedelta(days=90)
    common_name: str = "certd local CA"

    @field_validator("default_lifetime")
    @classmethod
    def _signable(cls, v: timedelta) -> timedelta:
        if v >= cls.intermediate_lifetime:
            raise ValueError(
                f"{format_duration(v)} is too long for this CA: its intermediate is valid for "
                f"{format_duration(cls.intermediate_lifetime)} and no certificate can outlive it"
            )
        return v


IssuerConfig = AcmeIssuerConfig | VaultIssuerConfig | LocalCAIssuerConfig
_ISSUER_TYPES: dict[str, type[_Model]] = {
    "acme": AcmeIssuerConfig,
    "vault": VaultIssuerConfig,
    "local-ca": LocalCAIssuerConfig,
}


class HaproxyDeployConfig(_Model):
    """HAProxy runtime API: ``set ssl cert`` + ``commit ssl cert``, no reload."""

    type: Literal["haproxy"]
    socket: str
    cert: ConfigPath
    crt_list: ConfigPath | None = None
    # The ca-file HAProxy's server lines pin (an issuer's bundle_file): pushed live when the bundle changes.
    ca_file: ConfigPath | None = None
    timeout: Duration = timedelta(seconds=10)


class SignalDeployConfig(_Model):
    """A signal to a process (by pid file) or ``systemctl reload`` of a unit."""

    type: Literal["signal"]
    pid_file: ConfigPath | None = None
    unit: str | None = None
    signal: str = "HUP"
    timeout: Duration = timedelta(seconds=10)
    process_name: str | None = Field(default=None, min_length=1)  # pid_file only: /proc/<pid>/comm or argv[0]

    @model_validator(mode="after")
    def _one_target(self) -> SignalDeployConfig:
        if bool(self.pid_file) == bool(self.unit):
            raise ValueError("set exactly one of pid_file and unit")
        return self

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, v: str) -> str:
        """``HUP`` or ``SIGHUP`` in any case, as the target accepts it; else every command would fail."""
        name = v.upper() if v.upper().startswith("SIG") else "SIG" + v.upper()
        if name not in signal.Signals.__members__:
            raise ValueError(f"unknown signal {v!r} (e.g. HUP, USR1, TERM)")
        return v


class CommandDeployConfig(_Model):
    """A command run without a shell, with CERTD_* variables in its environment."""

    type: Literal["command"]
    argv: list[str] = Field(min_length=1)
    timeout: Duration = timedelta(seconds=60)
    env: dict[str, str] = Field(default_factory=dict)
    pass_env: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = Field(default_factory=list)


class KubernetesSecretDeployConfig(_Model):
    """A ``kubernetes.io/tls`` Secret, created or updated with resourceVersion checks."""

    type: Literal["kubernetes-secret"]
    namespace: str
    name: str
    kubeconfig: ConfigPath | None = None
    context: str | None = None
    include_ca: bool = True
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    timeout: Duration = timedelta(seconds=10)


class WebhookDeployConfig(_Model):
    """An HMAC-signed JSON POST announcing the new certificate."""

    type: Literal["webhook"]
    url: str
    secret_file: ConfigPath
    ca_bundle: ConfigPath | None = None
    timeout: Duration = timedelta(seconds=10)
    retries: int = Field(3, ge=0, le=10)


DeployConfig = (
    HaproxyDeployConfig
    | SignalDeployConfig
    | CommandDeployConfig
    | KubernetesSecretDeployConfig
    | WebhookDeployConfig
)
_DEPLOY_TYPES: dict[str, type[_Model]] = {
    "haproxy": HaproxyDeployConfig,
    "signal": SignalDeployConfig,
    "command": CommandDeployConfig,
    "kubernetes-secret": KubernetesSecretDeployConfig,
    "webhook": WebhookDeployConfig,
}


class VerifyEndpoint(_Model):
    """An endpoint that must serve the new certificate after deploy."""

    endpoint: HostPort
    sni: str | None = None
    ca_bundle: ConfigPath | None = None


class LbCheck(_Model):
    """A load balancer's own health check of a server using this (backend) certificate.

    After a rotation, the whole path is proven only when the load balancer
    still accepts the backend: HAProxy keeps checking the server with its
    own ``ca-file``, SNI and ``verifyhost``. ``interval`` is the server's
    check ``inter`` (HAProxy's default is 2s): certd waits for two checks.
    """

    socket: str
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
    return name.lower()


class CertificateConfig(_Model):
    """One certificate certd keeps alive."""

    issuer: str
    names: list[Annotated[str, AfterValidator(_valid_name)]] = Field(min_length=1)
    key: KeyType = KeyType.ECDSA_P256
    renew_before: Duration | None = None
    renew_fraction: float | None = Field(None, gt=0, lt=1)
    lifetime: Duration | None = None
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


def default_config_path() -> Path:
    """``$CERTD_CONFIG``, else ``./certd.toml``."""
    return Path(os.environ.get("CERTD_CONFIG") or "certd.toml")


def _format_errors(path: Path, prefix: str, exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1]) if err["loc"] else ""
            hint = _SECRET_HINTS.get(key)
            msg = f"unknown key; secrets are read from files: use {hint}" if hint else "unknown key"
        elif err["type"] == "missing":
            msg = "missing required key"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        out.append(f"{path}: {loc}: {msg}")
    return out


def _validate(
    path: Path, prefix: str, model: type[_Model], data: Any, errors: list[str], base: Path
) -> Any:
    try:
        return model.model_validate(data, context={"base": base})
    except ValidationError as exc:
        errors.extend(_format_errors(path, prefix, exc))
        return None


def _typed_tables(
    path: Path, section: str, raw: Any, kinds: dict[str, type[_Model]], errors: list[str], base: Path
) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errors.append(f"{path}: {section}: must be a table of named entries")
        return {}
    out: dict[str, Any] = {}
    for name, table in raw.items():
        where = f"{section}.{name}"
        if not _NAME_RE.match(name):
            errors.append(f"{path}: {where}: {_NAME_RULE}")
            continue
        if not isinstance(table, dict):
            errors.append(f"{path}: {where}: must be a table")
            continue
        kind = table.get("type")
        if kind not in kinds:
            errors.append(f"{path}: {where}.type: must be one of {', '.join(sorted(kinds))}, got {kind!r}")
            continue
        value = _validate(path, where, kinds[kind], table, errors, base)
        if value is not None:
            out[name] = value
    return out


def _resolve_sqlite(url: str, base: Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + str((base / url[len(prefix) :]).resolve())
    return url


def _broken(raw: Any, valid: Mapping[str, Any]) -> set[str]:
    """Named tables present in the file that failed their own validation (and were reported)."""
    return set(raw) - set(valid) if isinstance(raw, dict) else set()


def load_config(path: Path | str) -> Config:
    """Load and validate; raise ``ConfigError`` listing every problem found."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from exc
    base = path.resolve().parent
    errors: list[str] = []
    known = {"database", "daemon", "issuers", "certificates", "deploy"}
    errors.extend(f"{path}: {key}: unknown section" for key in sorted(set(raw) - known))
    database = _validate(path, "database", DatabaseConfig, raw.get("database", {}), errors, base)
    daemon = _validate(path, "daemon", DaemonConfig, raw.get("daemon", {}), errors, base)
    issuers = _typed_tables(path, "issuers", raw.get("issuers"), _ISSUER_TYPES, errors, base)
    deploys = _typed_tables(path, "deploy", raw.get("deploy"), _DEPLOY_TYPES, errors, base)
    certs: dict[str, CertificateConfig] = {}
    raw_certs = raw.get("certificates", {})
    if not isinstance(raw_certs, dict):
        errors.append(f"{path}: certificates: must be a table of named entries")
        raw_certs = {}
    for name, table in raw_certs.items():
        if not _NAME_RE.match(name):
            errors.append(f"{path}: certificates.{name}: {_NAME_RULE}")
            continue
        cert = _validate(path, f"certificates.{name}", CertificateConfig, table, errors, base)
        if cert is not None:
            certs[name] = cert
    errors += cross_check(
        path, issuers, certs, deploys,
        broken_issuers=_broken(raw.get("issuers"), issuers), broken_deploys=_broken(raw.get("deploy"), deploys),
    )
    if isinstance(database, DatabaseConfig):
        errors += key_file_rules(path, database.key_file)
    if errors:
        raise ConfigError("\n".join(errors))
    assert isinstance(database, DatabaseConfig) and isinstance(daemon, DaemonConfig)
    database = database.model_copy(update={"url": _resolve_sqlite(database.url, base)})
    return Config(
        path=path, database=database, daemon=daemon, issuers=issuers, certificates=certs, deploy=deploys
    )
