"""Shared fixtures: a config writer, the inventory on SQLite and PostgreSQL, a fake clock.

Real servers (Pebble, BIND, HAProxy, nginx, PostgreSQL, OpenBao) come from
``tests/servers/fixtures.py``; the Kubernetes stand-in from ``tests/standins/``.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certd.config.load import load_config
from certd.config.model import Config
from certd.engine.app import App

pytest_plugins = [
    "tests.servers.fixtures",
    "tests.standins.kubernetes_fixtures",
]


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current

    def advance(self, delta: timedelta) -> None:
        self.current += delta


class TickingClock(FakeClock):
    """A fake clock that moves a millisecond every time it is read, as a real one does between two reads: code
    that compares a time it computed with a ``now`` it read earlier is caught (a plain fake clock hides it)."""

    def now(self) -> datetime:
        self.current += timedelta(milliseconds=1)
        return self.current


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The inventory on both supported databases."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/certd.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/certd.db"


WriteConfig = Callable[..., Path]


def config_writer(directory: Path) -> WriteConfig:
    """Write a certd.toml into ``directory`` from a TOML body; ``{tmp}`` is replaced by ``directory``."""

    def write(body: str, *, db_url: str | None = None, name: str = "certd.toml") -> Path:
        text = textwrap.dedent(body).replace("{tmp}", str(directory))
        if db_url is not None and "[database]" not in text:
            text = f'[database]\nurl = "{db_url}"\n\n' + text
        path = directory / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    """Write a certd.toml into tmp_path from a TOML body; ``{tmp}`` is replaced by tmp_path."""
    return config_writer(tmp_path)


LOCAL_CA_CONFIG = """
[issuers.local]
type = "local-ca"
dir = "{tmp}/local-ca"

[certificates.edge]
issuer = "local"
names = ["lb.example.test", "www.example.test"]
output_dir = "{tmp}/out/edge"

[certificates.backend]
issuer = "local"
names = ["backend-1.internal", "10.0.0.5"]
key = "ecdsa-p384"
lifetime = "72h"
output_dir = "{tmp}/out/backend"
"""


@pytest.fixture
def local_config(write_config: WriteConfig, db_url: str) -> Config:
    return load_config(write_config(LOCAL_CA_CONFIG, db_url=db_url))


@pytest.fixture
def local_app(local_config: Config) -> Iterator[App]:
    app = App.open(local_config)
    yield app
    app.close()


def until(what: Callable[[], bool], within: float) -> bool:
    """Poll ``what`` every 0.2 s for up to ``within`` seconds of real time; whether it came true."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(0.2)
    return False
