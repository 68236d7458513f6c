"""PostgreSQL for tests: an existing server from CERTD_TEST_POSTGRES_URL, else a throwaway cluster.

The throwaway cluster runs as the `postgres` OS user because PostgreSQL refuses to run as root; fsync is off
because durability of test data is worthless and it makes initdb and DDL much faster.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tests.servers.ports import (
    HOST,
    ServerError,
    default_signals,
    forget,
    free_port,
    log_tail,
    make_workdir,
    stop_at_exit,
)

ENV_URL = "CERTD_TEST_POSTGRES_URL"


def postgres_bindir() -> Path | None:
    """Newest /usr/lib/postgresql/<version>/bin with initdb (Debian keeps these off PATH)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(candidates[-1]).parent if candidates else None


class PostgresCluster:
    def __init__(self, bindir: Path, workdir: Path | None = None) -> None:
        self.bindir = bindir
        self._user = "postgres" if os.geteuid() == 0 else None
        self.workdir = workdir or make_workdir("postgres", owner=self._user)
        self._own_workdir = workdir is None
        self.datadir = self.workdir / "data"
        self.log_path = self.workdir / "postgres.log"
        self.port = free_port()
        self.admin_url = f"postgresql+psycopg://postgres@{HOST}:{self.port}/postgres"
        opts = f"-c listen_addresses={HOST} -p {self.port} -k {self.workdir} -c fsync=off -c full_page_writes=off"
        stop_at_exit(self, self.stop)
        try:
            self._pg("initdb", "-D", str(self.datadir), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
            self._pg("pg_ctl", "start", "-w", "-t", "20", "-D", str(self.datadir), "-l", str(self.log_path), "-o", opts)
        except BaseException:
            self.stop()
            raise

    def _pg(self, tool: str, *args: str) -> None:
        result = subprocess.run(
            [str(self.bindir / tool), *args],
            user=self._user,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=default_signals,  # pg_ctl start forks the postmaster that pg_ctl stop later signals
        )
        if result.returncode != 0:
            raise ServerError(
                f"{tool} failed ({result.returncode}):\n{result.stdout}{result.stderr}\n"
                f"--- {self.log_path} (tail) ---\n{log_tail(self.log_path)}"
            )

    def stop(self) -> None:
        """Fast shutdown (disconnects clients); immediate if that hangs, so no postmaster outlives the session."""
        try:
            if (self.datadir / "postmaster.pid").exists():
                try:
                    self._pg("pg_ctl", "stop", "-w", "-t", "15", "-m", "fast", "-D", str(self.datadir))
                except (ServerError, subprocess.TimeoutExpired):
                    self._pg("pg_ctl", "stop", "-w", "-t", "15", "-m", "immediate", "-D", str(self.datadir))
        finally:
            forget(self)
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)


def _admin_engine(admin_url: str) -> sa.Engine:
    return sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)


def fresh_database(admin_url: str, prefix: str = "certd_test") -> str:
    """A new, uniquely named database on the admin URL's server, so tests cannot see each other's rows."""
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    engine = _admin_engine(admin_url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    """WITH (FORCE) because a test that failed may still hold pooled connections to it."""
    name = make_url(url).database
    engine = _admin_engine(admin_url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()
