"""The HTTP-01 and DNS-01 solvers against real components: real sockets, a real file system, a real BIND."""

from __future__ import annotations

import base64
import secrets
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import requests

from certd.config.model import AcmeIssuerConfig
from certd.errors import ConfigError, IssuerError
from certd.issuers.challenges.base import Challenge
from certd.issuers.challenges.dns01_rfc2136 import Rfc2136Dns01, build_dns01, read_tsig_secret, record_name
from certd.issuers.challenges.http01 import StandaloneHttp01, WebrootHttp01, build_http01
from tests.servers.bind import BindServer
from tests.servers.ports import HOST, free_port, tcp_open


def _token() -> str:
    return secrets.token_urlsafe(32)


def _challenge(domain: str) -> Challenge:
    token = _token()
    return Challenge(domain, token, f"{token}.{_token()}")


def _get(port: int, token: str) -> requests.Response:
    return requests.get(f"http://{HOST}:{port}/.well-known/acme-challenge/{token}", timeout=5)


# -- HTTP-01 standalone ------------------------------------------------------------------------------------


def test_standalone_shared_by_many_threads_and_closed_after_last_cleanup() -> None:
    port = free_port()
    solvers = [StandaloneHttp01(f"{HOST}:{port}"), StandaloneHttp01(f"{HOST}:{port}")]
    challenges = [_challenge(f"host{i}.example.test") for i in range(20)]
    barrier = threading.Barrier(len(challenges))
    errors: list[BaseException] = []
    done = threading.Barrier(len(challenges) + 1)
    release = threading.Event()

    def order(i: int) -> None:
        solver, ch = solvers[i % 2], challenges[i]
        try:
            barrier.wait(10)
            solver.present([ch])
            response = _get(port, ch.token)
            assert response.status_code == 200
            assert response.text == ch.validation
            assert response.headers["Content-Type"] == "text/plain"
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.wait(30)
            release.wait(30)
            solver.cleanup([ch])

    threads = [threading.Thread(target=order, args=(i,)) for i in range(len(challenges))]
    for t in threads:
        t.start()
    done.wait(30)
    # Every order is pending: all tokens answer, an unknown one and other paths do not.
    assert not errors, errors
    for ch in challenges:
        assert _get(port, ch.token).text == ch.validation
    assert _get(port, _token()).status_code == 404
    assert requests.get(f"http://{HOST}:{port}/", timeout=5).status_code == 404
    release.set()
    for t in threads:
        t.join(30)
    assert not tcp_open(port), "the responder must stop listening once no challenge is pending"


def test_standalone_restarts_for_the_next_order_and_cleanup_is_idempotent() -> None:
    port = free_port()
    solver = StandaloneHttp01(f"{HOST}:{port}")
    for _ in range(3):
        ch = _challenge("again.example.test")
        solver.present([ch])
        assert _get(port, ch.token).text == ch.validation
        solver.cleanup([ch])
        solver.cleanup([ch])
        assert not tcp_open(port)


def test_standalone_cleanup_of_unpresented_challenge_keeps_others_served() -> None:
    port = free_port()
    solver = StandaloneHttp01(f"{HOST}:{port}")
    kept, stray = _challenge("kept.example.test"), _challenge("stray.example.test")
    solver.present([kept])
    try:
        solver.cleanup([stray])
        assert _get(port, kept.token).text == kept.validation
    finally:
        solver.cleanup([kept])
    assert not tcp_open(port)


def test_standalone_port_in_use_is_a_clear_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        solver = StandaloneHttp01(f"{HOST}:{port}")
        ch = _challenge("busy.example.test")
        with pytest.raises(IssuerError) as info:
            solver.present([ch])
        solver.cleanup([ch])
    message = str(info.value)
    assert f"{HOST}:{port}" in message
    assert "http01_listen" in message and "http01_webroot" in message
    assert info.value.retryable


def test_standalone_listens_on_ipv6_literal() -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
            port = probe.getsockname()[1]
    except OSError:
        pytest.skip("no IPv6 loopback here")
    solver = StandaloneHttp01(f"[::1]:{port}")
    ch = _challenge("v6.example.test")
    solver.present([ch])
    try:
        response = requests.get(f"http://[::1]:{port}/.well-known/acme-challenge/{ch.token}", timeout=5)
        assert response.text == ch.validation
    finally:
        solver.cleanup([ch])
    assert not tcp_open(port, "::1")


def test_standalone_refuses_a_token_that_is_not_base64url() -> None:
    solver = StandaloneHttp01(f"{HOST}:{free_port()}")
    with pytest.raises(IssuerError):
        solver.present([Challenge("x.example.test", "../etc/passwd", "v")])


# -- HTTP-01 webroot ----------------------------------------------------------------------------------------


