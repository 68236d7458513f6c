"""``certd run`` against real Pebble and real HAProxy: a short-lived edge certificate renewed on its own, again
and again, each new one pushed over the runtime API and proven served by a handshake, with metrics showing it."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from tests.cli import certd
from tests.conftest import WriteConfig
from tests.servers.haproxy import HaproxyServer
from tests.servers.pebble import PebbleServer
from tests.servers.ports import free_port
from tests.test_daemon import Daemon
from tests.test_issuer_acme import acme_config

NAME = "edge.short.example.test"
VALIDITY = 40  # seconds: renewed every ~12 s with renew_fraction 0.3, each with 28 s to spare


class Handshakes:
    """A client doing TLS handshakes with SNI in a loop, recording every serial served and every failure."""

    def __init__(self, port: int, roots: Path) -> None:
        self.ctx = ssl.create_default_context(cafile=str(roots))
        self.port = port
        self.serials: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.serials) < 100_000:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw, \
                        self.ctx.wrap_socket(raw, server_hostname=NAME) as tls:
                    der = tls.getpeercert(binary_form=True)
                assert der is not None
                serial = f"{_x509(der).serial_number:x}"
                if not self.serials or self.serials[-1] != serial:
                    self.serials.append(serial)
            except (OSError, ssl.SSLError) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def edge_behind_haproxy(pebble: PebbleServer, haproxy: HaproxyServer, tmp: Path, port: int, *, cert_extra: str,
                        issuer_extra: str, daemon_extra: str = "") -> str:
    """The daemon's config: the Pebble edge certificate deployed into ``haproxy`` and verified through it."""
    roots = tmp / "pebble-roots.pem"
    cert_extra += (f'deploy = ["lb"]\nverify = [{{ endpoint = "127.0.0.1:{haproxy.port}", sni = "{NAME}", '
                   f'ca_bundle = "{roots}" }}]\n')
    daemon = f'check_interval = "5s"\napi_listen = "127.0.0.1:{port}"\n{daemon_extra}'
    body = acme_config(pebble, tmp, {"edge": [NAME]}, cert_extra=cert_extra, issuer_extra=issuer_extra).replace(
        "[daemon]\n", "[daemon]\n" + daemon)
    combined = tmp / "out/edge/combined.pem"
    return body + f'\n[deploy.lb]\ntype = "haproxy"\nsocket = "{haproxy.socket}"\ncert = "{combined}"\n'


def _x509(der: bytes) -> x509.Certificate:
    return x509.load_der_x509_certificate(der)


@pytest.mark.slow  # real time: three renewals by the daemon
def test_run_renews_a_short_lived_acme_certificate_into_haproxy_repeatedly(
    pebble_factory: Callable[..., PebbleServer], haproxy_factory: Callable[..., HaproxyServer],
    tmp_path: Path, write_config: WriteConfig,
) -> None:
    pebble = pebble_factory(certificate_validity=VALIDITY)
    cert_extra = 'renew_fraction = 0.3\n'
    # Renewing one name set every half minute is exactly what Let's Encrypt's duplicate-certificate limit (and
    # certd's budget, which mirrors it) stops after five; Pebble has no such limit, so lift certd's for this test.
    limits = "[issuers.pebble.rate_limits]\nduplicate_certificates = 1000\n"
    boot = write_config(acme_config(pebble, tmp_path, {"edge": [NAME]}, cert_extra=cert_extra, issuer_extra=limits),
                        name="boot.toml")
    first = certd("renew", "edge", "--json", config=boot)
    assert first.returncode == 0, first.stderr
    boot_serial = json.loads(first.stdout)["results"][0]["serial"]
    combined = tmp_path / "out/edge/combined.pem"
    haproxy = haproxy_factory(combined)
    roots = tmp_path / "pebble-roots.pem"

    port = free_port()
    (tmp_path / "api.token").write_text("token\n")
    token = f'api_token_file = "{tmp_path}/api.token"\n'
    config = write_config(edge_behind_haproxy(pebble, haproxy, tmp_path, port, issuer_extra=limits,
                                              cert_extra=cert_extra + "rollback = true\n", daemon_extra=token))

    loop = Handshakes(haproxy.port, roots)
    daemon = Daemon(config, port, tmp_path / "daemon.log")
    try:
        served: list[str] = []
        deadline = time.monotonic() + 3 * VALIDITY
        while len(served) < 3 and time.monotonic() < deadline:
            doc = daemon.get("/v1/certificates/edge").json()
            if doc["status"] == "served" and (not served or served[-1] != doc["serial"]):
                served.append(doc["serial"])
            time.sleep(1)
        metrics = daemon.get("/metrics").text
        final = daemon.get("/v1/certificates/edge").json()["serial"]
        loaded = haproxy.runtime(f"show ssl cert {combined}")
    finally:
        daemon.stop()
        loop.stop()
    log = (tmp_path / "daemon.log").read_text()[-3000:]
    assert len(served) >= 3, log  # three renewals by the daemon alone, each proven served
    assert loop.failures == [], loop.failures[:5]
    seen = {int(s, 16) for s in loop.serials}
    assert [s for s in served if int(s, 16) in seen] == served  # the clients were served every one of them
    assert haproxy.pid == haproxy._proc.pid and haproxy._proc.proc.poll() is None  # no reload, no restart
    assert "Serial:" in loaded and int(loaded.split("Serial:")[1].split()[0], 16) == int(final, 16)
    renewed = _sample(metrics, 'certd_renewals_total{issuer="pebble",name="edge",result="success"}')
    deployed = _sample(metrics, 'certd_deploy_total{name="edge",result="success",target="lb"}')
    probed = _sample(metrics, 'certd_probe_total{name="edge",result="success"}')
    # The boot certificate was published with no deploy target; the daemon deploys it first (a first start).
    assert renewed >= 3 - (boot_serial in served) and deployed >= 3 and probed >= 3, metrics
    assert _sample(metrics, 'certd_step_duration_seconds_count{operation="renew",step="issue"}') >= 2
    assert _sample(metrics, 'certd_renewal_duration_seconds_count{issuer="pebble",result="success"}') >= 2


def _sample(metrics: str, prefix: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(prefix + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{prefix} not in /metrics")
