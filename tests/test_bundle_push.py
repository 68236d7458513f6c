"""Trust bundle rotation without a reload: the issuer's bundle_file is pushed into HAProxy's ca-file live.

Real HAProxy re-encrypting to a real nginx backend, pinning the local CA's
``bundle_file`` as its ``ca-file``. The file starts with an extra CA in it (an
overlap left from a CA rotation); a renewal rewrites the bundle, and certd
pushes it with ``set``/``commit ssl ca-file``: HAProxy holds the new bundle
without a reload, its pid unchanged, and its health checks of the backend
never fail.

HAProxy 2.6 applies a committed ca-file to a server line only when that line
has a client certificate (``crt``); without one the commit "succeeds" and
changes nothing (``Status: Unused``). certd refuses such a push and says so.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from certd.config.load import load_config
from certd.core.policy import Reason
from certd.engine.app import App
from certd.pki.certs import load_pem_certs
from tests.conftest import WriteConfig
from tests.servers.haproxy import HaproxyServer
from tests.servers.ports import make_workdir
from tests.servers.tlsutil import issue_server_cert, make_ca, write_server_files

NAME = "backend-1.internal"


def _failed_checks(server: HaproxyServer) -> tuple[str, int]:
    row = server.upstream_stat()
    return row["status"], int(row["chkfail"] or 0)


def _setup(write_config: WriteConfig, tmp_path: Path, tag: str) -> tuple[Path, Path, Path, Path, dict[str, Path]]:
    work = make_workdir(tag)
    lb_dir, nginx_dir = work / "lb", work / "nginx"
    lb_dir.mkdir()
    nginx_dir.mkdir()
    bundle = work / "pinned/backend-ca.pem"
    edge_ca = make_ca("edge test CA")
    (tmp_path / "edge").mkdir()
    edge = write_server_files(tmp_path / "edge", issue_server_cert(edge_ca, ["lb.example.test"]), edge_ca)
    config = write_config(f"""
[database]
url = "sqlite:///{work}/certd.db"

[issuers.local]
type = "local-ca"
dir = "{work}/ca"
bundle_file = "{bundle}"

[deploy.nginx]
type = "signal"
pid_file = "{nginx_dir}/nginx.pid"

[deploy.lb]
type = "haproxy"
socket = "{lb_dir}/admin.sock"
cert = "{edge['combined']}"
ca_file = "{bundle}"

[certificates.backend]
issuer = "local"
names = ["{NAME}"]
lifetime = "1h"
output_dir = "{work}/out/backend"
deploy = ["nginx"]
""")
    return work, config, bundle, lb_dir, edge


def test_bundle_change_is_pushed_into_haproxy_without_reload(
    write_config: WriteConfig, tmp_path: Path, nginx_factory: Any, haproxy_factory: Any,
) -> None:
    work, config, bundle, lb_dir, edge = _setup(write_config, tmp_path, "bundlepush")
    nginx_dir = work / "nginx"
    app = App.open(load_config(config))
    try:
        assert app.pipeline.renew("backend").outcome == "renewed"
        own = bundle.read_bytes()
        n = len(load_pem_certs(own))  # the local CA's intermediate and root
        bundle.write_bytes(own + make_ca("old CA, still trusted during an overlap").cert_pem)
        nginx = nginx_factory(work / "out/backend/fullchain.pem", work / "out/backend/privkey.pem", workdir=nginx_dir)
        haproxy: HaproxyServer = haproxy_factory(
            edge["combined"], backend_server=f"127.0.0.1:{nginx.port}", backend_ca_file=bundle,
            backend_sni=f'"{NAME}"', backend_options=f"verifyhost {NAME} check check-ssl check-sni {NAME} inter 200ms"
            f" crt {edge['combined']}",  # a client certificate: without one HAProxy does not apply a new ca-file
            workdir=lb_dir,
        )
        assert app.pipeline.deploy("backend").outcome == "deployed"
        assert haproxy.runtime(f"show ssl ca-file {bundle}").count("Certificate #") == n + 1
        time.sleep(0.6)
        status, failed_before = _failed_checks(haproxy)
        assert status.startswith("UP")

        renewed = app.pipeline.renew("backend", force=True)
        assert renewed.outcome == "renewed", renewed
        assert bundle.read_bytes() == own  # the overlap is over: the bundle holds the issuer's own CA only
        pushed = [e.message for e in app.inventory.events("backend") if e.kind == "bundle.pushed"]
        assert pushed and f"now holds {n} certificate(s)" in pushed[0], pushed
        assert haproxy.runtime(f"show ssl ca-file {bundle}").count("Certificate #") == n
        time.sleep(0.6)
        status, failed_after = _failed_checks(haproxy)
        assert status.startswith("UP") and failed_after == failed_before  # no health check failed
        assert haproxy._proc.proc.poll() is None and haproxy.pid == haproxy._proc.pid  # no reload

        # The bundle did not change: HAProxy, which holds it already, is left alone (no set/commit at all).
        again = app.pipeline.renew("backend", force=True)
        assert again.outcome == "renewed", again
        said = [e.message for e in app.inventory.events("backend") if e.kind == "bundle.pushed"]
        assert f"already holds these {n} certificate(s); nothing pushed" in said[0], said
    finally:
        app.close()


def test_a_ca_file_haproxy_would_not_apply_live_is_refused_with_the_fix(
    write_config: WriteConfig, tmp_path: Path, nginx_factory: Any, haproxy_factory: Any,
) -> None:
    """HAProxy 2.6 commits a ca-file used by server lines without ``crt``, then keeps verifying with the old one."""
    work, config, bundle, lb_dir, edge = _setup(write_config, tmp_path, "bundleunused")
    app = App.open(load_config(config))
    try:
        assert app.pipeline.renew("backend").outcome == "renewed"
        nginx = nginx_factory(work / "out/backend/fullchain.pem", work / "out/backend/privkey.pem",
                              workdir=work / "nginx")
        haproxy: HaproxyServer = haproxy_factory(
            edge["combined"], backend_server=f"127.0.0.1:{nginx.port}", backend_ca_file=bundle,
            backend_sni=f'"{NAME}"', backend_options=f"verifyhost {NAME} check check-ssl check-sni {NAME} inter 200ms",
            workdir=lb_dir,
        )
        assert app.pipeline.deploy("backend").outcome == "deployed"
        renewed = app.pipeline.renew("backend", force=True)
        # The certificate rolled out, but a load balancer that does not hold the bundle is no success: recorded
        # (failing, backed off) and retried by redeploying this version, never by a new order.
        assert (renewed.outcome, renewed.failed_step) == ("failed", "trust"), renewed
        error = renewed.error or ""
        assert "Status: Unused" in error and "add `crt FILE` to the server lines" in error, error
        failed = [e.message for e in app.inventory.events("backend") if e.kind == "bundle.push_failed"]
        assert failed and "Status: Unused" in failed[-1], failed
        assert "transaction" not in haproxy.runtime("show ssl ca-file")  # nothing was left half-pushed
        assert app.pipeline.verdicts()["backend"].reason is Reason.REDEPLOY
        again = app.pipeline.deploy("backend")  # the retry: the same version, the same refusal, still no success
        assert (again.outcome, again.failed_step) == ("failed", "trust"), again
    finally:
        app.close()
