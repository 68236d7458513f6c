"""``certd probe`` as an operator runs it, against a real HAProxy serving a certificate from certd's local CA."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from certd.config.load import load_config
from certd.engine.app import App
from certd.pki.certs import fingerprint, load_pem_certs, serial_hex
from tests.cli import certd
from tests.conftest import WriteConfig
from tests.servers.tlsutil import make_ca, write_pem
from tests.test_deploy_haproxy import BASE, NAME

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2  # certd/cli.py


def certd_probe(*args: str) -> subprocess.CompletedProcess[str]:
    return certd("probe", *args)


@dataclass
class Served:
    endpoint: str
    root: Path
    out: Path
    serial: str


@pytest.fixture
def served(haproxy_factory: Any, write_config: WriteConfig, tmp_path: Path) -> Iterator[Served]:
    app = App.open(load_config(write_config(BASE)))
    try:
        result = app.pipeline.renew("edge")
    finally:
        app.close()
    assert result.outcome == "renewed" and result.serial is not None, result
    out = tmp_path / "out/edge"
    server = haproxy_factory(out / "combined.pem")
    yield Served(f"127.0.0.1:{server.port}", tmp_path / "local-ca/root.pem", out, result.serial)


def test_probe_json_reports_the_served_chain_verified(served: Served) -> None:
    proc = certd_probe(served.endpoint, "--sni", NAME, "--ca-bundle", str(served.root), "--json")
    assert proc.returncode == EXIT_OK, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["verified"] is True and doc["error"] is None
    assert doc["endpoint"] == served.endpoint and doc["sni"] == NAME
    assert doc["tls_version"] in ("TLSv1.2", "TLSv1.3")
    leaf = load_pem_certs((served.out / "cert.pem").read_bytes())[0]
    intermediates = load_pem_certs((served.out / "chain.pem").read_bytes())
    chain = doc["chain"]
    assert len(chain) == 1 + len(intermediates)  # leaf + intermediates as served; the root is not sent
    assert chain[0]["serial"] == served.serial == serial_hex(leaf)
    assert chain[0]["fingerprint"] == fingerprint(leaf)
    assert chain[0]["sans"] == ["lb.example.test", "www.example.test"]
    assert chain[0]["not_after"].endswith("Z")
    assert chain[1]["subject"] == chain[0]["issuer"]
    assert [c["serial"] for c in chain[1:]] == [serial_hex(c) for c in intermediates]


def test_probe_with_a_wrong_bundle_is_not_verified_and_exits_nonzero(served: Served, tmp_path: Path) -> None:
    wrong = write_pem(tmp_path / "wrong-root.pem", make_ca("not the issuer").cert_pem)
    proc = certd_probe(served.endpoint, "--sni", NAME, "--ca-bundle", str(wrong), "--json")
    assert proc.returncode == EXIT_FAILED, (proc.stdout, proc.stderr)
    doc = json.loads(proc.stdout)  # still one JSON document: what was served is always reported
    assert doc["verified"] is False
    assert doc["error"].startswith("the served chain does not lead to the pinned roots")
    assert "candidates exhausted" not in doc["error"]  # cryptography's raw text is not the explanation
    assert doc["chain"][0]["serial"] == served.serial


def test_probe_without_a_bundle_speaks_of_the_system_store(served: Served) -> None:
    proc = certd_probe(served.endpoint, "--sni", NAME, "--json")
    assert proc.returncode == EXIT_FAILED
    doc = json.loads(proc.stdout)
    assert "the system trust store" in doc["error"] and "pinned" not in doc["error"]
    assert "Warning" not in proc.stderr  # loading the system store warns about nothing


def test_probe_with_a_name_the_certificate_lacks_is_not_verified(served: Served) -> None:
    proc = certd_probe(served.endpoint, "--sni", "other.example.test", "--ca-bundle", str(served.root), "--json")
    assert proc.returncode == EXIT_FAILED, (proc.stdout, proc.stderr)
    doc = json.loads(proc.stdout)
    assert doc["verified"] is False
    assert doc["error"] == ("the served certificate does not cover other.example.test "
                            "(it covers lb.example.test, www.example.test)")
    assert doc["chain"][0]["serial"] == served.serial  # HAProxy serves its only certificate regardless of SNI


def test_probe_human_output(served: Served) -> None:
    proc = certd_probe(served.endpoint, "--sni", NAME, "--ca-bundle", str(served.root))
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "verified" in proc.stdout and "NOT verified" not in proc.stdout
    assert served.serial[:16] in proc.stdout


def test_probe_of_a_closed_port_fails_cleanly(tmp_path: Path) -> None:
    from tests.servers.ports import free_port

    endpoint = f"127.0.0.1:{free_port()}"
    proc = certd_probe(endpoint, "--json")
    assert proc.returncode == EXIT_FAILED
    doc = json.loads(proc.stdout)
    assert doc["verified"] is False and doc["chain"] == [] and "handshake failed" in doc["error"]


def test_probe_with_an_unreadable_bundle_is_a_usage_error(served: Served, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    proc = certd_probe(served.endpoint, "--ca-bundle", str(garbage), "--json")
    assert proc.returncode == EXIT_USAGE


def test_diagnosis_names_the_certificate_and_the_cause() -> None:
    from datetime import UTC, datetime, timedelta

    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from certd.pki.probe import _diagnose

    def cert(start: datetime, end: datetime, names: list[str]) -> cx509.Certificate:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = cx509.Name([cx509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        return (cx509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(0xABC).not_valid_before(start).not_valid_after(end)
                .add_extension(cx509.SubjectAlternativeName([cx509.DNSName(n) for n in names]), critical=False)
                .sign(key, hashes.SHA256()))

    now = datetime(2026, 12, 1, tzinfo=UTC)
    old = cert(now - timedelta(days=10), now - timedelta(days=1), ["a.example.test"])
    assert _diagnose([old], "a.example.test", now) == (
        "the served leaf (CN=a.example.test, serial abc) expired at 2026-11-30T00:00:00Z")
    future = cert(now + timedelta(days=1), now + timedelta(days=10), ["a.example.test"])
    assert "is not valid before 2026-12-02T00:00:00Z" in (_diagnose([future], "a.example.test", now) or "")
    wild = cert(now - timedelta(days=1), now + timedelta(days=10), ["*.example.test"])
    assert _diagnose([wild], "b.example.test", now) is None
    assert _diagnose([wild], "x.b.example.test", now) == (
        "the served certificate does not cover x.b.example.test (it covers *.example.test)")


def _listener(answer: bytes | None) -> tuple[socket.socket, threading.Thread]:
    """A TCP server on a free port that answers every connection with ``answer`` (or stays silent)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            if answer is not None:
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        pytest.param(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", "handshake failed", id="plain-http"),
        pytest.param(None, "timed out", id="silent"),
        pytest.param(b"\x16\x03\x01\x00\x05garbage-after-a-tls-header" * 40, "handshake failed", id="garbage"),
    ],
)
def test_probe_of_something_that_is_not_tls(answer: bytes | None, expected: str) -> None:
    server, _ = _listener(answer)
    try:
        started = time.monotonic()
        proc = certd_probe(f"127.0.0.1:{server.getsockname()[1]}", "--timeout", "2s", "--json")
        assert time.monotonic() - started < 30  # bounded by --timeout, not by the peer
    finally:
        server.close()
    assert proc.returncode == EXIT_FAILED, (proc.stdout, proc.stderr)
    doc = json.loads(proc.stdout)
    assert doc["verified"] is False and doc["chain"] == [] and doc["tls_version"] is None
    assert doc["error"].startswith("handshake failed") and expected in doc["error"], doc["error"]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("endpoint", ["nohost", "[::1", ":443", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:\u00b2"])
def test_probe_of_an_endpoint_that_is_not_host_port(endpoint: str) -> None:
    proc = certd_probe(endpoint, "--json")
    assert proc.returncode == EXIT_FAILED and "Traceback" not in proc.stderr, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["verified"] is False and doc["chain"] == [] and doc["error"], doc
    if endpoint == "[::1":  # a host that does not resolve is a failed handshake, not a malformed endpoint
        assert doc["error"].startswith("handshake failed"), doc["error"]
    else:
        assert doc["error"] == f"{endpoint!r} is not HOST:PORT", doc["error"]


def test_probe_of_a_port_past_65535_does_not_reach_another_port() -> None:
    """getaddrinfo takes 65536 + P as port P: certd must refuse it, not report what P serves."""
    server, _ = _listener(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    try:
        port = server.getsockname()[1]
        proc = certd_probe(f"127.0.0.1:{port + 65536}", "--json")
    finally:
        server.close()
    assert proc.returncode == EXIT_FAILED
    assert json.loads(proc.stdout)["error"] == f"'127.0.0.1:{port + 65536}' is not HOST:PORT"
