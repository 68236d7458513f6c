"""A server that is down when its new certificate is rolled out (issue 18: the load balancer down for minutes).

A server that is not running (no pid file, dead pid, no runtime socket) is not refusing the certificate: the
new one stays published, so the server loads it the moment it starts, instead of being rolled back to the
old one. The renewal is recorded as failed (the server is down: alerted), and the retry redeploys the same
version, never a new order. Real nginx, stopped and started again where clients expect it.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from cryptography import x509

from certd.config.load import load_config
from certd.core.kinds import EventKind
from certd.core.policy import Reason
from certd.deploy.publish import published_serial
from certd.engine.app import App
from certd.pki.certs import serial_hex
from certd.reports.views import list_doc
from tests.conftest import WriteConfig
from tests.servers.nginx import NginxServer
from tests.servers.ports import free_port

CONFIG = """
[database]
url = "sqlite:///{tmp}/certd.db"

[issuers.local]
type = "local-ca"
dir = "{tmp}/local-ca"

[deploy.nginx]
type = "signal"
pid_file = "{tmp}/nginx/nginx.pid"
signal = "HUP"

[certificates.web]
issuer = "local"
names = ["web.example.test"]
output_dir = "{tmp}/out/web"
deploy = ["nginx"]
verify = [{ endpoint = "127.0.0.1:PORT", sni = "web.example.test" }]
rollback = true
"""


def _served(port: int) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="web.example.test") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return serial_hex(x509.load_der_x509_certificate(der))


def test_a_server_down_at_rollout_gets_the_new_certificate_when_it_starts(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    port = free_port()
    out, workdir = tmp_path / "out/web", tmp_path / "nginx"
    workdir.mkdir()
    app = App.open(load_config(write_config(CONFIG.replace("PORT", str(port)))))
    nginx = None
    try:
        first = app.pipeline.renew("web")  # first start: nginx not running yet, deploy pending
        assert first.outcome == "renewed", first
        nginx = NginxServer(out / "fullchain.pem", out / "privkey.pem", workdir=workdir, port=port)
        assert app.pipeline.deploy("web").state == "served"

        nginx.stop()  # the server goes down
        nginx = None
        renewed = app.pipeline.renew("web", force=True)
        assert (renewed.outcome, renewed.failed_step) == ("failed", "deploy"), renewed
        assert published_serial(out) == renewed.serial != first.serial  # kept for its return, not rolled back
        kinds = [e.kind for e in app.inventory.events("web")]
        assert EventKind.ROLLBACK_SKIPPED in kinds and EventKind.ROLLBACK_DONE not in kinds
        assert {c["name"]: c["status"] for c in list_doc(app)["certificates"]}["web"] == "failing"
        assert app.pipeline.verdicts()["web"].reason is Reason.REDEPLOY  # the retry redeploys, no new order

        nginx = NginxServer(out / "fullchain.pem", out / "privkey.pem", workdir=workdir, port=port)  # back
        assert _served(port) == renewed.serial  # at once, from the files on disk
        retried = app.pipeline.deploy("web")
        assert (retried.outcome, retried.serial, retried.state) == ("deployed", renewed.serial, "served"), retried
        row = app.inventory.certificate("web")
        assert row is not None and (row.failures, row.last_error) == (0, None)
        assert len(app.inventory.versions("web")) == 2  # one order for the whole outage
    finally:
        if nginx is not None:
            nginx.stop()
        app.close()
