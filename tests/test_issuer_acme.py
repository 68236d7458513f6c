"""The ACME issuer against real Pebble: real HTTP-01 (standalone and webroot) and real DNS-01 through BIND.

Pebble runs with its default 5% nonce rejection unless a test says otherwise; nothing here skips validation.
"""

from __future__ import annotations

import concurrent.futures
import functools
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import pytest
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from certd.config.load import load_config
from certd.engine.app import App
from certd.errors import IssuerUnavailable, RateLimited
from certd.issuers.acme.ari import cert_id
from certd.issuers.acme.errors import converted
from certd.issuers.acme.network import AcmeNetwork
from certd.pki.certs import load_pem_certs, serial_hex
from certd.pki.revocation import RevocationReason
from tests.cli import certd
from tests.conftest import WriteConfig
from tests.servers.ari import AriFront
from tests.servers.bind import BindServer
from tests.servers.pebble import PebbleServer
from tests.servers.ports import free_port

# Pebble reuses a valid authorization half of the time; these tests want every order validated for real.
NO_REUSE = {"PEBBLE_AUTHZREUSE": "0"}


def acme_config(
    pebble: PebbleServer,
    tmp: Path,
    certs: dict[str, list[str]],
    *,
    issuer_extra: str = "",
    cert_extra: str = "",
    http01: str | None = None,
    workers: int = 4,
) -> str:
    """A config with one ACME issuer on ``pebble`` and a certificate per entry of ``certs``."""
    roots = tmp / "pebble-roots.pem"
    if not roots.exists():
        roots.write_bytes(pebble.roots_pem())
    challenge = http01 if http01 is not None else f'http01_listen = "127.0.0.1:{pebble.http01_port}"'
    body = [
        f'[database]\nurl = "sqlite:///{tmp}/certd.db"\n',
        f"[daemon]\nworkers = {workers}\n",
        "[issuers.pebble]",
        'type = "acme"',
        f'directory = "{pebble.directory_url}"',
        f'ca_bundle = "{pebble.ca_bundle}"',
        f'roots = "{roots}"',
        'email = "ops@example.test"',
        challenge,
        issuer_extra,
        "",
    ]
    for name, names in certs.items():
        quoted = ", ".join(f'"{n}"' for n in names)
        body += [f"[certificates.{name}]", 'issuer = "pebble"', f"names = [{quoted}]",
                 f'output_dir = "{tmp}/out/{name}"', cert_extra, ""]
    return "\n".join(body)


@pytest.fixture
def open_app() -> Iterator[Callable[[Path], App]]:
    apps: list[App] = []

    def opener(path: Path) -> App:
        app = App.open(load_config(path))
        apps.append(app)
        return app

    yield opener
    for app in apps:
        app.close()


def served_leaf(app: App, name: str) -> x509.Certificate:
    out = app.config.certificates[name].output_dir
    return load_pem_certs((out / "cert.pem").read_bytes())[0]


def test_issue_renew_and_revoke_with_standalone_http01(
    pebble: PebbleServer, tmp_path: Path, write_config: WriteConfig, open_app: Callable[[Path], App]
) -> None:
    app = open_app(write_config(acme_config(pebble, tmp_path, {"edge": ["edge.example.test", "www.example.test"]})))
    first = app.pipeline.renew("edge")
    assert (first.outcome, first.state) == ("renewed", "published"), first.error
    leaf = served_leaf(app, "edge")
    assert serial_hex(leaf) == first.serial
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert sorted(sans) == ["edge.example.test", "www.example.test"]
    # the account was stored once and is reused by the renewal
    assert app.inventory.load_account("pebble", pebble.directory_url) is not None
    second = app.pipeline.renew("edge", force=True)
    assert second.outcome == "renewed" and second.serial != first.serial, second.error
    revoked = app.pipeline.revoke("edge", RevocationReason.SUPERSEDED)
    assert revoked.outcome == "revoked", revoked.error
    assert app.inventory.versions("edge")[0].state == "revoked"