def test_webroot_writes_readable_files_and_removes_them(tmp_path: Path) -> None:
    solver = WebrootHttp01(tmp_path)
    challenges = [_challenge("a.example.test"), _challenge("*.example.test")]
    solver.present(challenges)
    directory = tmp_path / ".well-known" / "acme-challenge"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    assert stat.S_IMODE(directory.parent.stat().st_mode) == 0o755
    for ch in challenges:
        path = directory / ch.token
        assert path.read_text() == ch.validation
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in directory.iterdir()) == sorted(ch.token for ch in challenges), "no temp files"
    solver.cleanup(challenges)
    assert directory.is_dir() and not list(directory.iterdir())
    solver.cleanup(challenges)  # again: nothing to do, no error


def test_webroot_not_writable_names_the_path(tmp_path: Path) -> None:
    directory = tmp_path / ".well-known" / "acme-challenge"
    directory.mkdir(parents=True)
    (tmp_path / ".well-known" / "acme-challenge").chmod(0o555)
    try:
        if _can_write(directory):
            pytest.skip("running with CAP_DAC_OVERRIDE: permissions are not enforced")
        with pytest.raises(IssuerError, match=str(directory)):
            WebrootHttp01(tmp_path).present([_challenge("a.example.test")])
    finally:
        directory.chmod(0o755)


def test_webroot_missing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(IssuerError, match="http01_webroot"):
        WebrootHttp01(tmp_path / "nope").present([_challenge("a.example.test")])


def test_webroot_read_only_file_system_path_names_the_path(tmp_path: Path) -> None:
    """A file where the directory should be: fails even for root, and the message names where."""
    (tmp_path / ".well-known").write_text("in the way")
    with pytest.raises(IssuerError, match=str(tmp_path / ".well-known")):
        WebrootHttp01(tmp_path).present([_challenge("a.example.test")])


def _can_write(directory: Path) -> bool:
    probe = directory / ".probe"
    try:
        probe.write_text("x")
    except OSError:
        return False
    probe.unlink()
    return True


def test_build_http01_picks_webroot_or_standalone(tmp_path: Path) -> None:
    base = {"type": "acme", "directory": "https://acme.example.test/dir"}
    assert isinstance(build_http01(AcmeIssuerConfig(**base, http01_webroot=tmp_path)), WebrootHttp01)
    standalone = build_http01(AcmeIssuerConfig(**base, http01_listen="127.0.0.1:5002"))
    assert isinstance(standalone, StandaloneHttp01) and standalone.listen == "127.0.0.1:5002"
    default = build_http01(AcmeIssuerConfig(**base))
    assert isinstance(default, StandaloneHttp01) and default.listen == "0.0.0.0:80"


# -- DNS-01 over RFC 2136 against BIND ----------------------------------------------------------------------


@pytest.fixture
def dns01(bind: BindServer) -> Rfc2136Dns01:
    return Rfc2136Dns01(
        bind.address,
        tsig_key_name=bind.tsig_key_name,
        tsig_secret=bind.tsig_secret,
        tsig_algorithm=bind.tsig_algorithm,
        propagation_timeout=10,
        timeout=5,
    )


