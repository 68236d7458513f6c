"""Deploy targets behind one interface (``base.DeployTarget``), built from the config by type."""

from __future__ import annotations

from collections.abc import Mapping

from certd.config import (
    CommandDeployConfig,
    DeployConfig,
    SignalDeployConfig,
)
from certd.deploy.base import DeployTarget
from certd.errors import ConfigError

__all__ = ["build_target", "build_targets"]


def build_target(name: str, config: DeployConfig) -> DeployTarget:
    """Construct the target for one ``[deploy.NAME]`` table."""
    if isinstance(config, SignalDeployConfig):
        from certd.deploy.signal import SignalTarget

        return SignalTarget(name, config)
    if isinstance(config, CommandDeployConfig):
        from certd.deploy.command import CommandTarget

        return CommandTarget(name, config)
    raise ConfigError(f"deploy.{name}.type: {config.type!r} targets are not available in this build")


def build_targets(configs: Mapping[str, DeployConfig]) -> dict[str, DeployTarget]:
    return {name: build_target(name, cfg) for name, cfg in configs.items()}
