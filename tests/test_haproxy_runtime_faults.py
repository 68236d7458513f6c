"""HAProxy's runtime socket misbehaving, through a fault proxy in front of a real HAProxy (issue 18).

- "Operations on certificates are currently locked!" is HAProxy being busy, not a refusal: retried briefly,
  the rotation goes through, no rollback and no new order.
- HAProxy dying on a runtime command (seen with 2.6): the deploy fails naming a crashed HAProxy, the
  renewal is recorded as failed with its backoff; never a success.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from certd.core.status import Status
from certd.reports.views import list_doc
from tests.conftest import WriteConfig
from tests.servers.haproxy import HaproxyServer
from tests.servers.runtime_proxy import LOCKED, RuntimeProxy
from tests.test_deploy_haproxy import BASE, bootstrapped, haproxy_target, open_app, served_serial, with_target

__all__ = ["bootstrapped"]  # the fixture, re-exported for pytest


def test_a_locked_answer_is_retried_and_the_rotation_goes_through(
    bootstrapped: str, haproxy_factory: Any, write_config: WriteConfig, tmp_path: Path
) -> None:
    out = tmp_path / "out/edge"
    server: HaproxyServer = haproxy_factory(out / "combined.pem")
    proxy = RuntimeProxy(server.socket, tmp_path / "proxy.sock")
    proxy.answer_next("set ssl cert", LOCKED, times=2)
    proxy.answer_next("commit ssl cert", LOCKED, times=1)
    app = open_app(write_config, with_target(BASE, haproxy_target(proxy.path, out / "combined.pem", "5s")))
    try:
        result = app.pipeline.renew("edge", force=True)
        assert (result.outcome, result.state) == ("renewed", "deployed"), result
        assert served_serial(server.port) == result.serial != bootstrapped
        assert sum(c.startswith("set ssl cert") for c in proxy.commands) == 3
        assert sum(c.startswith("commit ssl cert") for c in proxy.commands) == 2
        assert not any(e.kind == "rollback.done" for e in app.inventory.events("edge"))
    finally:
        app.close()
        proxy.close()


def test_haproxy_dying_on_a_command_fails_the_renewal_naming_it(
    bootstrapped: str, haproxy_factory: Any, write_config: WriteConfig, tmp_path: Path
) -> None:
    out = tmp_path / "out/edge"
    server: HaproxyServer = haproxy_factory(out / "combined.pem")
    proxy = RuntimeProxy(server.socket, tmp_path / "proxy.sock", haproxy_pid=server.pid)
    proxy.crash_on("commit ssl cert")
    app = open_app(write_config, with_target(BASE, haproxy_target(proxy.path, out / "combined.pem", "5s")))
    try:
        result = app.pipeline.renew("edge", force=True)
        assert (result.outcome, result.failed_step) == ("failed", "deploy"), result
        assert "HAProxy stopped answering after `commit ssl cert`" in (result.error or "")
        assert "crashed or was stopped" in (result.error or "")
        row = app.inventory.certificate("edge")
        assert row is not None and row.failures == 1 and row.next_attempt_at is not None
        listed = {c["name"]: c["status"] for c in list_doc(app)["certificates"]}
        assert listed["edge"] == Status.FAILING
    finally:
        app.close()
        proxy.close()
