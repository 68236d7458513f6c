"""``[issuers.NAME]`` tables: ACME, Vault PKI, certd's local CA, and certd's own rate-limit budgets."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BeforeValidator,
    Field,
    field_validator,
    model_validator,
)

from certd.config.types import ConfigPath, Duration, HostPort, Model, PositiveDuration
from certd.core.durations import format_duration
from certd.pki.keys import KeyType

__all__ = [
    "ISSUER_TYPES",
    "AcmeIssuerConfig",
    "IssuerConfig",
    "LocalCAIssuerConfig",
    "RateLimitsConfig",
    "VaultIssuerConfig",
    "default_rate_limits",
]


class RateLimitsConfig(Model):
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


class _IssuerBase(Model):
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
    attempt_timeout: PositiveDuration = timedelta(minutes=10)  # one whole order, however many requests it takes

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
    attempt_timeout: PositiveDuration = timedelta(minutes=5)  # one whole issue: login, role read, sign, retries

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
ISSUER_TYPES: dict[str, type[Model]] = {
    "acme": AcmeIssuerConfig,
    "vault": VaultIssuerConfig,
    "local-ca": LocalCAIssuerConfig,
}


