"""Deploy targets behind one interface (``base.DeployTarget``), built from the config by type.

Each target module exposes ``build(name, config) -> DeployTarget`` and is
imported only when configured, so a host that only signals nginx never
imports a Kubernetes client.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from certd.config.model import DeployConfig
from certd.deploy.base import DeployTarget
from certd.errors import ConfigError

__all__ = ["build_target", "build_targets"]

_MODULES = {
    "signal": "signal",
    "command": "command",
    "haproxy": "haproxy",
    "kubernetes-secret": "kubernetes",
    "webhook": "webhook",
}


def build_target(name: str, config: DeployConfig) -> DeployTarget:
    """Construct the target for one ``[deploy.NAME]`` table."""
    try:
        module = importlib.import_module(f"certd.deploy.{_MODULES[config.type]}")
    except ModuleNotFoundError as exc:
        raise ConfigError(f"deploy.{name}.type: {config.type!r} targets are not available in this build") from exc
    target: DeployTarget = module.build(name, config)
    return target


def build_targets(configs: Mapping[str, DeployConfig]) -> dict[str, DeployTarget]:
    return {name: build_target(name, cfg) for name, cfg in configs.items()}
