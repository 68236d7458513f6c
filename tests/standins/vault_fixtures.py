"""Pytest fixtures for the Vault stand-in (load with ``-p tests.standins.vault_fixtures`` or a conftest).

Function-scoped on purpose: tests seal, expire tokens and inject faults, so
sharing one server between tests would make their outcomes depend on order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.standins.vault import VaultStandin


@pytest.fixture
def vault_standin_factory() -> Iterator[Callable[..., VaultStandin]]:
    """Start stand-ins with custom settings (``namespace=``, ``tls=``, ...); all stopped afterwards."""
    started: list[VaultStandin] = []

    def make(**kwargs: Any) -> VaultStandin:
        vault = VaultStandin(**kwargs).start()
        started.append(vault)
        return vault

    yield make
    for vault in started:
        vault.stop()


@pytest.fixture
def vault_standin(vault_standin_factory: Callable[..., VaultStandin]) -> VaultStandin:
    """A started HTTPS stand-in in the root namespace; verify it with ``ca_bundle_path``."""
    return vault_standin_factory(tls=True)
