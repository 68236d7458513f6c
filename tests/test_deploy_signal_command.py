"""The ``signal`` and ``command`` targets through the pipeline: what they do, and each way they fail."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from certd.config.load import load_config
from certd.engine.app import App
from tests.conftest import LOCAL_CA_CONFIG, WriteConfig
from tests.servers.ports import default_signals


def _app(write_config: WriteConfig, target: str) -> App:
    body = '[database]\nurl = "sqlite:///{tmp}/certd.db"\n' + LOCAL_CA_CONFIG.replace('output_dir = "{tmp}/out/edge"',
                                   'output_dir = "{tmp}/out/edge"\ndeploy = ["t"]') + target
    return App.open(load_config(write_config(body)))


@pytest.fixture
def hup_catcher(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A real process that records every SIGHUP it gets (as nginx would re-read its files)."""
    marker = tmp_path / "hups"
    code = ("import signal, sys, time\n"
            f"def hup(*_):\n    open({str(marker)!r}, 'a').write('hup\\n')\n"
            "signal.signal(signal.SIGHUP, hup)\nprint('ready', flush=True)\n"
            "while True: time.sleep(0.1)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, preexec_fn=default_signals)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    yield proc, marker
    proc.kill()
    proc.wait()


def test_signal_reaches_the_process(write_config: WriteConfig, tmp_path: Path,
                                    hup_catcher: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, marker = hup_catcher
    (tmp_path / "app.pid").write_text(f"{proc.pid}\n")
    app = _app(write_config, '\n[deploy.t]\ntype = "signal"\npid_file = "{tmp}/app.pid"\n')
    try:
        result = app.pipeline.renew("edge")
        assert (result.outcome, result.state) == ("renewed", "deployed"), result.error
        deadline = time.monotonic() + 5
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.read_text() == "hup\n"
        assert any(f"sent SIGHUP to pid {proc.pid}" in e.message for e in app.inventory.events("edge"))
    finally:
        app.close()


def test_missing_pid_file_is_pending_on_first_start_and_a_dead_pid_fails_later(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    app = _app(write_config, '\n[deploy.t]\ntype = "signal"\npid_file = "{tmp}/app.pid"\n')
    try:
        first = app.pipeline.renew("edge")  # nothing runs yet: published, deploy pending, not a failure
        assert (first.outcome, first.state, first.reason) == ("renewed", "published", "DeployPending"), first
        assert any(f"pid file {tmp_path}/app.pid does not exist" in e.message for e in app.inventory.events("edge")
                   if e.kind == "deploy.pending")
        # SIGHUP's default action must end it, also when the suite runs under nohup (SIGHUP ignored).
        server = subprocess.Popen(["sleep", "60"], preexec_fn=default_signals)
        try:
            (tmp_path / "app.pid").write_text(str(server.pid))
            done = app.pipeline.deploy("edge")
            assert (done.outcome, done.state) == ("deployed", "deployed"), done
            assert server.wait(timeout=10) == -signal.SIGHUP
        finally:
            server.kill()
        dead = subprocess.Popen(["true"], preexec_fn=default_signals)
        dead.wait()
        (tmp_path / "app.pid").write_text(str(dead.pid))
        gone = app.pipeline.renew("edge", force=True)  # it was deployed before: now a server down is a failure
        assert (gone.outcome, gone.failed_step) == ("failed", "deploy")
        assert f"process {dead.pid}" in (gone.error or "") and "is not running" in (gone.error or "")
        (tmp_path / "app.pid").unlink()
        missing = app.pipeline.renew("edge", force=True)
        assert (missing.outcome, missing.failed_step) == ("failed", "deploy")
        assert f"deploy t: pid file {tmp_path}/app.pid does not exist" in (missing.error or "")
    finally:
        app.close()


def test_command_gets_the_environment_and_its_output_is_recorded(write_config: WriteConfig, tmp_path: Path) -> None:
    script = 'echo "$CERTD_NAME $CERTD_SERIAL $CERTD_OUTPUT_DIR" > {tmp}/seen; echo reloaded-ok'
    app = _app(write_config, f'\n[deploy.t]\ntype = "command"\nargv = ["sh", "-c", \'{script}\']\n')
    try:
        result = app.pipeline.renew("edge")
        assert result.outcome == "renewed", result.error
        assert (tmp_path / "seen").read_text().split() == ["edge", str(result.serial), str(tmp_path / "out/edge")]
        assert any("exited 0 | output: reloaded-ok" in e.message for e in app.inventory.events("edge"))
    finally:
        app.close()


def test_command_that_hangs_is_killed_at_its_timeout(write_config: WriteConfig, tmp_path: Path) -> None:
    app = _app(write_config, '\n[deploy.t]\ntype = "command"\nargv = ["sleep", "30"]\ntimeout = "1s"\n')
    try:
        started = time.monotonic()
        result = app.pipeline.renew("edge")
        assert time.monotonic() - started < 25  # bounded by the timeout, not by the command
        assert (result.outcome, result.failed_step) == ("failed", "deploy")
        assert "deploy t: command sleep timed out after 1s" in (result.error or "")
    finally:
        app.close()
