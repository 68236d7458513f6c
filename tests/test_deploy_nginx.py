"""The ``signal`` and ``command`` targets against a real nginx, and the verify step catching a deploy that
"succeeded" without changing what is served."""

from __future__ import annotations

import concurrent.futures
import shutil
import time
from pathlib import Path
from typing import Any

from certd.config.load import load_config
from certd.engine.app import App
from certd.reports.views import list_doc
from tests.conftest import WriteConfig
from tests.servers.fault_proxy import FaultProxy
from tests.test_deploy_haproxy import BASE, NAME, HandshakeLoop, disk_serial, served_serial, verify_line


def _with(body: str, deploy_table: str, extra: str) -> str:
    return body.replace(
        'output_dir = "{tmp}/out/edge"\n', f'output_dir = "{{tmp}}/out/edge"\ndeploy = ["web"]\n{extra}\n'
    ) + deploy_table


def _bootstrap(write_config: WriteConfig) -> str:
    app = App.open(load_config(write_config(BASE, name="bootstrap.toml")))
    try:
        first = app.pipeline.renew("edge")
    finally:
        app.close()
    assert first.outcome == "renewed" and first.serial is not None, first
    return first.serial


def test_sighup_rotation_drops_no_handshake(nginx_factory: Any, write_config: WriteConfig, tmp_path: Path) -> None:
    first = _bootstrap(write_config)
    out = tmp_path / "out/edge"
    root = tmp_path / "local-ca/root.pem"
    nginx = nginx_factory(out / "fullchain.pem", out / "privkey.pem")  # certd's stable paths (symlinks)
    master = nginx.pid
    table = f'\n[deploy.web]\ntype = "signal"\npid_file = "{nginx.pid_file}"\nsignal = "HUP"\n'
    # Old workers may take a moment to stop accepting after SIGHUP; verify retries until verify_timeout.
    body = _with(BASE, table, verify_line(nginx.port, root) + 'verify_timeout = "30s"\n')
    app = App.open(load_config(write_config(body, name="certd.toml")))
    try:
        with HandshakeLoop(nginx.port, NAME, root) as loop:
            loop.wait_for(lambda: loop.count >= 100)
            assert loop.seen(first), loop.failures[:3]
            result = app.pipeline.renew("edge", force=True)
            assert (result.outcome, result.state) == ("renewed", "served"), result
            assert result.serial is not None and result.serial != first
            new = result.serial
            loop.wait_for(lambda: loop.seen(new))
            before = loop.count
            loop.wait_for(lambda: loop.count >= max(before + 100, 300))
        assert loop.failures == []
        assert loop.count >= 300
        assert loop.seen(new)
        assert served_serial(nginx.port) == new
        assert nginx.pid == master  # SIGHUP reloads in place: same master, new workers
        versions = {v.serial: v.state for v in app.inventory.versions("edge")}
        assert versions[new] == "served"
        deploys = [e.message for e in app.inventory.events("edge") if e.kind == "deploy.done"]
        assert any(f"web: sent SIGHUP to pid {master}" == m for m in deploys), deploys
    finally:
        app.close()


def test_deploy_that_changes_nothing_is_caught_by_verify_and_rolled_back(
    nginx_factory: Any, write_config: WriteConfig, tmp_path: Path
) -> None:
    """`true` always succeeds, and nginx serves a copy of the first generation, not certd's files: only verify
    can tell that the new certificate never reached the server."""
    first = _bootstrap(write_config)
    out = tmp_path / "out/edge"
    root = tmp_path / "local-ca/root.pem"
    copy = tmp_path / "nginx-own"
    copy.mkdir()
    shutil.copyfile(out / "fullchain.pem", copy / "fullchain.pem")
    shutil.copyfile(out / "privkey.pem", copy / "privkey.pem")
    nginx = nginx_factory(copy / "fullchain.pem", copy / "privkey.pem")
    table = '\n[deploy.web]\ntype = "command"\nargv = ["true"]\n'
    body = _with(BASE, table, verify_line(nginx.port, root) + 'verify_timeout = "3s"\nrollback = true\n')
    app = App.open(load_config(write_config(body, name="certd.toml")))
    try:
        result = app.pipeline.renew("edge", force=True)
        assert (result.outcome, result.failed_step, result.reason) == ("failed", "verify", "VerifyFailed"), result
        assert result.serial is not None and result.serial != first
        assert f"serves serial {first}, expected {result.serial}" in (result.error or "")
        assert served_serial(nginx.port) == first

        # Rollback republished the previous generation: certd's stable paths hold the first certificate again.
        assert disk_serial(out) == first
        current = app.inventory.current_version("edge")
        assert current is not None and current.serial == first
        states = {v.serial: v.state for v in app.inventory.versions("edge")}
        assert states == {first: "served", result.serial: "failed"}
        failed = next(v for v in app.inventory.versions("edge") if v.serial == result.serial)
        assert failed.failed_step == "verify"

        events = app.inventory.events("edge")
        kinds = [e.kind for e in events]
        assert "renewal.failed" in kinds and "rollback.done" in kinds and "rollback.failed" not in kinds
        failure = next(e for e in events if e.kind == "renewal.failed")
        assert failure.step == "verify" and result.serial in failure.message
        rollback = next(e for e in events if e.kind == "rollback.done")
        assert first in rollback.message
        # The deploy ran twice (new, then the rollback) and verify passed once, for the rolled-back serial.
        assert kinds.count("deploy.done") == 2
        verified = [e.message for e in events if e.kind == "verify.done"]
        assert len(verified) == 1 and f"serves serial {first}" in verified[0]
    finally:
        app.close()


def test_deployed_is_not_shown_while_verify_has_yet_to_see_the_new_certificate(
    nginx_factory: Any, write_config: WriteConfig, tmp_path: Path
) -> None:
    """Issue 18: ``deployed`` was shown for the seconds verify took, while the old certificate was still served.
    The verify endpoint is nginx behind a proxy that holds every chunk 0.4 s, so verify takes seconds; the
    status read meanwhile is ``published`` (the files are in place), then ``served`` — never ``deployed``."""
    _bootstrap(write_config)
    out = tmp_path / "out/edge"
    root = tmp_path / "local-ca/root.pem"
    nginx = nginx_factory(out / "fullchain.pem", out / "privkey.pem")
    slow = FaultProxy(nginx.port, mode="slow", delay=0.4)
    table = f'\n[deploy.web]\ntype = "signal"\npid_file = "{nginx.pid_file}"\nsignal = "HUP"\n'
    body = _with(BASE, table, verify_line(slow.port, root) + 'verify_timeout = "30s"\n')
    app = App.open(load_config(write_config(body, name="certd.toml")))
    seen: list[str] = []
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = pool.submit(app.pipeline.renew, "edge", force=True)
            while not running.done():
                seen.append({c["name"]: c["status"] for c in list_doc(app)["certificates"]}["edge"])
                time.sleep(0.05)
            result = running.result()
    finally:
        app.close()
        slow.close()
    assert (result.outcome, result.state) == ("renewed", "served"), result
    assert "deployed" not in seen, seen
    assert seen.count("published") > 5, seen  # verify did take a while, and was seen as not done
