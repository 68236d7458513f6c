"""Smoke tests for the real-server fixtures: if these fail, certd's integration tests fail for the wrong reason."""

from __future__ import annotations

import datetime as dt
import functools
import http.server
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsigkeyring
import dns.update
import pytest
import requests
import sqlalchemy as sa
from acme import challenges, client, crypto_util, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from tests.servers import tlsutil
from tests.servers.bind import BindServer
from tests.servers.haproxy import HaproxyServer
from tests.servers.nginx import NginxServer
from tests.servers.pebble import PebbleServer
from tests.servers.raw_acme import retry_bad_nonce

T = TypeVar("T")


def served_serial(port: int, cafile: Path, name: str = "localhost") -> int:
    ctx = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture
def certs(tmp_path: Path) -> tuple[tlsutil.CertKey, dict[str, Path]]:
    ca = tlsutil.make_ca()
    return ca, tlsutil.write_server_files(tmp_path, tlsutil.issue_server_cert(ca), ca)


# --- Pebble -------------------------------------------------------------------------------------------------


def acme_client(pebble: PebbleServer) -> tuple[client.ClientV2, JWKEC]:
    key = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    # Typed as bool, but handed to requests' `verify`, which takes a CA bundle path: that is how Pebble is trusted.
    net = client.ClientNetwork(key, alg=ES256, verify_ssl=str(pebble.ca_bundle))  # type: ignore[arg-type]
    acme = client.ClientV2(client.ClientV2.get_directory(pebble.directory_url, net), net)
    reg = messages.NewRegistration.from_data(terms_of_service_agreed=True)
    net.account = retry_bad_nonce(lambda: acme.new_account(reg))
    return acme, key


def issue(
    pebble: PebbleServer,
    name: str,
    kind: type[challenges.KeyAuthorizationChallenge],
    publish: Callable[[messages.ChallengeBody, JWKEC], None],
) -> x509.Certificate:
    acme, account_key = acme_client(pebble)
    leaf_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    order = retry_bad_nonce(lambda: acme.new_order(crypto_util.make_csr(leaf_key, [name])))
    for authz in order.authorizations:
        if authz.body.status == messages.STATUS_VALID:
            continue
        chall = next(c for c in authz.body.challenges if isinstance(c.chall, kind))
        publish(chall, account_key)
        response = chall.response(account_key)
        retry_bad_nonce(functools.partial(acme.answer_challenge, chall, response))
    deadline = dt.datetime.now() + dt.timedelta(seconds=30)
    done = retry_bad_nonce(lambda: acme.poll_and_finalize(order, deadline))
    return x509.load_pem_x509_certificates(done.fullchain_pem.encode())[0]


@pytest.fixture
def http01_responder(pebble: PebbleServer) -> Iterator[dict[str, str]]:
    """Stands in for certd's standalone responder on the port Pebble validates HTTP-01 on."""
    tokens: dict[str, str] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = tokens.get(self.path)
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write((body or "").encode())

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", pebble.http01_port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tokens
    server.shutdown()
    server.server_close()


def test_pebble_directory_over_verified_tls(pebble: PebbleServer) -> None:
    directory = requests.get(pebble.directory_url, verify=str(pebble.ca_bundle), timeout=10).json()
    assert {"newAccount", "newNonce", "newOrder"} <= directory.keys()
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(pebble.directory_url, timeout=10)  # not publicly trusted: the bundle is what makes it work
    roots = x509.load_pem_x509_certificates(pebble.roots_pem())
    intermediates = x509.load_pem_x509_certificates(pebble.intermediates_pem())
    assert roots and intermediates
    assert intermediates[0].issuer == roots[0].subject