def test_many_orders_share_one_responder(
    pebble: PebbleServer, tmp_path: Path, write_config: WriteConfig, open_app: Callable[[Path], App]
) -> None:
    certs = {f"c{i}": [f"c{i}.many.example.test"] for i in range(12)}
    app = open_app(write_config(acme_config(pebble, tmp_path, certs, workers=6)))
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda n: app.pipeline.renew(n, force=True), certs))
    assert [r.outcome for r in results] == ["renewed"] * len(certs), [r.error for r in results if r.error]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webroot_server(pebble: PebbleServer, tmp_path: Path) -> Iterator[Path]:
    """A plain static web server on Pebble's HTTP-01 port, serving the directory certd writes tokens into."""
    root = tmp_path / "webroot"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", pebble.http01_port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root
    server.shutdown()
    server.server_close()


def test_webroot_http01(
    pebble: PebbleServer, tmp_path: Path, webroot_server: Path, write_config: WriteConfig,
    open_app: Callable[[Path], App]
) -> None:
    http01 = f'http01_webroot = "{webroot_server}"'
    app = open_app(write_config(acme_config(pebble, tmp_path, {"web": ["web.example.test"]}, http01=http01)))
    result = app.pipeline.renew("web")
    assert result.outcome == "renewed", result.error
    challenge_dir = webroot_server / ".well-known" / "acme-challenge"
    assert list(challenge_dir.iterdir()) == []  # tokens removed after the order


def test_dns01_wildcard_through_bind(
    pebble_dns01: PebbleServer, bind: BindServer, tmp_path: Path, write_config: WriteConfig,
    open_app: Callable[[Path], App]
) -> None:
    dns = (f'challenge = "dns-01"\ndns_server = "{bind.address}"\ntsig_key_name = "{bind.tsig_key_name}"\n'
           f'tsig_secret_file = "{bind.tsig_secret_file}"\ndns_propagation_timeout = "30s"')
    zone = bind.zone
    names = [f"*.wild.{zone}", f"wild.{zone}"]
    app = open_app(write_config(acme_config(pebble_dns01, tmp_path, {"wild": names}, issuer_extra=dns, http01="")))
    result = app.pipeline.renew("wild")
    assert result.outcome == "renewed", result.error
    sans = served_leaf(app, "wild").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == sorted(names)
    assert _txt(bind, f"_acme-challenge.wild.{zone}") == []  # cleaned up


def _txt(bind: BindServer, name: str) -> list[str]:
    query = dns.message.make_query(name, "TXT")
    answer = dns.query.tcp(query, bind.host, port=bind.port, timeout=5)
    return [r.to_text() for rrset in answer.answer for r in rrset]


def test_fault_half_the_nonces_rejected(
    pebble_factory: Callable[..., PebbleServer], tmp_path: Path, write_config: WriteConfig,
    open_app: Callable[[Path], App]
) -> None:
    pebble = pebble_factory(nonce_reject=50, extra_env=NO_REUSE)
    certs = {f"n{i}": [f"n{i}.nonce.example.test"] for i in range(8)}
    app = open_app(write_config(acme_config(pebble, tmp_path, certs)))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda n: app.pipeline.renew(n, force=True), certs))
    assert [r.outcome for r in results] == ["renewed"] * len(certs), [r.error for r in results if r.error]


# -- bad input: a clear error naming certificate, step and problem; the old certificate stays ------------------

def _renew_fails(app: App, name: str) -> str:
    result = app.pipeline.renew(name, force=True)
    assert result.outcome == "failed", result
    assert result.error is not None
    return result.error


def test_failed_validation_keeps_the_old_certificate(
    pebble_factory: Callable[..., PebbleServer], tmp_path: Path, write_config: WriteConfig,
    open_app: Callable[[Path], App]
) -> None:
    pebble = pebble_factory(extra_env=NO_REUSE)  # a reused authorization would skip the failing validation
    path = write_config(acme_config(pebble, tmp_path, {"edge": ["keep.example.test"]}))
    app = open_app(path)
    assert app.pipeline.renew("edge").outcome == "renewed"
    before = (tmp_path / "out/edge/combined.pem").read_bytes()
    # webroot mode with no web server on the port: Pebble's validation cannot connect. A new inventory, so a new
    # ACME account: Pebble reuses a valid authorization of the same account now and then even with
    # PEBBLE_AUTHZREUSE=0 (seen once in CI), which would skip the failing validation.
    (tmp_path / "nowhere").mkdir()
    path.write_text(path.read_text().replace(f'http01_listen = "127.0.0.1:{pebble.http01_port}"',
                                             f'http01_webroot = "{tmp_path}/nowhere"')
                    .replace(f"{tmp_path}/certd.db", f"{tmp_path}/second.db"))
    app2 = open_app(path)
    error = _renew_fails(app2, "edge")
    assert "ACME pebble: edge" in error and "validation of keep.example.test failed" in error
    assert "connection" in error
    assert (tmp_path / "out/edge/combined.pem").read_bytes() == before


