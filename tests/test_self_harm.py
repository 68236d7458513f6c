"""Issue 19, class 7: self-harm and races — causes that are local, found before ordering, ended by a restart.

A real ``certd run`` on SQLite with a real local CA. The faults are done from outside as an operator does
them: a user deleted while the daemon runs (``userdel``), the inventory's key rotated under it (``certd db
rotate-key``). Each must fail where no certificate is spent (the renewal's plan step, before the CA), and
once the cause is gone, the restart the docs prescribe renews at once instead of after the backoff.
"""

from __future__ import annotations

import base64
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli import certd
from tests.conftest import WriteConfig, until
from tests.servers.ports import free_port
from tests.test_daemon import Daemon

USER = "certd-t7"


def _config(port: int, certs: int, extra: str = "", owner: str | None = None, key_file: Path | None = None) -> str:
    owned = f'owner = "{owner}"\n' if owner else ""
    database = f'key_file = "{key_file}"\n' if key_file else ""
    return (f'[database]\nurl = "sqlite:///{{tmp}}/certd.db"\n{database}\n'
            f'[daemon]\ncheck_interval = "2s"\napi_listen = "127.0.0.1:{port}"\n{extra}\n'
            '[issuers.local]\ntype = "local-ca"\ndir = "{tmp}/ca"\n' +
            "".join(f'\n[certificates.c{i}]\nissuer = "local"\nnames = ["c{i}.example.test"]\nlifetime = "40s"\n'
                    f'output_dir = "{{tmp}}/out/c{i}"\n{owned}' for i in range(certs)))


def _versions(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "certd.db") as conn:
        return int(conn.execute("SELECT count(*) FROM versions").fetchone()[0])


def _statuses(daemon: Daemon) -> dict[str, dict[str, object]]:
    return {d["name"]: d for d in daemon.get("/v1/certificates").json()["certificates"]}


@pytest.fixture
def user() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("useradd needs root")
    subprocess.run(["userdel", USER], capture_output=True)
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True)
    yield USER
    subprocess.run(["userdel", USER], capture_output=True)


def test_a_user_deleted_under_the_daemon_costs_no_order_and_a_restart_ends_the_backoff(
    write_config: WriteConfig, tmp_path: Path, user: str
) -> None:
    port = free_port()
    config = write_config(_config(port, 2, owner=user))
    daemon = Daemon(config, port, tmp_path / "daemon.log")
    try:
        assert until(lambda: all((tmp_path / f"out/c{i}/cert.pem").exists() for i in range(2)), 30)
        subprocess.run(["userdel", user], check=True)
        ordered = _versions(tmp_path)
        # Past the renewal time (2/3 of 40 s): every scan finds them due and must fail before the CA.
        assert until(lambda: all(d["failed_step"] == "plan" for d in _statuses(daemon).values()), 40), \
            _statuses(daemon)
        time.sleep(6)  # three more scans
        assert _versions(tmp_path) == ordered, "certificates were ordered that could not be published"
        doc = _statuses(daemon)["c0"]
        assert f"owner '{user}' is not a user on this host" in str(doc["last_error"]), doc
    finally:
        daemon.stop()
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", user], check=True)
    restarted = time.monotonic()
    daemon = Daemon(config, port, tmp_path / "daemon2.log")
    try:
        assert until(lambda: all(d["failed_step"] is None and d["status"] in ("published", "deployed", "served")
                                  for d in _statuses(daemon).values()), 15), _statuses(daemon)
        assert time.monotonic() - restarted < 15  # not after the backoff: the restart ended it
        assert "daemon started: backoff ended" in daemon.log.read_text()
    finally:
        daemon.stop()


def _key(path: Path) -> Path:
    path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    path.chmod(0o600)
    return path


def test_renewals_racing_a_key_rotation_order_nothing_and_the_prescribed_restart_renews_at_once(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    port = free_port()
    key_a, key_b = _key(tmp_path / "a.key"), _key(tmp_path / "b.key")
    config = write_config(_config(port, 4, key_file=key_a))
    daemon = Daemon(config, port, tmp_path / "daemon.log")
    try:
        assert until(lambda: all((tmp_path / f"out/c{i}/cert.pem").exists() for i in range(4)), 30)
        rotated = certd("db", "rotate-key", "--new-key-file", str(key_b), config=config, process=True)
        assert rotated.returncode == 0, rotated.stderr
        ordered = _versions(tmp_path)
        assert until(lambda: all(d["failed_step"] == "plan" for d in _statuses(daemon).values()), 40), \
            _statuses(daemon)
        assert _versions(tmp_path) == ordered, "certificates were ordered whose keys could not be sealed"
        assert "does not match the one the inventory was sealed with" in str(_statuses(daemon)["c1"]["last_error"])
    finally:
        daemon.stop()
    config.write_text(config.read_text().replace(str(key_a), str(key_b)))  # what docs/database.md prescribes
    restarted = time.monotonic()
    daemon = Daemon(config, port, tmp_path / "daemon2.log")
    try:
        assert until(lambda: all(d["failed_step"] is None and d["status"] in ("published", "deployed", "served")
                                  for d in _statuses(daemon).values()), 15), _statuses(daemon)
        assert time.monotonic() - restarted < 15
        assert all(d["status"] != "expired" for d in _statuses(daemon).values())
    finally:
        daemon.stop()
