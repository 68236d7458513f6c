"""A server that is down when its new certificate is rolled out (issue 18: the load balancer down for minutes).

A server that is not running (no pid file, dead pid, no runtime socket) is not refusing the certificate: the
new one stays published, so the server loads it the moment it starts, instead of being rolled back to the
old one. The renewal is recorded as failed (the server is down: alerted), and the retry redeploys the same
version, never a new order. Real nginx, stopped and started again where clients expect it.
"""

from __future__ import annotations

import socket
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from certd.config.load import load_config
from certd.config.model import LocalCAIssuerConfig
from certd.core.kinds import EventKind
from certd.core.policy import Reason
from certd.deploy.publish import published_serial
from certd.engine.app import App
from certd.engine.scheduler import Scheduler
from certd.issuers.local_ca import LocalCA
from certd.pki.certs import serial_hex
from certd.reports.views import list_doc
from tests.conftest import TickingClock, WriteConfig
from tests.servers.nginx import NginxServer
from tests.servers.ports import free_port
from tests.test_failures_recorded import CountingCA

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


def test_a_server_down_past_the_renewal_time_costs_one_order(write_config: WriteConfig, tmp_path: Path) -> None:
    """The daemon's scheduler on a fake clock, past the renewal time with nginx down for hours: the first
    renewal orders, publishes and finds the server down (kept published, not rolled back); every retry after
    that looks at the server again — it never orders again (issue 18: 10 orders in 5 minutes, seen on HAProxy)."""
    port = free_port()
    out, workdir = tmp_path / "out/web", tmp_path / "nginx"
    workdir.mkdir()
    # No verify endpoint: the fake clock is two days ahead, so a real TLS client would find the certificates
    # not yet valid; the server being down is what the deploy target says (no pid file), as without verify.
    body = CONFIG.replace('verify = [{ endpoint = "127.0.0.1:PORT", sni = "web.example.test" }]\n', "")
    config = load_config(write_config(body.replace('output_dir = "{tmp}/out/web"',
                                                   'output_dir = "{tmp}/out/web"\nlifetime = "72h"')))
    clock = TickingClock(datetime.now(UTC))  # a scan's reads of the clock differ, as in the daemon
    issuer_cfg = config.issuers["local"]
    assert isinstance(issuer_cfg, LocalCAIssuerConfig)
    ca = CountingCA(LocalCA("local", issuer_cfg, clock=clock))
    app = App.open(config, clock=clock, issuers={"local": ca})  # type: ignore[dict-item]
    scheduler = Scheduler(lambda: app, clock, workers=1, inline=True)
    nginx = None
    try:
        first = app.pipeline.renew("web")
        nginx = NginxServer(out / "fullchain.pem", out / "privkey.pem", workdir=workdir, port=port)
        assert app.pipeline.deploy("web").state == "deployed" and ca.orders == 1
        nginx.stop()
        nginx = None
        clock.advance(timedelta(hours=49))  # past the renewal time (2/3 of 72 h)
        scheduler.scan()
        assert ca.orders == 2
        issued = published_serial(out)
        assert issued != first.serial
        until = clock.now() + timedelta(hours=3)
        scans = 0
        while clock.now() < until:
            row = app.inventory.certificate("web")
            assert row is not None and row.next_attempt_at is not None
            assert row.next_attempt_at - clock.now() <= timedelta(seconds=11)  # a down server is looked at soon
            clock.current = row.next_attempt_at + timedelta(seconds=1)
            scheduler.scan()
            scans += 1
            assert published_serial(out) == issued
            if scans > 50:
                break
        assert ca.orders == 2, ca.orders
        assert {c["name"]: c["status"] for c in list_doc(app)["certificates"]}["web"] == "failing"
        nginx = NginxServer(out / "fullchain.pem", out / "privkey.pem", workdir=workdir, port=port)  # back
        row = app.inventory.certificate("web")
        assert row is not None and row.next_attempt_at is not None
        clock.current = row.next_attempt_at + timedelta(seconds=1)
        scheduler.scan()
        assert {c["name"]: c["status"] for c in list_doc(app)["certificates"]}["web"] == "deployed", \
            [(e.kind, e.message) for e in app.inventory.events("web")][:4]
        assert _served(port) == issued and ca.orders == 2
    finally:
        if nginx is not None:
            nginx.stop()
        scheduler.shutdown()
        app.close()