def test_unreachable_directory(tmp_path: Path, write_config: WriteConfig, open_app: Callable[[Path], App],
                               pebble: PebbleServer) -> None:
    body = acme_config(pebble, tmp_path, {"edge": ["x.example.test"]}).replace(
        pebble.directory_url, f"https://127.0.0.1:{free_port()}/dir")
    app = open_app(write_config(body))
    error = _renew_fails(app, "edge")
    assert "ACME pebble: edge: order: cannot reach" in error


def test_directory_that_is_not_acme(
    pebble: PebbleServer, tmp_path: Path, write_config: WriteConfig, open_app: Callable[[Path], App]
) -> None:
    body = acme_config(pebble, tmp_path, {"edge": ["x.example.test"]}).replace(
        pebble.directory_url, pebble.mgmt_url + "/roots/0")
    app = open_app(write_config(body))
    error = _renew_fails(app, "edge")
    assert "is not an ACME directory" in error


def test_tls_that_does_not_verify_against_ca_bundle(
    pebble: PebbleServer, tmp_path: Path, write_config: WriteConfig, open_app: Callable[[Path], App]
) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(pebble.roots_pem())  # a real CA, but not the one that signed Pebble's listener
    body = acme_config(pebble, tmp_path, {"edge": ["x.example.test"]}).replace(
        f'ca_bundle = "{pebble.ca_bundle}"', f'ca_bundle = "{other}"')
    app = open_app(write_config(body))
    error = _renew_fails(app, "edge")
    assert "does not verify against" in error and str(other) in error


def test_unknown_profile_is_named(
    pebble: PebbleServer, tmp_path: Path, write_config: WriteConfig, open_app: Callable[[Path], App]
) -> None:
    body = acme_config(pebble, tmp_path, {"edge": ["x.example.test"]}, issuer_extra='profile = "no-such-profile"')
    app = open_app(write_config(body))
    error = _renew_fails(app, "edge")
    assert "no profile 'no-such-profile'" in error


EAB_KEY = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"  # base64url, as CAs hand them out


@pytest.mark.parametrize("good", [True, False], ids=["accepted", "rejected"])
def test_external_account_binding(
    good: bool, pebble_factory: Callable[..., PebbleServer], tmp_path: Path, write_config: WriteConfig,
    open_app: Callable[[Path], App]
) -> None:
    pebble = pebble_factory(eab_keys={"kid-1": EAB_KEY})
    hmac_file = tmp_path / "eab.key"
    wrong = "A" * len(EAB_KEY)
    hmac_file.write_text((EAB_KEY if good else wrong) + "\n")
    extra = f'eab_kid = "kid-1"\neab_hmac_key_file = "{hmac_file}"'
    app = open_app(write_config(acme_config(pebble, tmp_path, {"edge": ["eab.example.test"]}, issuer_extra=extra)))
    result = app.pipeline.renew("edge")
    if good:
        assert result.outcome == "renewed", result.error
        return
    assert result.outcome == "failed" and result.error is not None
    assert "ACME pebble: edge: order:" in result.error and "unauthorized" in result.error
    assert EAB_KEY not in result.error and wrong not in result.error
    assert app.inventory.load_account("pebble", pebble.directory_url) is None  # nothing half-registered kept