def dns_names(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def test_pebble_issues_with_real_http01(pebble: PebbleServer, http01_responder: dict[str, str]) -> None:
    def publish(chall: messages.ChallengeBody, key: JWKEC) -> None:
        http01_responder[chall.chall.path] = chall.chall.validation(key)

    cert = issue(pebble, "smoke-http.example.test", challenges.HTTP01, publish)
    assert dns_names(cert) == ["smoke-http.example.test"]
    assert http01_responder, "Pebble must have validated against our responder"


def test_pebble_factory_options_reach_pebble(pebble_factory: Callable[..., PebbleServer]) -> None:
    strict = pebble_factory(nonce_reject=100)
    with pytest.raises(messages.Error) as exc_info:
        acme_client(strict)
    assert exc_info.value.code == "badNonce"


# --- BIND -----------------------------------------------------------------------------------------------------


def tsig_update(bind: BindServer, add: dict[str, str], delete: tuple[str, ...] = ()) -> None:
    keyring = dns.tsigkeyring.from_text(
        {bind.tsig_key_name: (bind.tsig_algorithm, bind.tsig_secret_file.read_text().strip())}
    )
    update = dns.update.UpdateMessage(bind.zone, keyring=keyring, keyalgorithm=bind.tsig_algorithm)
    for name, value in add.items():
        update.replace(name, 60, "TXT", f'"{value}"')
    for name in delete:
        update.delete(name)
    reply = dns.query.tcp(update, bind.host, port=bind.port, timeout=5)
    assert reply.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(reply.rcode())


def txt(bind: BindServer, fqdn: str) -> list[str]:
    reply = dns.query.tcp(dns.message.make_query(fqdn, "TXT"), bind.host, port=bind.port, timeout=5)
    return [s.decode() for rrset in reply.answer for rdata in rrset for s in rdata.strings]


def test_bind_answers_and_accepts_tsig_update(bind: BindServer) -> None:
    soa = dns.query.udp(dns.message.make_query(bind.zone, "SOA"), bind.host, port=bind.port, timeout=5)
    assert soa.answer and soa.answer[0].rdtype == dns.rdatatype.SOA
    tsig_update(bind, {"_acme-challenge.smoke": "token-123"})
    assert txt(bind, f"_acme-challenge.smoke.{bind.zone}") == ["token-123"]
    tsig_update(bind, {}, delete=("_acme-challenge.smoke",))  # the server is shared by the whole session
    assert txt(bind, f"_acme-challenge.smoke.{bind.zone}") == []
    unsigned = dns.update.UpdateMessage(bind.zone)
    unsigned.add("evil", 60, "TXT", '"x"')
    assert dns.query.tcp(unsigned, bind.host, port=bind.port, timeout=5).rcode() == dns.rcode.REFUSED


def test_pebble_dns01_validates_against_bind(pebble_dns01: PebbleServer, bind: BindServer) -> None:
    def publish(chall: messages.ChallengeBody, key: JWKEC) -> None:
        tsig_update(bind, {chall.chall.validation_domain_name("smoke-dns").rstrip("."): chall.chall.validation(key)})

    try:
        cert = issue(pebble_dns01, f"smoke-dns.{bind.zone}", challenges.DNS01, publish)
    finally:
        tsig_update(bind, {}, delete=("_acme-challenge.smoke-dns",))
    assert dns_names(cert) == [f"smoke-dns.{bind.zone}"]


# --- HAProxy / nginx ------------------------------------------------------------------------------------------


def test_haproxy_serves_tls_and_rotates_over_runtime_api(
    haproxy_factory: Callable[..., HaproxyServer], certs: tuple[tlsutil.CertKey, dict[str, Path]]
) -> None:
    ca, files = certs
    lb = haproxy_factory(files["combined"])
    resp = requests.get(f"https://localhost:{lb.port}/", verify=str(files["ca"]), timeout=5)
    assert resp.status_code == 200 and resp.text == "ok"
    first = served_serial(lb.port, files["ca"])
    shown = lb.runtime(f"show ssl cert {files['combined']}")
    assert f"Filename: {files['combined']}" in shown
    serial_line = next(line for line in shown.splitlines() if line.startswith("Serial: "))
    assert int(serial_line.removeprefix("Serial: "), 16) == first  # hex, zero-padded to whole bytes

    new = tlsutil.issue_server_cert(ca)
    payload = (new.key_pem + new.cert_pem).decode()
    assert "Transaction created" in lb.runtime(f"set ssl cert {files['combined']} <<\n{payload}")
    assert "Success!" in lb.runtime(f"commit ssl cert {files['combined']}")
    assert served_serial(lb.port, files["ca"]) == new.cert.serial_number
    assert b"haproxy" in Path(f"/proc/{lb.pid}/cmdline").read_bytes()  # same process, still serving


def test_haproxy_reencrypts_to_verified_backend(
    haproxy_factory: Callable[..., HaproxyServer], certs: tuple[tlsutil.CertKey, dict[str, Path]]
) -> None:
    _, files = certs
    backend = haproxy_factory(files["combined"])
    front = haproxy_factory(files["combined"], backend_server=f"127.0.0.1:{backend.port}", backend_ca_file=files["ca"])
    resp = requests.get(f"https://localhost:{front.port}/", verify=str(files["ca"]), timeout=5)
    assert resp.status_code == 200 and resp.text == "ok"


def test_nginx_serves_tls_and_survives_reload(
    nginx_factory: Callable[..., NginxServer], certs: tuple[tlsutil.CertKey, dict[str, Path]]
) -> None:
    ca, files = certs
    web = nginx_factory(files["fullchain"], files["key"])
    assert requests.get(f"https://localhost:{web.port}/", verify=str(files["ca"]), timeout=5).text == "ok\n"
    master = int(web.pid_file.read_text())
    new = tlsutil.issue_server_cert(ca)
    tlsutil.write_server_files(files["ca"].parent, new, ca)
    web.reload()
    assert served_serial(web.port, files["ca"]) == new.cert.serial_number
    assert int(web.pid_file.read_text()) == master == web.pid


# --- PostgreSQL -----------------------------------------------------------------------------------------------


def test_postgres_url_connects(postgres_url: str, postgres_admin_url: str) -> None:
    assert postgres_url.startswith("postgresql+psycopg://")
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select 1")).scalar() == 1
            assert (
                conn.execute(sa.text("select current_database()")).scalar() != sa.make_url(postgres_admin_url).database
            )
    finally:
        engine.dispose()
