"""``certd run`` as a real process: renews on its own, serves the API, reloads, stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.cli import certd
from tests.conftest import WriteConfig
from tests.servers.ports import default_signals, free_port

REPO = Path(__file__).resolve().parent.parent
TOKEN = "daemon-test-token"


def _config(port: int, hook_sleep: float = 0) -> str:
    return f"""
[daemon]
check_interval = "2s"
workers = 4
api_listen = "127.0.0.1:{port}"
api_token_file = "{{tmp}}/api.token"

[issuers.local]
type = "local-ca"
dir = "{{tmp}}/ca"

[certificates.short]
issuer = "local"
names = ["short.example.test"]
lifetime = "20s"
output_dir = "{{tmp}}/out/short"

[certificates.slow]
issuer = "local"
names = ["slow.example.test"]
output_dir = "{{tmp}}/out/slow"
deploy = ["slow-hook"]

[deploy.slow-hook]
type = "command"
argv = ["sleep", "{hook_sleep}"]
"""


def _both(preexec: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        default_signals()
        preexec()
    return run


class Daemon:
    """``certd run`` as a child process; ``tls`` holds requests' ``verify``/``cert`` for an HTTPS API."""

    def __init__(self, config: Path, port: int, log: Path, env: dict[str, str] | None = None,
                 tls: dict[str, Any] | None = None, preexec: Callable[[], None] | None = None) -> None:
        self.tls = tls or {}
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        self._log = log.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "certd", "-c", str(config), "run"], cwd=REPO,
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=default_signals if preexec is None else _both(preexec))
        self.log = log
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:  # 401: up, with api_read_auth = "all"
                if requests.get(f"{self.url}/healthz", timeout=1, **self.tls).status_code in (200, 401, 503):
                    return
            except requests.ConnectionError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError(f"certd run did not come up: {log.read_text()[-2000:]}")

    def get(self, path: str, **kwargs: Any) -> Any:
        return requests.get(self.url + path, timeout=5, **(self.tls | kwargs))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def daemon(write_config: WriteConfig, db_url: str, tmp_path: Path) -> Iterator[Daemon]:
    (tmp_path / "api.token").write_text(TOKEN + "\n")
    port = free_port()
    config = write_config(_config(port, hook_sleep=3), db_url=db_url)
    d = Daemon(config, port, tmp_path / "daemon.log")
    yield d
    d.stop()


def test_renews_short_lived_certificates_on_its_own(daemon: Daemon, tmp_path: Path) -> None:
    serials: list[str] = []
    deadline = time.monotonic() + 60
    while len(serials) < 3 and time.monotonic() < deadline:
        doc = daemon.get("/v1/certificates/short").json()
        if doc["serial"] and (not serials or serials[-1] != doc["serial"]):
            serials.append(doc["serial"])
        time.sleep(0.5)
    assert len(serials) >= 3, daemon.log.read_text()[-3000:]
    metrics = daemon.get("/metrics").text
    line = next(m for m in metrics.splitlines()
                if m.startswith('certd_renewals_total{issuer="local",name="short",result="success"}'))
    assert float(line.split()[-1]) >= 2
    assert "certd_certificate_expiration_timestamp_seconds{name=\"short\"}" in metrics
    health = daemon.get("/healthz").json()
    assert health["status"] == "ok" and health["database"] and health["scheduler"]
    ready = daemon.get("/readyz")  # the estate: nothing expired or critical while the daemon keeps renewing
    assert ready.status_code == 200 and ready.json()["status"] == "ok", ready.text
    assert daemon.stop() == 0
    assert "stopping" in daemon.log.read_text()


def test_twenty_posts_and_a_cli_renew_make_one_version(daemon: Daemon, tmp_path: Path) -> None:
    # The first renewal of "slow" (its deploy hook sleeps 3 s) is done by the daemon's first scan.
    deadline = time.monotonic() + 30
    while daemon.get("/v1/certificates/slow").json()["status"] != "deployed" and time.monotonic() < deadline:
        time.sleep(0.2)
    history = ("history", "slow", "--json")
    before = len(json.loads(certd(*history, config=tmp_path / "certd.toml", check=True).stdout)["versions"])
    cli = subprocess.Popen([sys.executable, "-m", "certd", "-c", str(tmp_path / "certd.toml"), "renew", "slow",
                            "--force", "--json"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    barrier = threading.Barrier(20)
    codes: list[int] = []

    def post() -> None:
        barrier.wait()
        codes.append(requests.post(f"{daemon.url}/v1/certificates/slow/renew",
                                   headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).status_code)

    threads = [threading.Thread(target=post) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out, err = cli.communicate(timeout=120)
    assert codes == [202] * 20
    assert cli.returncode == 0, err
    deadline = time.monotonic() + 30
    while daemon.get("/v1/certificates/slow").json()["status"] != "deployed" and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    after = json.loads(certd(*history, config=tmp_path / "certd.toml", check=True).stdout)
    assert len(after["versions"]) == before + 1, after["versions"]
    assert json.loads(out)["results"][0]["serial"] == after["versions"][0]["serial"]


def test_sighup_with_a_broken_config_keeps_running(daemon: Daemon, tmp_path: Path) -> None:
    config = tmp_path / "certd.toml"
    good = config.read_text()
    config.write_text(good.replace('lifetime = "20s"', 'lifetime = "20 seconds"'))
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30  # a reload on a busy machine
    while daemon.get("/healthz").status_code != 503 and time.monotonic() < deadline:
        time.sleep(0.1)
    health = daemon.get("/healthz")
    assert health.status_code == 503
    assert "certificates.short.lifetime" in health.json()["config_error"]
    assert daemon.get("/v1/certificates/short").status_code == 200
    config.write_text(good)
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30  # a reload on a busy machine
    while daemon.get("/healthz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daemon.get("/healthz").json()["config_error"] is None
    assert daemon.stop() == 0


def test_systemd_notify_ready_and_watchdog(write_config: WriteConfig, sqlite_url: str, tmp_path: Path) -> None:
    (tmp_path / "api.token").write_text(TOKEN)
    port = free_port()
    config = write_config(_config(port), db_url=sqlite_url)
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(20)
        env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="1000000")
        d = Daemon(config, port, tmp_path / "daemon.log", env=env)
        try:
            messages = {sock.recv(4096).decode() for _ in range(3)}
        finally:
            assert d.stop() == 0
    assert any("READY=1" in m for m in messages)
    assert "WATCHDOG=1" in messages