def test_eab_required_but_not_configured(
    pebble_factory: Callable[..., PebbleServer], tmp_path: Path, write_config: WriteConfig,
    open_app: Callable[[Path], App]
) -> None:
    pebble = pebble_factory(eab_keys={"kid-1": EAB_KEY})
    app = open_app(write_config(acme_config(pebble, tmp_path, {"edge": ["eab.example.test"]})))
    error = _renew_fails(app, "edge")
    assert "requires External Account Binding" in error


def test_name_the_ca_refuses(
    pebble_factory: Callable[..., PebbleServer], tmp_path: Path, write_config: WriteConfig,
    open_app: Callable[[Path], App]
) -> None:
    pebble = pebble_factory(blocked_domains=["blocked.example.test"])
    app = open_app(write_config(acme_config(pebble, tmp_path, {"edge": ["www.blocked.example.test"]})))
    result = app.pipeline.renew("edge")
    assert result.outcome == "failed" and result.error is not None
    assert result.reason == "rejectedIdentifier" and "ACME pebble: edge: order: rejectedIdentifier" in result.error
    assert not (tmp_path / "out/edge").exists() or not (tmp_path / "out/edge/cert.pem").exists()


def test_tsig_key_the_server_refuses(
    pebble_dns01: PebbleServer, bind: BindServer, tmp_path: Path, write_config: WriteConfig,
    open_app: Callable[[Path], App]
) -> None:
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=\n")
    dns = (f'challenge = "dns-01"\ndns_server = "{bind.address}"\ntsig_key_name = "{bind.tsig_key_name}"\n'
           f'tsig_secret_file = "{wrong}"\ndns_propagation_timeout = "10s"')
    names = [f"refused.{bind.zone}"]
    app = open_app(write_config(acme_config(pebble_dns01, tmp_path, {"r": names}, issuer_extra=dns, http01="")))
    error = _renew_fails(app, "r")
    assert "ACME pebble: r: challenge:" in error and "TSIG" in error
    assert "c2VjcmV0" not in error and bind.tsig_secret not in error


def test_renew_all_force_of_200_certificates_through_the_cli(
    pebble: PebbleServer, tmp_path: Path, write_config: WriteConfig
) -> None:
    certs = {f"bulk{i}": [f"bulk{i}.fleet.example.test"] for i in range(200)}
    extra = "[issuers.pebble.rate_limits]\ncertificates_per_domain = 1000\nnew_orders = 1000"
    path = write_config(acme_config(pebble, tmp_path, certs, workers=16, issuer_extra=extra))
    proc = certd("renew", "--all", "--force", "--json", config=path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout)["results"]
    assert len(results) == 200
    assert {r["outcome"] for r in results} == {"renewed"}, [r for r in results if r["outcome"] != "renewed"][:3]
    assert len({r["serial"] for r in results}) == 200


# -- ARI (RFC 9773) through a renewalInfo front for Pebble ----------------------------------------------------

def test_ari_window_decides_and_the_renewal_carries_replaces(
    pebble: PebbleServer, ari_front: AriFront, tmp_path: Path, write_config: WriteConfig,
    open_app: Callable[[Path], App]
) -> None:
    ari_front.retry_after = 0  # ask again at the next scan
    body = acme_config(pebble, tmp_path, {"edge": ["ari.example.test"]}).replace(
        f'directory = "{pebble.directory_url}"', f'directory = "{ari_front.directory_url}"')
    app = open_app(write_config(body))
    first = app.pipeline.renew("edge")
    assert first.outcome == "renewed", first.error
    version = app.inventory.current_version("edge")
    assert version is not None and version.renew_at is not None and version.ari_cert_id is not None
    leaf = served_leaf(app, "edge")
    assert version.ari_cert_id == cert_id(leaf)
    # Pebble's certificates live five years: the lifetime rule alone would wait years; the default window is in
    # the next two hours, so the renewal time is there (less at most ten minutes of jitter).
    now = datetime.now(UTC)
    assert now + timedelta(minutes=45) < version.renew_at < now + timedelta(hours=2, minutes=1)
    assert app.pipeline.renew("edge").reason == "NotDue"

    # The CA moves the window into the past (as it does before revoking): the next refresh moves the renewal.
    ari_front.set_window(leaf.serial_number, now - timedelta(hours=1), now - timedelta(minutes=30))
    assert app.pipeline.refresh_renewal_info() == ["edge"]
    second = app.pipeline.renew("edge")
    assert (second.outcome, second.reason) == ("renewed", "RenewalTimeReached"), second.error
    # One renewal order; a badNonce retry (Pebble rejects 5% of nonces) re-sends the same body.
    assert ari_front.replaces_seen and set(ari_front.replaces_seen) == {cert_id(leaf)}
    kinds = [e.kind for e in app.inventory.events("edge")]
    assert "ari.window" in kinds


