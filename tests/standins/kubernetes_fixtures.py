"""Pytest fixture for the Kubernetes API stand-in (register with ``-p tests.standins.kubernetes_fixtures``).

Function-scoped on purpose: every test gets an empty store, a fresh CA and token, and no leftover injected
conflicts or RBAC rules, and the server is stopped when the test ends.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.standins.kubernetes import KubernetesStandin

__all__ = ["k8s_standin"]


@pytest.fixture
def k8s_standin() -> Iterator[KubernetesStandin]:
    """A started stand-in; all namespaces allowed until the test calls ``allow_namespaces``."""
    standin = KubernetesStandin().start()
    try:
        yield standin
    finally:
        standin.stop()