def _ask(bind: BindServer, name: str, rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
    return dns.query.tcp(dns.message.make_query(name, rdtype), bind.host, port=bind.port, timeout=5)


def _txt(bind: BindServer, name: str) -> set[str]:
    reply = _ask(bind, name, dns.rdatatype.TXT)
    return {b"".join(r.strings).decode() for rrset in reply.answer for r in rrset}


@pytest.fixture
def label() -> Iterator[str]:
    """A fresh name per test, so tests sharing the session's BIND never see each other's records."""
    yield f"t{secrets.token_hex(4)}"


def test_dns01_wildcard_and_apex_share_the_name_and_cleanup_restores_the_wildcard(
    bind: BindServer, dns01: Rfc2136Dns01, label: str
) -> None:
    domain = f"{label}.{bind.zone}"
    name = f"_acme-challenge.{domain}"
    assert _ask(bind, domain, dns.rdatatype.A).answer, "the zone's wildcard answers before"
    challenges = [_challenge(f"*.{domain}"), _challenge(domain)]
    try:
        dns01.present(challenges)
        assert _txt(bind, name) == {ch.validation for ch in challenges}
    finally:
        dns01.cleanup(challenges)
    reply = _ask(bind, name, dns.rdatatype.TXT)
    assert not reply.answer
    assert reply.rcode() in (dns.rcode.NXDOMAIN, dns.rcode.NOERROR)
    a = _ask(bind, domain, dns.rdatatype.A)
    assert [r.address for rrset in a.answer for r in rrset] == ["127.0.0.1"], "wildcard A must answer again"


def test_dns01_cleanup_leaves_another_orders_value(bind: BindServer, dns01: Rfc2136Dns01, label: str) -> None:
    domain = f"{label}.{bind.zone}"
    first, second = _challenge(domain), _challenge(domain)
    try:
        dns01.present([first])
        dns01.present([second])
        dns01.cleanup([first])
        assert _txt(bind, f"_acme-challenge.{domain}") == {second.validation}
    finally:
        dns01.cleanup([first, second])
    assert not _txt(bind, f"_acme-challenge.{domain}")


def test_dns01_wrong_tsig_secret_is_refused_without_leaking_it(bind: BindServer, label: str) -> None:
    wrong = base64.b64encode(secrets.token_bytes(32)).decode()
    solver = Rfc2136Dns01(
        bind.address, tsig_key_name=bind.tsig_key_name, tsig_secret=wrong, propagation_timeout=2, timeout=5
    )
    ch = _challenge(f"{label}.{bind.zone}")
    with pytest.raises(IssuerError) as info:
        solver.present([ch])
    solver.cleanup([ch])
    message = str(info.value)
    assert wrong not in message and bind.tsig_secret not in message
    assert bind.tsig_key_name in message and bind.zone in message and "refused" in message
    assert wrong not in repr(solver)
    assert not _txt(bind, f"_acme-challenge.{label}.{bind.zone}")


def test_dns01_unsigned_update_is_refused(bind: BindServer, label: str) -> None:
    solver = Rfc2136Dns01(bind.address, propagation_timeout=2, timeout=5)
    with pytest.raises(IssuerError, match="refused"):
        solver.present([_challenge(f"{label}.{bind.zone}")])


def test_dns01_name_outside_every_zone_is_a_clear_error(dns01: Rfc2136Dns01, bind: BindServer) -> None:
    with pytest.raises(IssuerError) as info:
        dns01.present([_challenge("www.example.invalid")])
    assert "not authoritative" in str(info.value) and "example.invalid" in str(info.value)
    assert bind.address in str(info.value)


def test_dns01_unreachable_server_is_retryable() -> None:
    solver = Rfc2136Dns01(f"{HOST}:{free_port(udp_too=True)}", timeout=0.5)
    with pytest.raises(IssuerError) as info:
        solver.present([_challenge("a.example.test")])
    assert info.value.retryable


def test_record_name_strips_the_wildcard() -> None:
    assert record_name("*.example.test") == dns.name.from_text("_acme-challenge.example.test")
    assert record_name("example.test") == dns.name.from_text("_acme-challenge.example.test")


def test_build_dns01_reads_bind_key_file_and_bare_secret(bind: BindServer, tmp_path: Path, label: str) -> None:
    key_file = tmp_path / "tsig.key"
    key_file.write_text(
        f'key "{bind.tsig_key_name}" {{\n\talgorithm {bind.tsig_algorithm};\n\tsecret "{bind.tsig_secret}";\n}};\n'
    )
    assert read_tsig_secret(key_file) == (bind.tsig_secret, bind.tsig_key_name, bind.tsig_algorithm)
    assert read_tsig_secret(bind.tsig_secret_file) == (bind.tsig_secret, None, None)
    for secret_file in (key_file, bind.tsig_secret_file):
        config = AcmeIssuerConfig(
            type="acme",
            directory="https://acme.example.test/dir",
            challenge="dns-01",
            dns_server=bind.address,
            tsig_key_name=bind.tsig_key_name,
            tsig_secret_file=secret_file,
            dns_propagation_timeout="5s",
        )
        solver = build_dns01(config)
        ch = _challenge(f"{label}.{bind.zone}")
        try:
            solver.present([ch])
            assert _txt(bind, f"_acme-challenge.{label}.{bind.zone}") == {ch.validation}
        finally:
            solver.cleanup([ch])


def test_build_dns01_refuses_a_key_file_for_another_key(bind: BindServer, tmp_path: Path) -> None:
    key_file = tmp_path / "tsig.key"
    key_file.write_text(f'key "other" {{ algorithm hmac-sha256; secret "{bind.tsig_secret}"; }};\n')
    config = AcmeIssuerConfig(
        type="acme",
        directory="https://acme.example.test/dir",
        challenge="dns-01",
        dns_server=bind.address,
        tsig_key_name=bind.tsig_key_name,
        tsig_secret_file=key_file,
    )
    with pytest.raises(ConfigError) as info:
        build_dns01(config)
    assert bind.tsig_secret not in str(info.value)


def test_bad_base64_secret_is_a_config_error_without_the_secret() -> None:
    with pytest.raises(ConfigError) as info:
        Rfc2136Dns01(f"{HOST}:53", tsig_key_name="k", tsig_secret="not*base64!")
    assert "not*base64!" not in str(info.value)