def test_without_ari_the_lifetime_rule_decides(
    pebble: PebbleServer, tmp_path: Path, write_config: WriteConfig, open_app: Callable[[Path], App]
) -> None:
    app = open_app(write_config(acme_config(pebble, tmp_path, {"edge": ["noari.example.test"]})))
    assert app.pipeline.renew("edge").outcome == "renewed"
    version = app.inventory.current_version("edge")
    assert version is not None and version.ari_cert_id is None and version.renew_at is not None
    lifetime = version.not_after - version.not_before
    assert version.renew_at >= version.not_before + lifetime * 2 / 3 - timedelta(minutes=10)


def test_account_key_rollover(
    pebble: PebbleServer, tmp_path: Path, write_config: WriteConfig, open_app: Callable[[Path], App]
) -> None:
    path = write_config(acme_config(pebble, tmp_path, {"edge": ["roll.example.test"]}))
    app = open_app(path)
    assert app.pipeline.renew("edge").outcome == "renewed"
    before = app.inventory.load_account("pebble", pebble.directory_url)
    proc = certd("account", "rollover", "pebble", "--json", config=path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    after = app.inventory.load_account("pebble", pebble.directory_url)
    assert before is not None and after is not None
    assert doc == {"issuer": "pebble", "account": before[1], "rolled_over": True}
    assert after[1] == before[1] and after[0] != before[0] and b"PRIVATE KEY" not in proc.stdout.encode()
    # A fresh process signs with the new key for the same account; the CA now refuses the old one.
    again = open_app(path).pipeline.renew("edge", force=True)
    assert again.outcome == "renewed", again.error
    app.inventory.save_account("pebble", pebble.directory_url, before[0], before[1])
    stale = open_app(path).pipeline.renew("edge", force=True)
    assert stale.outcome == "failed" and "ACME pebble: edge: order:" in (stale.error or ""), stale.error
    bad = certd("account", "rollover", "nope", config=path)
    assert bad.returncode == 2 and "no ACME issuer named nope" in bad.stderr


def test_preferred_chain_picks_the_alternate_root(
    pebble_factory: Callable[..., PebbleServer], tmp_path: Path, write_config: WriteConfig,
    open_app: Callable[[Path], App]
) -> None:
    pebble = pebble_factory(extra_env={"PEBBLE_ALTERNATE_ROOTS": "1"})
    alternate = load_pem_certs(pebble._mgmt_get("/roots/1"))[0]
    wanted = alternate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert isinstance(wanted, str)
    (tmp_path / "pebble-roots.pem").write_bytes(pebble.roots_pem() + pebble._mgmt_get("/roots/1"))
    extra = f'preferred_chain = "{wanted}"'
    app = open_app(write_config(acme_config(pebble, tmp_path, {"edge": ["chain.example.test"]}, issuer_extra=extra)))
    result = app.pipeline.renew("edge")
    assert result.outcome == "renewed", result.error
    chain = load_pem_certs((tmp_path / "out/edge/chain.pem").read_bytes())
    assert chain and chain[-1].issuer == alternate.subject  # the chain ends at the preferred root, not the default
    default_top = load_pem_certs(pebble.roots_pem())[0]
    assert chain[-1].issuer != default_top.subject


# -- the network's retries (certd.issuers.acme.network) against a real loopback server answering chosen faults ----

PROBLEM = "application/problem+json"


class _Scripted:
    """A real HTTP server on 127.0.0.1 that answers each request with the next scripted (status, headers, body);
    the last answer repeats. Records every (method, path) it was sent."""

    def __init__(self, answers: list[tuple[int, dict[str, str], dict[str, Any]]]) -> None:
        self.answers = answers
        self.seen: list[tuple[str, str]] = []
        script = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                script.seen.append((self.command, self.path))
                if self.command == "HEAD":  # newNonce
                    status, headers, doc = 200, {"Replay-Nonce": "bm9uY2U"}, {}
                else:
                    status, headers, doc = script.answers[min(len(script.seen_not_head()) - 1,
                                                              len(script.answers) - 1)]
                body = json.dumps(doc).encode() if doc else b""
                self.send_response(status)
                for key, value in {"Replay-Nonce": "bm9uY2U", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_HEAD = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def seen_not_head(self) -> list[tuple[str, str]]:
        return [s for s in self.seen if s[0] != "HEAD"]


@pytest.fixture
def scripted() -> Iterator[Callable[[list[tuple[int, dict[str, str], dict[str, Any]]]], _Scripted]]:
    servers: list[_Scripted] = []

    def start(answers: list[tuple[int, dict[str, str], dict[str, Any]]]) -> _Scripted:
        servers.append(_Scripted(answers))
        return servers[-1]

    yield start
    for s in servers:
        s.server.shutdown()
        s.server.server_close()


def _network(sleeps: list[float]) -> AcmeNetwork:
    key = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    return AcmeNetwork(key=key, alg=ES256, attempts=4, backoff=0.01, sleep=sleeps.append)


def _problem(code: str) -> dict[str, Any]:
    return {"type": f"urn:ietf:params:acme:error:{code}", "detail": f"scripted {code}"}


def test_network_retries_5xx_in_place_with_short_retry_after(scripted: Callable[..., _Scripted]) -> None:
    server = scripted([(503, {"Content-Type": PROBLEM, "Retry-After": "2"}, _problem("serverInternal")),
                       (500, {"Content-Type": PROBLEM}, _problem("serverInternal")),
                       (200, {"Content-Type": "application/json"}, {"newOrder": "x"})])
    sleeps: list[float] = []
    net = _network(sleeps)
    assert net.get(server.url + "/dir").json() == {"newOrder": "x"}
    assert len(server.seen_not_head()) == 3
    assert 2.0 <= sleeps[0] <= 2.5 and 0.02 <= sleeps[1] <= 0.025  # Retry-After, then backoff 0.01 * 2**1
    assert net.last_response is not None and net.last_response.status_code == 200


def test_network_gives_a_long_retry_after_back_to_the_scheduler(scripted: Callable[..., _Scripted]) -> None:
    for status, code, kind in [(503, "serverInternal", IssuerUnavailable), (429, "rateLimited", RateLimited)]:
        server = scripted([(status, {"Content-Type": PROBLEM, "Retry-After": "3600"}, _problem(code))])
        sleeps: list[float] = []
        net = _network(sleeps)
        where = "ACME x: edge: order"
        with pytest.raises(kind) as caught, converted(where, directory=server.url, ca_bundle=None,
                                                      last_response=lambda net=net: net.last_response):
            net.get(server.url + "/dir")
        assert isinstance(caught.value.__cause__, messages.Error)
        assert caught.value.reason == code and caught.value.retry_after == timedelta(hours=1)
        assert caught.value.message.startswith(f"ACME x: edge: order: {code}: scripted {code}")
        assert len(server.seen_not_head()) == 1 and sleeps == []  # no worker sleeps for an hour


def test_network_retries_bad_nonce_a_bounded_number_of_times(scripted: Callable[..., _Scripted]) -> None:
    bad = (400, {"Content-Type": PROBLEM}, _problem("badNonce"))
    ok = (200, {"Content-Type": "application/json"}, {"status": "valid"})
    server = scripted([bad, bad, bad, ok])
    net = _network([])
    assert net.post(server.url + "/order", None, new_nonce_url=server.url + "/nonce").json() == {"status": "valid"}
    assert len(server.seen_not_head()) == 4

    server = scripted([bad])
    with pytest.raises(messages.Error) as caught:
        net.post(server.url + "/order", None, new_nonce_url=server.url + "/nonce")
    assert caught.value.code == "badNonce"
    assert len(server.seen_not_head()) == 16  # the library's two tries, eight times: bounded, not endless
