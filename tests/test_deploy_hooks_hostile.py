"""Hooks against hostile input and bad luck: stale pid files, kernel threads, hooks that fork, leak their
environment, print bytes that are not UTF-8, or delete the files they were meant to reload.

Everything runs real processes through the pipeline; nothing inside certd is mocked.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from certd.config.load import load_config
from certd.engine.app import App
from certd.errors import ConfigError
from tests.conftest import LOCAL_CA_CONFIG, WriteConfig
from tests.servers.ports import default_signals

_PF_KTHREAD = 0x00200000


def _app(write_config: WriteConfig, target: str) -> App:
    body = '[database]\nurl = "sqlite:///{tmp}/certd.db"\n' + LOCAL_CA_CONFIG.replace(
        'output_dir = "{tmp}/out/edge"', 'output_dir = "{tmp}/out/edge"\ndeploy = ["t"]') + target
    return App.open(load_config(write_config(body)))


def _signal_table(extra: str = "") -> str:
    return f'\n[deploy.t]\ntype = "signal"\npid_file = "{{tmp}}/app.pid"\nsignal = "TERM"\n{extra}'


def _gone(pid: int, within: float = 5.0) -> bool:
    """The process no longer exists (or is a zombie waiting for init to reap it)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            if Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0] == b"Z":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    # Default dispositions: a signal certd must not send would kill it, so "it survived" means it was not sent.
    proc = subprocess.Popen(["sleep", "60"], preexec_fn=default_signals)
    yield proc
    proc.kill()
    proc.wait()


# -- signal -----------------------------------------------------------------------------------------------


def test_stale_pid_file_naming_a_newer_process_is_refused_and_the_process_survives(
    write_config: WriteConfig, tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    pid_file = tmp_path / "app.pid"
    pid_file.write_text(f"{sleeper.pid}\n")
    written = time.time() - 30  # the file is older than the process: some earlier daemon wrote it
    os.utime(pid_file, (written, written))
    app = _app(write_config, _signal_table())
    try:
        result = app.pipeline.renew("edge")
        assert (result.outcome, result.failed_step) == ("failed", "deploy"), result
        error = result.error or ""
        assert f"deploy t: pid {sleeper.pid} from {pid_file} started " in error
        assert "s after the file was written: stale pid file, not signalling" in error
        time.sleep(0.2)
        assert sleeper.poll() is None
    finally:
        app.close()


def test_kernel_thread_is_refused(write_config: WriteConfig, tmp_path: Path) -> None:
    try:
        fields = Path("/proc/2/stat").read_bytes().rpartition(b")")[2].split()
    except FileNotFoundError:
        pytest.skip("no pid 2 in this pid namespace")
    if not int(fields[6]) & _PF_KTHREAD:
        pytest.skip("pid 2 is not a kernel thread here")
    (tmp_path / "app.pid").write_text("2\n")
    app = _app(write_config, _signal_table())
    try:
        result = app.pipeline.renew("edge")
        assert (result.outcome, result.failed_step) == ("failed", "deploy"), result
        assert f"pid 2 from {tmp_path / 'app.pid'} is a kernel thread" in (result.error or "")
        assert "not signalling" in (result.error or "")
    finally:
        app.close()


def test_pid_one_is_named_as_init_and_never_signalled(write_config: WriteConfig, tmp_path: Path) -> None:
    (tmp_path / "app.pid").write_text("1\n")
    app = _app(write_config, _signal_table())
    try:
        result = app.pipeline.renew("edge")
        assert (result.outcome, result.failed_step) == ("failed", "deploy"), result
        assert f"pid file {tmp_path / 'app.pid'} names pid 1 (init): certd never signals it" in (result.error or "")
    finally:
        app.close()


@pytest.fixture
def usr1_received() -> Iterator[list[int]]:
    """SIGUSR1 to this process is recorded instead of killing it: a signal certd must not send is seen."""
    import signal

    got: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda number, _frame: got.append(number))
    yield got
    signal.signal(signal.SIGUSR1, previous)


