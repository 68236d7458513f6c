"""The expiry certd once allowed, reproduced and refused: its own budget never holds a renewal past the deadline.

Real Pebble, real HAProxy rotated over the runtime API, the daemon running and a
client doing TLS handshakes through HAProxy the whole time. The issuer carries a
Let's Encrypt-shaped budget set low (one duplicate certificate per 7 days), so
the daemon's first renewal is refused by certd's own budget. Before the fix the
certificate was held back for a week, expired, and every status said all was
well. Now: while it is held back, ``list``, the API, metrics and ``certd check``
say it is failing; at the hard deadline certd asks the CA anyway, the new
certificate is served, and no client ever sees an expired one.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli import certd
from tests.conftest import WriteConfig
from tests.servers.haproxy import HaproxyServer
from tests.servers.pebble import PebbleServer
from tests.servers.ports import free_port
from tests.test_daemon import Daemon
from tests.test_daemon_acme import Handshakes, _sample, edge_behind_haproxy
from tests.test_issuer_acme import acme_config

NAME = "edge.short.example.test"
# Seconds: renewal due at 24 s (renew_fraction 0.3), refused by the budget; hard deadline at 72 s, when the daemon's
# timer asks the CA anyway (an issue took 50 ms to 2 s here), with 8 s left before a client could see it expire.
VALIDITY = 80


def _certd(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return certd(*args, config=config)


@pytest.mark.slow  # real time: the certificate must reach its hard deadline
def test_budget_never_lets_the_edge_expire(
    pebble_factory: Callable[..., PebbleServer], haproxy_factory: Callable[..., HaproxyServer],
    tmp_path: Path, write_config: WriteConfig,
) -> None:
    pebble = pebble_factory(certificate_validity=VALIDITY)
    limits = "rate_limits = { duplicate_certificates = 1, window = \"7d\" }\n"
    cert_extra = "renew_fraction = 0.3\n"
    boot = write_config(acme_config(pebble, tmp_path, {"edge": [NAME]}, cert_extra=cert_extra,
                                    issuer_extra=limits), name="boot.toml")
    first = _certd(boot, "renew", "edge", "--json")
    assert first.returncode == 0, first.stderr
    first_serial = json.loads(first.stdout)["results"][0]["serial"]
    combined = tmp_path / "out/edge/combined.pem"
    haproxy = haproxy_factory(combined)
    roots = tmp_path / "pebble-roots.pem"

    port = free_port()
    config = write_config(edge_behind_haproxy(pebble, haproxy, tmp_path, port, cert_extra=cert_extra,
                                              issuer_extra=limits))

    loop = Handshakes(haproxy.port, roots)
    daemon = Daemon(config, port, tmp_path / "daemon.log")
    seen_failing: dict[str, object] = {}
    try:
        deadline = time.monotonic() + VALIDITY + 30
        renewed = None
        while time.monotonic() < deadline:
            doc = daemon.get("/v1/certificates/edge").json()
            if doc["serial"] != first_serial and doc["status"] == "served":
                renewed = doc
                break
            if doc["status"] == "failing" and "list" not in seen_failing:
                listed = json.loads(_certd(config, "list", "--json").stdout)["certificates"][0]
                check = _certd(config, "check")
                metrics = daemon.get("/metrics").text
                ready = daemon.get("/readyz")
                seen_failing.update(list=listed, api=doc, check=(check.returncode, check.stdout),
                                    failing=_sample(metrics, 'certd_certificate_ready_status{condition="failing",'
                                                    'name="edge"}'),
                                    readyz=(ready.status_code, ready.json()))
            time.sleep(1)
        events = daemon.get("/v1/certificates/edge").json()
    finally:
        daemon.stop()
        loop.stop()
    log = (tmp_path / "daemon.log").read_text()[-4000:]
    assert renewed is not None, f"never renewed: {events}\n{log}"
    # While certd's budget held it back, everything said so.
    assert seen_failing, f"the certificate was never shown as failing\n{log}"
    listed = seen_failing["list"]
    assert isinstance(listed, dict) and listed["status"] == "failing"
    assert "budget" in (listed["last_error"] or "") and "per 7d" in listed["last_error"]
    assert seen_failing["check"][0] == 1 and "WARNING" in seen_failing["check"][1]  # type: ignore[index]
    assert seen_failing["failing"] == 1.0
    code, ready = seen_failing["readyz"]  # type: ignore[misc]
    assert code == 200 and ready["status"] == "ok"  # time is left: a warning, not yet degraded
    assert [w["name"] for w in ready["warnings"]] == ["edge"] and ready["warnings"][0]["status"] == "failing"
    # At the hard deadline certd asked the CA anyway; no client ever saw an expired certificate.
    assert not [f for f in loop.failures if "expired" in f], loop.failures[:5]
    assert loop.failures == [], loop.failures[:5]
    assert int(renewed["serial"], 16) in {int(s, 16) for s in loop.serials}
    history = json.loads(_certd(config, "history", "edge", "--json").stdout)
    kinds = [e["kind"] for e in history["events"]]
    assert "budget.overridden" in kinds and "renewal.failed" in kinds
    assert renewed["last_error"] is None
