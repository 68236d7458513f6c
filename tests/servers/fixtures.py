"""pytest plugin: real servers for certd's tests, each owned by a fixture and stopped even when a test fails.

A missing binary skips with the package to install (scripts/install-system-deps.sh test); anything else that goes
wrong at startup is an error with the server's log tail, never a silent pass.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, Protocol

import pytest

from tests.servers.ari import AriFront
from tests.servers.bind import BindServer
from tests.servers.haproxy import HaproxyServer
from tests.servers.nginx import NginxServer
from tests.servers.openbao import INSTALL_HINT, OpenBaoServer, bao_binary
from tests.servers.pebble import PebbleServer
from tests.servers.postgres import ENV_URL, PostgresCluster, drop_database, fresh_database, postgres_bindir


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """`timeout 600 pytest` ends with SIGTERM, which by default kills Python with no fixture teardown and would
    leave every server running; as a KeyboardInterrupt, pytest tears the fixtures down first."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def pytest_unconfigure(config: pytest.Config) -> None:
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is _interrupt:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which turns xdist_group marks into the @group the scheduler reads
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist: the tests that bind 127.0.0.1:80 (OpenBao validates HTTP-01 only there) run on one
    worker, one after another (``--dist loadgroup``), instead of finding the port taken and skipping; and the
    ``slow`` tests are handed out first, so that no worker is left running a long one alone at the end."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    for item in items:
        if "port80" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("port80"))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: same order on every worker


class _Stoppable(Protocol):
    def stop(self) -> None: ...


def require(*binaries: str, package: str) -> None:
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (scripts/install-system-deps.sh test installs {package})")


def _factory(make: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    """Shared body of the *_factory fixtures: remember every server made, stop them all in reverse order."""
    made: list[_Stoppable] = []

    def create(*args: Any, **kwargs: Any) -> Any:
        server = make(*args, **kwargs)
        made.append(server)
        return server

    try:
        yield create
    finally:
        for server in reversed(made):
            server.stop()


@pytest.fixture(scope="session")
def pebble() -> Iterator[PebbleServer]:
    """Shared Pebble with challtestsrv as DNS (every name resolves to 127.0.0.1) and the default 5% badNonce."""
    require("pebble", "pebble-challtestsrv", package="pebble")
    server = PebbleServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pebble_fresh_authz() -> Iterator[PebbleServer]:
    """Pebble that validates every order's authorizations (no reuse), for faults aimed at the challenge phase."""
    require("pebble", "pebble-challtestsrv", package="pebble")
    server = PebbleServer(extra_env={"PEBBLE_AUTHZREUSE": "0"})
    yield server
    server.stop()


@pytest.fixture
def pebble_factory() -> Iterator[Callable[..., PebbleServer]]:
    """pebble_factory(nonce_reject=5, dns_server=None, extra_env=None, certificate_validity=None) for own knobs."""
    require("pebble", "pebble-challtestsrv", package="pebble")
    yield from _factory(PebbleServer)


@pytest.fixture(scope="session")
def bind() -> Iterator[BindServer]:
    require("named", "tsig-keygen", package="bind9 bind9-utils")
    server = BindServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pebble_dns01(bind: BindServer) -> Iterator[PebbleServer]:
    """Pebble resolving through `bind`: DNS-01 sees certd's RFC 2136 TXT records; HTTP-01 names hit 127.0.0.1."""
    require("pebble", package="pebble")
    server = PebbleServer(dns_server=bind.address)
    yield server
    server.stop()


@pytest.fixture
def haproxy_factory() -> Iterator[Callable[..., HaproxyServer]]:
    """haproxy_factory(combined_pem, backend_server=None, backend_ca_file=None, backend_sni="localhost")."""
    require("haproxy", package="haproxy")
    yield from _factory(HaproxyServer)


@pytest.fixture
def nginx_factory() -> Iterator[Callable[..., NginxServer]]:
    """nginx_factory(cert_path, key_path): the files must exist first, nginx refuses to start without them."""
    require("nginx", package="nginx-light")
    yield from _factory(NginxServer)


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """CERTD_TEST_POSTGRES_URL if set (must allow CREATE DATABASE), else a throwaway cluster for the session."""
    if url := os.environ.get(ENV_URL):
        yield url
        return
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(f"no /usr/lib/postgresql/*/bin/initdb and {ENV_URL} unset (apt-get install postgresql)")
    cluster = PostgresCluster(bindir)
    yield cluster.admin_url
    cluster.stop()


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A database of its own for each test, dropped afterwards even if connections were left open."""
    url = fresh_database(postgres_admin_url)
    yield url
    drop_database(postgres_admin_url, url)


@pytest.fixture
def ari_front(pebble: PebbleServer) -> Iterator[AriFront]:
    """The session Pebble behind an RFC 9773 renewalInfo front: give clients ``ari_front.directory_url``.

    Function scope so each test starts with empty ``asked``/``replaces_seen`` records and its own windows.
    """
    front = AriFront(pebble)
    yield front
    front.stop()


def _require_openbao() -> None:
    if bao_binary() is None:
        pytest.skip(f"OpenBao not installed ({INSTALL_HINT})")


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBaoServer]:
    """Shared OpenBao (real server, unsealed, two-tier PKI, AppRole and Kubernetes auth). Never seal it: a test
    that seals or otherwise breaks the server takes its own from ``openbao_factory``."""
    _require_openbao()
    server = OpenBaoServer()
    yield server
    server.stop()


@pytest.fixture
def openbao_factory() -> Iterator[Callable[..., OpenBaoServer]]:
    """openbao_factory(): a fresh OpenBao of the test's own, stopped when the test ends."""
    _require_openbao()
    yield from _factory(OpenBaoServer)


# -- OpenBao's ACME server (tests/servers/openbao_acme.py): a second ACME implementation beside Pebble ---------

@pytest.fixture
def port80() -> None:
    """OpenBao validates HTTP-01 only on port 80: skip, saying why, when 127.0.0.1:80 cannot be bound."""
    import time

    from tests.servers.openbao_acme import port80_free

    deadline = time.monotonic() + 10  # a responder of another process's order holds it only for moments
    while (why := port80_free()) is not None and "in use" in why and time.monotonic() < deadline:
        time.sleep(0.2)
    if why is not None:
        pytest.skip(why)


def _openbao_acme(server: OpenBaoServer, mount: str, **kwargs: Any) -> Iterator[Any]:
    from tests.servers.openbao_acme import OpenBaoAcme

    acme = OpenBaoAcme(server, mount, **kwargs)
    yield acme
    acme.close()


@pytest.fixture(scope="session")
def openbao_acme(openbao: OpenBaoServer) -> Iterator[Any]:
    """ACME on the shared OpenBao's ``pki-acme`` mount (its own intermediate under ``pki-root``), no EAB."""
    yield from _openbao_acme(openbao, "pki-acme")


@pytest.fixture(scope="session")
def openbao_acme_eab(openbao: OpenBaoServer) -> Iterator[Any]:
    """ACME on ``pki-acme-eab`` with ``eab_policy=always-required``; ``new_eab()`` hands out bindings."""
    yield from _openbao_acme(openbao, "pki-acme-eab", eab_required=True)


@pytest.fixture(scope="session")
def openbao_acme_dns(openbao: OpenBaoServer, bind: BindServer) -> Iterator[Any]:
    """ACME on ``pki-acme-dns`` resolving through ``bind`` (``dns_resolver``): DNS-01 sees certd's TXT records."""
    require("named", "tsig-keygen", package="bind9 bind9-utils")
    yield from _openbao_acme(openbao, "pki-acme-dns", dns_resolver=bind.address)