def test_certd_never_signals_itself(write_config: WriteConfig, tmp_path: Path, usr1_received: list[int]) -> None:
    """In-process, certd's own pid is this process's: a pid file naming it is refused, nothing is sent."""
    (tmp_path / "app.pid").write_text(f"{os.getpid()}\n")
    app = _app(write_config, _signal_table().replace('signal = "TERM"', 'signal = "USR1"'))
    try:
        result = app.pipeline.renew("edge")
        assert (result.outcome, result.failed_step) == ("failed", "deploy"), result
        assert f"names pid {os.getpid()}, certd itself: certd never signals it" in (result.error or "")
    finally:
        app.close()
    time.sleep(0.2)
    assert usr1_received == []


def test_certd_never_signals_one_of_its_own_threads(write_config: WriteConfig, tmp_path: Path,
                                                   usr1_received: list[int]) -> None:
    """A thread id is a pid to kill(2), and reaches the whole process: certd's threads are certd."""
    import threading

    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    try:
        assert thread.native_id is not None and thread.native_id != os.getpid()
        (tmp_path / "app.pid").write_text(f"{thread.native_id}\n")
        app = _app(write_config, _signal_table().replace('signal = "TERM"', 'signal = "USR1"'))
        try:
            result = app.pipeline.renew("edge")
            assert (result.outcome, result.failed_step) == ("failed", "deploy"), result
            assert f"names pid {thread.native_id}, certd itself" in (result.error or "")
        finally:
            app.close()
    finally:
        stop.set()
    time.sleep(0.2)
    assert usr1_received == []


def test_certd_never_signals_the_process_that_started_it(write_config: WriteConfig, tmp_path: Path,
                                                       usr1_received: list[int]) -> None:
    """``certd renew`` as a child of this process, told to signal this process: refused, nothing sent."""
    from tests.cli import certd

    (tmp_path / "app.pid").write_text(f"{os.getpid()}\n")
    body = '[database]\nurl = "sqlite:///{tmp}/certd.db"\n' + LOCAL_CA_CONFIG.replace(
        'output_dir = "{tmp}/out/edge"', 'output_dir = "{tmp}/out/edge"\ndeploy = ["t"]') + _signal_table().replace(
        'signal = "TERM"', 'signal = "USR1"')
    proc = certd("renew", "edge", "--json", config=write_config(body), process=True)
    assert proc.returncode != 0, proc.stdout
    assert f"names pid {os.getpid()}, the process that started certd" in proc.stdout + proc.stderr
    time.sleep(0.2)
    assert usr1_received == []


