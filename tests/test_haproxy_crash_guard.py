"""HAProxy 2.6 crashes on a ca-file update after the client certificate its server lines pin was replaced at
runtime following an earlier ca-file update (haproxy#3165, reproduced here on Debian's 2.6.12 without certd).

certd refuses that third command (the bundle is on disk; a reload loads it) instead of killing the load
balancer, and a reloaded HAProxy (a new process) starts clean. Real HAProxy re-encrypting to a real nginx.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from certd.config.model import HaproxyDeployConfig
from certd.deploy.base import DeployContext, PublishedPaths
from certd.deploy.haproxy import HaproxyTarget
from certd.errors import DeployError
from certd.pki.certs import serial_hex
from certd.pki.keys import key_pem
from tests.servers.haproxy import HaproxyServer
from tests.servers.tlsutil import CertKey, issue_server_cert, make_ca, write_pem, write_server_files

BACKEND = "backend.internal"


def _client_cert(ca: CertKey) -> CertKey:
    """HAProxy's client certificate for the backends: clientAuth, as `certd haproxy-config --client-cert` wants."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = ca.cert.not_valid_before_utc
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "lb")]))
            .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + timedelta(days=7))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca.key, hashes.SHA256()))
    return CertKey(cert, key)


def _ctx(client: CertKey, ca: CertKey, tmp_path: Path) -> DeployContext:
    pem = client.key_pem + client.cert_pem
    return DeployContext(certificate="lb-client", serial=serial_hex(client.cert), names=("lb",), leaf=client.cert,
                         chain=(), roots=(ca.cert,), key_pem=key_pem(client.key), fullchain_pem=client.cert_pem,
                         combined_pem=pem, paths=PublishedPaths.under(tmp_path))


def test_the_crashing_sequence_is_refused_and_haproxy_stays_up(
    haproxy_factory: Any, nginx_factory: Any, tmp_path: Path
) -> None:
    ca, edge_ca = make_ca("backend CA"), make_ca("edge CA")
    for sub in ("edge", "be"):
        (tmp_path / sub).mkdir()
    edge = write_server_files(tmp_path / "edge", issue_server_cert(edge_ca, ["lb.example.test"]), edge_ca)
    backend = write_server_files(tmp_path / "be", issue_server_cert(ca, [BACKEND]), ca)
    client = _client_cert(ca)
    client_file = write_pem(tmp_path / "client.pem", client.key_pem, client.cert_pem)
    bundle = write_pem(tmp_path / "bundle.pem", ca.cert_pem)
    nginx = nginx_factory(backend["fullchain"], backend["key"])
    workdir = tmp_path / "lb"
    workdir.mkdir()

    def start() -> HaproxyServer:
        server: HaproxyServer = haproxy_factory(
            edge["combined"], backend_server=f"127.0.0.1:{nginx.port}", backend_ca_file=bundle,
            backend_sni=f'"{BACKEND}"', backend_options=f"verifyhost {BACKEND} check check-ssl check-sni {BACKEND} "
            f"inter 200ms crt {client_file}", workdir=workdir)
        return server

    haproxy = start()
    target = HaproxyTarget("lb", HaproxyDeployConfig(type="haproxy", socket=str(haproxy.socket), cert=client_file,
                                                     ca_file=bundle, timeout=timedelta(seconds=5)))
    assert "now holds 2" in (target.push_ca_file(bundle, ca.cert_pem + make_ca("extra 1").cert_pem) or "")
    target.deploy(_ctx(_client_cert(ca), ca, tmp_path))  # HAProxy's client certificate renewed at runtime
    with pytest.raises(DeployError) as refused:
        target.push_ca_file(bundle, ca.cert_pem + make_ca("extra 2").cert_pem)
    assert refused.value.reason == "HaproxyWouldCrash" and "reload HAProxy" in str(refused.value)
    assert haproxy._proc.proc.poll() is None and "Pid:" in haproxy.runtime("show info")  # still serving

    haproxy.stop()  # the operator reloads (a new process): the sequence starts clean
    haproxy = start()
    target = HaproxyTarget("lb", HaproxyDeployConfig(type="haproxy", socket=str(haproxy.socket), cert=client_file,
                                                     ca_file=bundle, timeout=timedelta(seconds=5)))
    assert "now holds 2" in (target.push_ca_file(bundle, ca.cert_pem + make_ca("extra 3").cert_pem) or "")
    assert haproxy._proc.proc.poll() is None
