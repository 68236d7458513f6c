"""``[deploy.NAME]`` tables: how each kind of server is made to load a new certificate."""

from __future__ import annotations

import signal
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from certd.config.types import ConfigPath, Duration, Model, RuntimeSocket

__all__ = [
    "DEPLOY_TYPES",
    "CommandDeployConfig",
    "DeployConfig",
    "HaproxyDeployConfig",
    "KubernetesSecretDeployConfig",
    "SignalDeployConfig",
    "WebhookDeployConfig",
]


class HaproxyDeployConfig(Model):
    """HAProxy runtime API: ``set ssl cert`` + ``commit ssl cert``, no reload."""

    type: Literal["haproxy"]
    socket: RuntimeSocket
    cert: ConfigPath
    crt_list: ConfigPath | None = None
    # The ca-file HAProxy's server lines pin (an issuer's bundle_file): pushed live when the bundle changes.
    ca_file: ConfigPath | None = None
    timeout: Duration = timedelta(seconds=10)


class SignalDeployConfig(Model):
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


class CommandDeployConfig(Model):
    """A command run without a shell, with CERTD_* variables in its environment."""

    type: Literal["command"]
    argv: list[str] = Field(min_length=1)
    timeout: Duration = timedelta(seconds=60)
    env: dict[str, str] = Field(default_factory=dict)
    pass_env: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = Field(default_factory=list)


class KubernetesSecretDeployConfig(Model):
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


class WebhookDeployConfig(Model):
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
DEPLOY_TYPES: dict[str, type[Model]] = {
    "haproxy": HaproxyDeployConfig,
    "signal": SignalDeployConfig,
    "command": CommandDeployConfig,
    "kubernetes-secret": KubernetesSecretDeployConfig,
    "webhook": WebhookDeployConfig,
}