def test_the_process_that_wrote_the_file_is_signalled(
    write_config: WriteConfig, tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    (tmp_path / "app.pid").write_text(f"{sleeper.pid}\n")  # after it started, as a daemon does
    app = _app(write_config, _signal_table('process_name = "sleep"\n'))
    try:
        result = app.pipeline.renew("edge")
        assert (result.outcome, result.state) == ("renewed", "deployed"), result.error
        assert sleeper.wait(timeout=5) == -15
    finally:
        app.close()


def test_process_name_mismatch_is_refused(
    write_config: WriteConfig, tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    (tmp_path / "app.pid").write_text(f"{sleeper.pid}\n")
    app = _app(write_config, _signal_table('process_name = "nginx"\n'))
    try:
        result = app.pipeline.renew("edge")
        assert (result.outcome, result.failed_step) == ("failed", "deploy"), result
        assert f"pid {sleeper.pid} from {tmp_path / 'app.pid'} is 'sleep'" in (result.error or "")
        assert "where process_name is 'nginx', not signalling" in (result.error or "")
        time.sleep(0.2)
        assert sleeper.poll() is None
    finally:
        app.close()


def test_pid_file_that_is_a_fifo_fails_without_hanging(write_config: WriteConfig, tmp_path: Path) -> None:
    """A FIFO there when the config is loaded is refused by the config itself (tests/test_bounded_reads.py);
    one that appears afterwards fails the deploy, without waiting for a writer."""
    app = _app(write_config, _signal_table())
    os.mkfifo(tmp_path / "app.pid")
    try:
        result = app.pipeline.renew("edge")
        assert (result.outcome, result.failed_step) == ("failed", "deploy"), result
        assert "is not a regular file" in (result.error or "")
    finally:
        app.close()


# -- command ----------------------------------------------------------------------------------------------


def _command_table(argv: str, extra: str = "") -> str:
    return f'\n[deploy.t]\ntype = "command"\nargv = {argv}\n{extra}'


def test_timeout_kills_the_whole_process_group(write_config: WriteConfig, tmp_path: Path) -> None:
    script = "echo $$ > {tmp}/sh.pid; sleep 30 & echo $! > {tmp}/gc.pid; sleep 30"
    app = _app(write_config, _command_table(f"[\"bash\", \"-c\", '{script}']", 'timeout = "1s"\n'))
    try:
        started = time.monotonic()
        result = app.pipeline.renew("edge")
        assert time.monotonic() - started < 15
        assert (result.outcome, result.failed_step) == ("failed", "deploy"), result
        assert "deploy t: command bash timed out after 1s" in (result.error or "")
        for name in ("sh.pid", "gc.pid"):
            pid = int((tmp_path / name).read_text())
            assert _gone(pid), f"{name}: {pid} still running"
    finally:
        app.close()


def test_hook_environment_is_built_and_its_output_redacted(
    write_config: WriteConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CERTD_TEST_SECRET_IN_PARENT", "hunter2")
    monkeypatch.setenv("CERTD_TEST_PASSED", "passed-value-42")
    script = "env > {tmp}/env.txt; env; env >&2; exit 1"
    extra = 'env = { TOKEN = "s3cret" }\npass_env = ["CERTD_TEST_PASSED", "CERTD_TEST_UNSET"]\n'
    app = _app(write_config, _command_table(f"[\"sh\", \"-c\", '{script}']", extra))
    try:
        with caplog.at_level(logging.DEBUG, logger="certd.deploy.command"):
            result = app.pipeline.renew("edge")
        assert (result.outcome, result.failed_step) == ("failed", "deploy"), result
        error = result.error or ""
        assert "deploy t: command sh exited 1" in error
        assert "\n" not in error and len(error) < 400
        for leaked in ("hunter2", "CERTD_TEST_SECRET_IN_PARENT", "s3cret", "passed-value-42"):
            assert leaked not in error
            assert all(leaked not in e.message for e in app.inventory.events("edge"))
            assert leaked not in caplog.text
        assert "TOKEN=***" in caplog.text  # the tail reached the debug log, redacted
        seen = dict(line.split("=", 1) for line in (tmp_path / "env.txt").read_text().splitlines() if "=" in line)
        assert seen["TOKEN"] == "s3cret" and seen["CERTD_TEST_PASSED"] == "passed-value-42"
        assert seen["CERTD_NAME"] == "edge" and seen["PATH"]
        assert "CERTD_TEST_SECRET_IN_PARENT" not in seen and "CERTD_TEST_UNSET" not in seen
    finally:
        app.close()


def test_error_names_only_the_last_stderr_line_truncated(write_config: WriteConfig) -> None:
    code = ('import sys; sys.stdout.write("noise\\n"); '
            'sys.stderr.write("first\\n" + "x" * 3000 + "\\n\\n"); sys.exit(3)')
    app = _app(write_config, _command_table(f"[{sys.executable!r}, \"-c\", '{code}']"))
    try:
        result = app.pipeline.renew("edge")
        error = result.error or ""
        assert f"command {sys.executable} exited 3 | output: " + "x" * 200 + "…" in error, error
        assert "first" not in error and "noise" not in error and "x" * 201 not in error
    finally:
        app.close()


def test_non_utf8_output_on_success_is_a_success(write_config: WriteConfig) -> None:
    code = 'import sys; sys.stdout.buffer.write(b"caf\\xe9 \\xff\\xfe reloaded\\n"); sys.stderr.buffer.write(b"\\x80")'
    app = _app(write_config, _command_table(f"[{sys.executable!r}, \"-c\", '{code}']"))
    try:
        result = app.pipeline.renew("edge")
        assert (result.outcome, result.state) == ("renewed", "deployed"), result.error
        done = [e.message for e in app.inventory.events("edge") if e.kind == "deploy.done"]
        assert any("exited 0 | output: caf\ufffd \ufffd\ufffd reloaded" in m for m in done), done
    finally:
        app.close()


def test_background_process_holding_the_pipes_does_not_hold_up_a_hook(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    script = "sleep 30 & echo $! > {tmp}/bg.pid; echo started"
    app = _app(write_config, _command_table(f"[\"sh\", \"-c\", '{script}']", 'timeout = "20s"\n'))
    try:
        started = time.monotonic()
        result = app.pipeline.renew("edge")
        assert time.monotonic() - started < 10
        assert (result.outcome, result.state) == ("renewed", "deployed"), result.error
    finally:
        app.close()
        pid = int((tmp_path / "bg.pid").read_text())
        os.kill(pid, 9)


@pytest.mark.parametrize(
    ("script", "file", "problem"),
    [
        ('rm "$CERTD_PRIVKEY"', "privkey.pem", "is missing"),
        (': > "$CERTD_FULLCHAIN"', "fullchain.pem", "is empty"),
        ('cat "$CERTD_OUTPUT_DIR/chain.pem" > "$CERTD_OUTPUT_DIR/cert.pem"', "cert.pem",
         "no longer holds the published content"),
        ('echo junk > "$CERTD_COMBINED"', "combined.pem", "no longer holds the published content"),
    ],
)
def test_hook_that_damages_the_published_files_fails(
    write_config: WriteConfig, tmp_path: Path, script: str, file: str, problem: str
) -> None:
    app = _app(write_config, _command_table(f"[\"sh\", \"-c\", '{script}']"))
    try:
        result = app.pipeline.renew("edge")
        assert (result.outcome, result.failed_step) == ("failed", "deploy"), result
        assert f"deploy t: after it ran, the published files changed: {tmp_path / 'out/edge' / file} {problem}" \
            in (result.error or "")
    finally:
        app.close()


def test_secret_cut_in_half_by_the_output_bound_is_still_redacted(
    write_config: WriteConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """Only the last 4 KiB of a stream are kept; the cut falls inside the secret, and its tail must not survive."""
    code = 'import os, sys; sys.stdout.write("S" + os.environ["TOKEN"] + "B" * 4088 + "\\n")'
    extra = 'env = { TOKEN = "s3cret-value-xyz" }\n'
    app = _app(write_config, _command_table(f"[{sys.executable!r}, \"-c\", '{code}']", extra))
    try:
        with caplog.at_level(logging.DEBUG, logger="certd.deploy.command"):
            result = app.pipeline.renew("edge")
        assert result.outcome == "renewed", result.error
        done = [e.message for e in app.inventory.events("edge") if e.kind == "deploy.done"]
        assert any("exited 0 | output: …***BBB" in m for m in done), done
        for kept in (*done, caplog.text):
            assert "lue-xyz" not in kept and "s3cret" not in kept
    finally:
        app.close()


def test_pass_env_names_are_validated(write_config: WriteConfig) -> None:
    with pytest.raises(ConfigError) as raised:
        _app(write_config, _command_table('["true"]', 'pass_env = ["NOT A NAME"]\n'))
    assert "pass_env" in str(raised.value)


def test_secrets_certd_holds_are_scrubbed_and_unauthenticated_reads_show_no_hook_output(
    write_config: WriteConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A hook under ``set -x`` prints the API token and a webhook secret it read itself: none of it is kept."""
    from fastapi.testclient import TestClient

    from certd.api.app import ApiState, create_api
    from certd.engine.scheduler import Scheduler
    from certd.metrics import Metrics

    token, hook_secret = "api-token-Zq81xL0p", "webhook-secret-7Hn2vK"
    (tmp_path / "api.token").write_text(token + "\n")
    (tmp_path / "hook.secret").write_text(hook_secret)
    for name in ("api.token", "hook.secret"):
        (tmp_path / name).chmod(0o600)
    script = "echo \"+ curl -H Authorization: Bearer $(cat {tmp}/api.token) -d $(cat {tmp}/hook.secret)\" >&2; exit 4"
    extra = ('\n[daemon]\napi_token_file = "{tmp}/api.token"\n'
             '\n[deploy.hook]\ntype = "webhook"\nurl = "https://127.0.0.1:9/x"\nsecret_file = "{tmp}/hook.secret"\n')
    app = _app(write_config, _command_table(f"[\"sh\", \"-c\", '{script}']") + extra)
    scheduler = Scheduler(lambda: app, app.clock, workers=1, metrics=(metrics := Metrics()))
    try:
        with caplog.at_level(logging.DEBUG):
            result = app.pipeline.renew("edge")
        assert (result.outcome, result.failed_step) == ("failed", "deploy"), result
        assert "exited 4 | output: + curl -H Authorization: Bearer *** -d ***" in (result.error or ""), result
        row = app.inventory.certificate("edge")
        stored = [row.last_error or "", *(e.message for e in app.inventory.events("edge"))]
        for leaked in (token, hook_secret):
            assert not any(leaked in text for text in stored), stored
            assert leaked not in caplog.text

        state = ApiState(app=lambda: app, scheduler=scheduler, metrics=metrics, token=lambda: token,
                         health=lambda: {"status": "ok"})
        client = TestClient(create_api(state))
        public = {c["name"]: c for c in client.get("/v1/certificates").json()["certificates"]}["edge"]
        assert "command sh exited 4" in public["last_error"] and "curl" not in public["last_error"], public
        assert "(its output: authenticated reads and `certd history`)" in public["last_error"]
        one = client.get("/v1/certificates/edge").json()
        assert "curl" not in one["last_error"]
        authed = client.get("/v1/certificates/edge", headers={"Authorization": f"Bearer {token}"})
        assert authed.status_code == 200  # reads are public here; credentials still get the whole line
        # Public reads do not check credentials, so they get the public view: the line is for the CLI and history.
        assert "curl" not in authed.json()["last_error"]
    finally:
        scheduler.shutdown()
        app.close()


def test_deploy_after_a_hook_deleted_the_files_relinks_them_before_any_target_runs(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    marker = tmp_path / "saw.txt"
    deleting = "rm -f \"$CERTD_PRIVKEY\" \"$CERTD_FULLCHAIN\""
    checking = f"test -s \"$CERTD_PRIVKEY\" && test -s \"$CERTD_FULLCHAIN\" && echo ok > {marker}"
    app = _app(write_config, _command_table(f"[\"sh\", \"-c\", '{deleting}']"))
    try:
        result = app.pipeline.renew("edge")
        assert (result.outcome, result.failed_step) == ("failed", "deploy"), result
        assert "privkey.pem is missing" in (result.error or "")
    finally:
        app.close()
    out = tmp_path / "out/edge"
    assert not (out / "privkey.pem").exists()
    config = tmp_path / "certd.toml"
    config.write_text(config.read_text().replace(deleting, checking))
    app = App.open(load_config(config))
    try:
        done = app.pipeline.deploy("edge")
        assert done.outcome == "deployed", done
        assert marker.read_text() == "ok\n"  # the hook ran with the files back in place
        repaired = [e.message for e in app.inventory.events("edge") if e.kind == "publish.repaired"]
        assert repaired and f"{out / 'privkey.pem'} is missing; {out / 'fullchain.pem'} is missing" in repaired[0]
        assert (out / "privkey.pem").is_symlink() and (out / "privkey.pem").read_bytes()
        row = app.inventory.certificate("edge")
        assert row is not None and row.last_error is None  # the deploy failure is cleared
    finally:
        app.close()


def test_deploy_of_a_never_issued_certificate_is_a_usage_error_that_records_nothing(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    from tests.test_cli import certd

    config = write_config('[database]\nurl = "sqlite:///{tmp}/certd.db"\n' + LOCAL_CA_CONFIG)
    proc = certd("deploy", "edge", config=config)
    assert proc.returncode == 2 and "nothing issued yet for edge" in proc.stderr, proc.stderr
    app = App.open(load_config(config))
    try:
        assert app.pipeline.deploy("edge").outcome == "skipped"  # the API's and the daemon's path
        row = app.inventory.certificate("edge")
        assert row is None or (row.failures == 0 and row.last_error is None and row.next_attempt_at is None)
    finally:
        app.close()
    listed = certd("deploy", "--all", config=config)
    assert listed.returncode == 0, listed.stderr
