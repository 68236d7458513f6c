"""HAProxy down for five minutes past the edge certificate's renewal time (issue 18's acceptance).

``certd run`` keeps a short-lived Pebble certificate in a real HAProxy over the runtime API. HAProxy is stopped
before the renewal time and started again (same config, same port) five minutes after it. The CA must see
**one** order for the certificate in all that time — every retry rolls the version already issued out again —
and the new certificate must be served within seconds of HAProxy's return: it stayed published (a server that
is down is not rolled back to the old one), so HAProxy loads it as it starts, and certd, which looks at a
down server every 10 s, confirms it right after. Meanwhile nothing says the certificate is served.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from tests.cli import certd
from tests.conftest import WriteConfig
from tests.servers import acme_faults
from tests.servers.acme_faults import Phase
from tests.servers.haproxy import HaproxyServer
from tests.servers.pebble import PebbleServer
from tests.servers.ports import free_port
from tests.test_daemon import Daemon
from tests.test_daemon_acme import NAME, Handshakes, edge_behind_haproxy
from tests.test_issuer_acme import acme_config

VALIDITY = 400  # seconds: the first due at 40 s (renew_fraction 0.1), hard deadline at 360 s
DOWN_PAST_RENEWAL = 300  # seconds
LIMITS = "[issuers.pebble.rate_limits]\nduplicate_certificates = 1000\n"


@pytest.mark.slow
def test_haproxy_down_five_minutes_costs_one_order_and_is_served_within_seconds_of_its_return(
    pebble_factory: Callable[..., PebbleServer], tmp_path: Path, write_config: WriteConfig,
) -> None:
    pebble = pebble_factory(certificate_validity=VALIDITY)
    proxy = acme_faults.proxy_for(pebble)  # no fault: it counts the orders the CA accepts
    cert_extra = "renew_fraction = 0.1\n"
    boot = write_config(acme_config(pebble, tmp_path, {"edge": [NAME]}, cert_extra=cert_extra,
                                    issuer_extra=LIMITS).replace(pebble.directory_url, f"{proxy.url}/dir"),
                        name="boot.toml")
    first = certd("renew", "edge", "--json", config=boot)
    assert first.returncode == 0, first.stderr
    old_serial = json.loads(first.stdout)["results"][0]["serial"]
    combined = tmp_path / "out/edge/combined.pem"
    workdir = tmp_path / "haproxy"
    workdir.mkdir()
    haproxy = HaproxyServer(combined, workdir=workdir)
    port = free_port()
    # The first certificate was due at 40 s (its renew_at is stored at issuance); the ones the daemon gets are
    # due at 9/10 of their life, after this test: every order the CA sees in the outage is the outage's.
    config = write_config(edge_behind_haproxy(pebble, haproxy, tmp_path, port, issuer_extra=LIMITS,
                                              cert_extra="renew_fraction = 0.9\nrollback = true\n")
                          .replace(pebble.directory_url, f"{proxy.url}/dir"))
    orders_before = proxy.count(Phase.ORDER, method="POST", status=201)
    daemon = Daemon(config, port, tmp_path / "daemon.log")
    loop = None
    try:
        doc = daemon.get("/v1/certificates/edge").json()
        started = time.monotonic()
        while doc["status"] != "served" and time.monotonic() < started + 30:  # the daemon's first deploy
            time.sleep(0.2)
            doc = daemon.get("/v1/certificates/edge").json()
        assert doc["status"] == "served", doc
        renew_at = datetime.fromisoformat(doc["renew_at"]).timestamp()
        haproxy.stop()  # down before the renewal time
        statuses: set[str] = set()
        while time.time() < renew_at + DOWN_PAST_RENEWAL:
            if time.time() > renew_at + 3:  # before its first attempt certd has not met the outage yet
                statuses.add(daemon.get("/v1/certificates/edge").json()["status"])
            time.sleep(1)
        haproxy = HaproxyServer(combined, workdir=workdir, port=haproxy.port)
        back = time.monotonic()
        loop = Handshakes(haproxy.port, tmp_path / "pebble-roots.pem")
        confirmed = None
        while time.monotonic() < back + 60:
            doc = daemon.get("/v1/certificates/edge").json()
            if doc["status"] == "served" and doc["serial"] != old_serial:
                confirmed = time.monotonic() - back
                break
            time.sleep(0.5)
        first_new = next((i for i, s in enumerate(loop.serials) if s != old_serial), None)
        history = certd("history", "edge", "--json", config=config)
    finally:
        daemon.stop()
        if loop is not None:
            loop.stop()
        haproxy.stop()
        proxy.close()
    log = (tmp_path / "daemon.log").read_text()[-4000:]
    orders = proxy.count(Phase.ORDER, method="POST", status=201) - orders_before
    assert orders == 1, (orders, log)
    assert first_new == 0, loop.serials  # HAProxy started on the new certificate: the first handshake had it
    assert confirmed is not None and confirmed < 15, (confirmed, log)
    assert "served" not in statuses and "failing" in statuses, statuses  # never "served" while it was down
    events = json.loads(history.stdout)["events"]
    assert any(e["kind"] == "rollback.skipped" for e in events)
    assert not any(e["kind"] == "rollback.done" for e in events), "rolled back to the old one while down"
