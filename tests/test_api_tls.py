"""The API over TLS with client certificates (mTLS), on a real ``certd run``, with a real TLS client (requests).

Certificates are made here with ``cryptography``: a server CA, a client CA whose certificates the API
accepts, and a stranger CA whose certificates it must refuse.
"""

from __future__ import annotations

import datetime as dt
import signal
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import WriteConfig
from tests.servers.ports import free_port
from tests.servers.tlsutil import CertKey, issue_server_cert, make_ca, write_pem
from tests.test_daemon import Daemon

TOKEN = "mtls-test-token"


def _client_cert(ca: CertKey, name: str) -> CertKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return CertKey(cert, key)


@dataclass
class Pki:
    server_ca: Path
    server_cert: Path
    server_key: Path
    client_ca: Path
    client: tuple[str, str]
    stranger: tuple[str, str]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    server_ca, client_ca, stranger_ca = make_ca("api server CA"), make_ca("api client CA"), make_ca("stranger CA")
    server = issue_server_cert(server_ca, dns_names=("localhost",), ips=("127.0.0.1",))
    good, bad = _client_cert(client_ca, "ops-client"), _client_cert(stranger_ca, "ops-client")
    pair = {}
    for label, leaf in (("client", good), ("stranger", bad)):
        pair[label] = (str(write_pem(tmp_path / f"{label}.pem", leaf.cert_pem)),
                       str(write_pem(tmp_path / f"{label}.key", leaf.key_pem)))
    return Pki(
        server_ca=write_pem(tmp_path / "server-ca.pem", server_ca.cert_pem),
        server_cert=write_pem(tmp_path / "api.pem", server.cert_pem),
        server_key=write_pem(tmp_path / "api.key", server.key_pem),
        client_ca=write_pem(tmp_path / "client-ca.pem", client_ca.cert_pem),
        client=pair["client"], stranger=pair["stranger"],
    )


def _config(port: int, pki: Pki, listen: str = "127.0.0.1") -> str:
    return f"""
[daemon]
check_interval = "1h"
workers = 2
api_listen = "{listen}:{port}"
api_token_file = "{{tmp}}/api.token"
api_tls_cert_file = "{pki.server_cert}"
api_tls_key_file = "{pki.server_key}"
api_client_ca_file = "{pki.client_ca}"

[issuers.local]
type = "local-ca"
dir = "{{tmp}}/ca"

[certificates.a]
issuer = "local"
names = ["a.example.test"]
output_dir = "{{tmp}}/out/a"
"""


def _served_serial(port: int, pki: Pki) -> int:
    ctx = ssl.create_default_context(cafile=str(pki.server_ca))
    ctx.load_cert_chain(*pki.client)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_mtls_admits_only_clients_of_the_configured_ca(
    write_config: WriteConfig, sqlite_url: str, tmp_path: Path, pki: Pki
) -> None:
    (tmp_path / "api.token").write_text(TOKEN)
    port = free_port()
    # Not loopback, no api_read_auth: allowed because every connection needs a client certificate.
    config = write_config(_config(port, pki, listen="0.0.0.0"), db_url=sqlite_url)
    d = Daemon(config, port, tmp_path / "daemon.log", tls={"verify": str(pki.server_ca), "cert": pki.client})
    try:
        assert d.url.startswith("https://")
        listed = d.get("/v1/certificates")
        assert listed.status_code == 200 and listed.json()["certificates"][0]["name"] == "a"
        for who in (None, pki.stranger):
            with pytest.raises(requests.exceptions.RequestException):
                requests.get(d.url + "/v1/certificates", verify=str(pki.server_ca), cert=who, timeout=5)
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)  # no plain HTTP on the TLS port
        # A client certificate admits the connection; writes still need the token.
        renew = d.url + "/v1/certificates/a/renew"
        assert requests.post(renew, verify=str(pki.server_ca), cert=pki.client, timeout=5).status_code == 401
        ok = requests.post(renew, verify=str(pki.server_ca), cert=pki.client, timeout=5,
                           headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 202
    finally:
        assert d.stop() == 0


def test_sighup_serves_a_renewed_api_certificate(
    write_config: WriteConfig, sqlite_url: str, tmp_path: Path, pki: Pki
) -> None:
    (tmp_path / "api.token").write_text(TOKEN)
    port = free_port()
    config = write_config(_config(port, pki), db_url=sqlite_url)
    d = Daemon(config, port, tmp_path / "daemon.log", tls={"verify": str(pki.server_ca), "cert": pki.client})
    try:
        first = _served_serial(port, pki)
        assert first == x509.load_pem_x509_certificate(pki.server_cert.read_bytes()).serial_number
        ca = make_ca("api server CA 2")
        renewed = issue_server_cert(ca, dns_names=("localhost",), ips=("127.0.0.1",))
        write_pem(pki.server_cert, renewed.cert_pem)
        write_pem(pki.server_key, renewed.key_pem)
        write_pem(pki.server_ca, ca.cert_pem)
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30  # a reload on a busy machine (10 s ran out once in CI)
        while "API certificate reloaded" not in d.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "API certificate reloaded" in d.log.read_text(), d.log.read_text()[-3000:]
        assert _served_serial(port, pki) == renewed.cert.serial_number
    finally:
        assert d.stop() == 0


def test_an_unusable_tls_file_stops_the_daemon_naming_the_key(
    write_config: WriteConfig, sqlite_url: str, tmp_path: Path, pki: Pki
) -> None:
    import subprocess
    import sys

    from tests.test_daemon import REPO

    (tmp_path / "api.token").write_text(TOKEN)
    pki.server_key.write_text("not a key\n")
    config = write_config(_config(free_port(), pki), db_url=sqlite_url)
    done = subprocess.run([sys.executable, "-m", "certd", "-c", str(config), "run"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"{config}: daemon.api_tls_key_file: {pki.server_key} holds no unencrypted PEM private key" in done.stderr
