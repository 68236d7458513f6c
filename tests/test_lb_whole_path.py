"""Proof of the whole path: after a backend rotates, HAProxy's own health check must still accept it.

Real HAProxy re-encrypting to a real nginx backend whose certificate comes
from certd's local CA, verified against the issuer's ``bundle_file`` with SNI
and ``verifyhost``, checked over TLS every 300 ms. A good rotation is
confirmed by HAProxy's check; a rotation HAProxy rejects (the backend's names
changed, so ``verifyhost`` fails) is a failed verify and is rolled back, after
which HAProxy accepts the backend again.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from certd.config.load import load_config
from certd.engine.app import App
from tests.conftest import WriteConfig
from tests.servers.haproxy import HaproxyServer
from tests.servers.nginx import NginxServer
from tests.servers.ports import make_workdir
from tests.servers.tlsutil import issue_server_cert, make_ca, write_server_files

NAME = "backend-1.internal"


def _body(work: Path, names: list[str], nginx_pid: Path, sock: Path) -> str:
    quoted = ", ".join(f'"{n}"' for n in names)
    return f"""
[database]
url = "sqlite:///{work}/certd.db"

[issuers.local]
type = "local-ca"
dir = "{work}/ca"
bundle_file = "{work}/pinned/backend-ca.pem"

[deploy.nginx]
type = "signal"
pid_file = "{nginx_pid}"

[certificates.backend]
issuer = "local"
names = [{quoted}]
lifetime = "1h"
output_dir = "{work}/out/backend"
deploy = ["nginx"]
lb_checks = [{{ socket = "{sock}", backend = "be_upstream", server = "upstream", interval = "300ms" }}]
rollback = true
verify_timeout = "8s"
"""


def _stat(server: HaproxyServer) -> tuple[str, str]:
    row = server.upstream_stat()
    return row["status"], row["check_status"]


def test_haproxy_check_confirms_a_rotation_and_a_rejected_one_is_rolled_back(
    write_config: WriteConfig, tmp_path: Path, nginx_factory: Any, haproxy_factory: Any,
) -> None:
    work = make_workdir("wholepath")
    nginx_dir, lb_dir = work / "nginx", work / "lb"
    nginx_dir.mkdir()
    lb_dir.mkdir()
    sock = lb_dir / "admin.sock"
    config = write_config(_body(work, [NAME], nginx_dir / "nginx.pid", sock))
    app = App.open(load_config(config))
    try:
        first = app.pipeline.renew("backend")  # first start: nginx and HAProxy are not running yet
        assert (first.outcome, first.reason) == ("renewed", "DeployPending"), first
        nginx: NginxServer = nginx_factory(work / "out/backend/fullchain.pem", work / "out/backend/privkey.pem",
                                           workdir=nginx_dir)
        edge_ca = make_ca("edge test CA")
        (tmp_path / "edge").mkdir()
        edge = write_server_files(tmp_path / "edge", issue_server_cert(edge_ca, ["lb.example.test"]), edge_ca)
        haproxy: HaproxyServer = haproxy_factory(
            edge["combined"], backend_server=f"127.0.0.1:{nginx.port}", backend_ca_file=work / "pinned/backend-ca.pem",
            backend_sni=f'"{NAME}"', backend_options=f"verifyhost {NAME} check check-ssl check-sni {NAME} inter 300ms",
            workdir=lb_dir,
        )
        done = app.pipeline.deploy("backend")
        assert done.outcome == "deployed", done
        good = app.pipeline.renew("backend", force=True)
        assert good.outcome == "renewed", good
        confirmed = [e.message for e in app.inventory.events("backend")
                     if e.kind == "verify.done" and e.renewal_id == good.renewal_id]
        assert confirmed and re.search(r"HAProxy be_upstream/upstream: L6OK", confirmed[0]), confirmed

        # The operator changes the backend's names; HAProxy's verifyhost still expects backend-1.internal.
        config.write_text(_body(work, ["wrong.internal"], nginx_dir / "nginx.pid", sock))
        app.close()
        app = App.open(load_config(config))
        rejected = app.pipeline.renew("backend")
        assert (rejected.outcome, rejected.failed_step) == ("failed", "verify"), rejected
        assert "rejects the backend after the rotation" in (rejected.error or "")
        kinds = [e.kind for e in app.inventory.events("backend")]
        assert "rollback.done" in kinds, kinds
        current = app.inventory.current_version("backend")
        assert current is not None and current.serial == good.serial  # the accepted certificate is back
        status, check = _stat(haproxy)
        assert status.startswith("UP") and check == "L6OK", (status, check)
    finally:
        app.close()
