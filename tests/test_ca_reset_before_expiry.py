"""The CA goes away and comes back reset 30 s before the edge certificate expires, or hangs until 20 s before
(issue 18's acceptance).

``certd run`` keeps a short-lived Pebble certificate in a real HAProxy over the runtime API while a client does
TLS handshakes through HAProxy. Pebble is stopped before the renewal time and started again, its state lost
(every account gone, a new root), 30 s before ``not_after``. certd must renew before expiry on its own —
registering its account again — with zero failed handshakes, and say so truthfully meanwhile.

The new Pebble root is added to the pinned roots file and the client's trust once it exists (a real CA keeps
its root across a reset; Pebble does not, see TESTING.md), with no signal to certd: the ACME issuer reads its
pinned roots at every attempt.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import WriteConfig
from tests.servers.fault_proxy import FaultProxy
from tests.servers.haproxy import HaproxyServer
from tests.servers.pebble import PebbleServer
from tests.servers.ports import free_port
from tests.test_daemon import Daemon
from tests.test_daemon_acme import NAME, Handshakes, edge_behind_haproxy
from tests.test_issuer_acme import acme_config

REPO = Path(__file__).resolve().parent.parent
VALIDITY = 90  # seconds
LIMITS = "[issuers.pebble.rate_limits]\nduplicate_certificates = 1000\n"


@pytest.mark.slow
def test_a_ca_reset_30s_before_expiry_is_survived_with_no_failed_handshake(
    pebble_factory: Callable[..., PebbleServer], haproxy_factory: Callable[..., HaproxyServer],
    tmp_path: Path, write_config: WriteConfig,
) -> None:
    pebble = pebble_factory(certificate_validity=VALIDITY)
    cert_extra = "renew_fraction = 0.4\n"  # due ~36 s after issuance
    boot = write_config(acme_config(pebble, tmp_path, {"edge": [NAME]}, cert_extra=cert_extra, issuer_extra=LIMITS),
                        name="boot.toml")
    first = subprocess.run([sys.executable, "-m", "certd", "-c", str(boot), "renew", "edge", "--json"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    issued_at = time.monotonic()
    haproxy = haproxy_factory(tmp_path / "out/edge/combined.pem")
    roots = tmp_path / "pebble-roots.pem"
    port = free_port()
    config = write_config(edge_behind_haproxy(pebble, haproxy, tmp_path, port, issuer_extra=LIMITS,
                                              cert_extra=cert_extra + "rollback = true\n"))
    loop = Handshakes(haproxy.port, roots)
    daemon = Daemon(config, port, tmp_path / "daemon.log")
    try:
        pebble.down()  # before the renewal time: every attempt from now on finds no CA
        statuses: set[str] = set()
        while time.monotonic() < issued_at + VALIDITY - 30:
            statuses.add(daemon.get("/v1/certificates/edge").json()["status"])
            time.sleep(0.5)
        pebble.up()  # reset: no account, a new root
        new_root = pebble.roots_pem()
        roots.write_bytes(roots.read_bytes() + new_root)
        loop.ctx.load_verify_locations(cadata=new_root.decode())
        renewed = None
        while time.monotonic() < issued_at + VALIDITY - 2:
            doc = daemon.get("/v1/certificates/edge").json()
            statuses.add(doc["status"])
            if doc["status"] == "served" and doc["serial"] != json.loads(first.stdout)["results"][0]["serial"]:
                renewed = doc
                break
            time.sleep(0.5)
        history = daemon.get("/readyz").json()
    finally:
        daemon.stop()
        loop.stop()
    log = (tmp_path / "daemon.log").read_text()
    assert renewed is not None, (statuses, history, log[-4000:])
    assert loop.failures == [], loop.failures[:5]
    assert "failing" in statuses  # the CA's absence was said while it lasted
    assert "registered again" in log


HANG_VALIDITY = 120  # seconds: due at 48 s, hard deadline at 108 s


@pytest.mark.slow
def test_a_ca_hung_until_20s_before_expiry_is_survived_with_no_failed_handshake(
    pebble_factory: Callable[..., PebbleServer], haproxy_factory: Callable[..., HaproxyServer],
    tmp_path: Path, write_config: WriteConfig,
) -> None:
    """The CA accepts connections and never answers from before the renewal time until 20 s before expiry
    (a SIGSTOPped CA, a dead peer behind its load balancer): every attempt ends at ``attempt_timeout``, the
    retries never sleep past the hard deadline, and the first one after the CA answers renews."""
    pebble = pebble_factory(certificate_validity=HANG_VALIDITY)
    proxy = FaultProxy(pebble.acme_port)
    issuer_extra = 'attempt_timeout = "5s"\n' + LIMITS
    cert_extra = "renew_fraction = 0.4\n"
    via_proxy = f"https://127.0.0.1:{proxy.port}/dir"
    boot = write_config(acme_config(pebble, tmp_path, {"edge": [NAME]}, cert_extra=cert_extra,
                                    issuer_extra=issuer_extra).replace(pebble.directory_url, via_proxy),
                        name="boot.toml")
    first = subprocess.run([sys.executable, "-m", "certd", "-c", str(boot), "renew", "edge", "--json"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    old_serial = json.loads(first.stdout)["results"][0]["serial"]
    issued_at = time.monotonic()
    haproxy = haproxy_factory(tmp_path / "out/edge/combined.pem")
    port = free_port()
    config = write_config(edge_behind_haproxy(pebble, haproxy, tmp_path, port, issuer_extra=issuer_extra,
                                              cert_extra=cert_extra + "rollback = true\n")
                          .replace(pebble.directory_url, via_proxy))
    loop = Handshakes(haproxy.port, tmp_path / "pebble-roots.pem")
    daemon = Daemon(config, port, tmp_path / "daemon.log")
    try:
        proxy.mode = "hang"
        statuses: set[str] = set()
        while time.monotonic() < issued_at + HANG_VALIDITY - 20:
            statuses.add(daemon.get("/v1/certificates/edge").json()["status"])
            time.sleep(0.5)
        proxy.mode = "forward"
        renewed = None
        while time.monotonic() < issued_at + HANG_VALIDITY - 2:
            doc = daemon.get("/v1/certificates/edge").json()
            statuses.add(doc["status"])
            if doc["status"] == "served" and doc["serial"] != old_serial:
                renewed = doc
                break
            time.sleep(0.5)
    finally:
        daemon.stop()
        loop.stop()
        proxy.close()
    log = (tmp_path / "daemon.log").read_text()
    assert renewed is not None, (statuses, log[-4000:])
    assert loop.failures == [], loop.failures[:5]
    assert "failing" in statuses  # the hung CA was said while it lasted
    assert "issuers.pebble.attempt_timeout" in log
