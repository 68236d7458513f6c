"""Contradictions in the config are refused before any CA is contacted (issue 10, item 4).

Each rejected configuration runs through the real CLI, for ``check-config``
and for ``renew --all``: exit 2, the file and the key path named, no
traceback, each problem once, and nothing ordered (the local CA's directory
was never created, no output directory was written, no version recorded).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from cryptography import x509

from certd.core.durations import parse_duration
from certd.pki.certs import load_pem_certs
from tests.conftest import LOCAL_CA_CONFIG, WriteConfig
from tests.test_cli import certd

EDGE_OUT = 'output_dir = "{tmp}/out/edge"'
BACKEND_LIFETIME = 'lifetime = "72h"'
ISSUER = 'type = "local-ca"\ndir = "{tmp}/local-ca"'
VAULT = """
[issuers.vault]
type = "vault"
url = "https://127.0.0.1:1"
role = "backend"
token_file = "{tmp}/vault.token"

[certificates.api]
issuer = "vault"
names = ["api.example.test"]
output_dir = "{tmp}/out/api"
"""
HAPROXY = '\n[deploy.lb]\ntype = "haproxy"\nsocket = "%s"\ncert = "{tmp}/haproxy/edge.pem"\n'
LB_CHECK = 'lb_checks = [{ socket = "%s", backend = "be_app", server = "backend1" }]'
NGINX = '\n[deploy.nginx]\ntype = "signal"\npid_file = "{tmp}/nginx.pid"\nsignal = "%s"\n'


def _local(old: str, new: str, *, daemon: str = "", extra: str = "") -> str:
    assert old in LOCAL_CA_CONFIG
    body = LOCAL_CA_CONFIG.replace(old, new) + extra
    return f"[daemon]\n{daemon}\n{body}" if daemon else body


def _edge(lines: str, **kw: str) -> str:
    return _local(EDGE_OUT, f"{EDGE_OUT}\n{lines}", **kw)


REJECTED = [
    # 1. renew_before that leaves less than the check's minimum validity for a known lifetime
    pytest.param(_edge('lifetime = "90d"\nrenew_before = "200d"'), "certificates.edge.renew_before",
                 "does not fit in a lifetime of 90d", id="renew-before-over-lifetime"),
    pytest.param(_edge('renew_before = "90d"'), "certificates.edge.renew_before",
                 "set by issuers.local.default_lifetime", id="renew-before-over-default-lifetime"),
    pytest.param(_local(BACKEND_LIFETIME, f'{BACKEND_LIFETIME}\nrenew_before = "71h59m"'),
                 "certificates.backend.renew_before", "renew_before + 1m", id="renew-before-leaves-no-floor"),
    pytest.param(_local(ISSUER, f'{ISSUER}\ndefault_lifetime = "30s"'), "certificates.edge.lifetime",
                 "is not longer than the 1m", id="default-lifetime-under-floor"),
    pytest.param(VAULT.replace('output_dir = "{tmp}/out/api"',
                               'output_dir = "{tmp}/out/api"\nlifetime = "24h"\nrenew_before = "1d"'),
                 "certificates.api.renew_before", "does not fit in a lifetime of 1d", id="vault-lifetime-known"),
    # 1b. contradictions (issue 19, class 8)
    pytest.param(_edge("rollback = true\nkeep = 0"), "certificates.edge", "keep = 0 keeps none",
                 id="rollback-without-generations"),
    pytest.param(_edge("renew_fraction = 0.9999999"), "certificates.edge", "inside the hard deadline",
                 id="renew-fraction-in-the-hard-deadline"),
    pytest.param(_local('"lb.example.test", "www.example.test"', '"1.2.3"'), "certificates.edge.names.0",
                 "its last label is all digits", id="all-numeric-name"),
    # 2. a lifetime the local CA cannot sign (no leaf outlives its intermediate)
    pytest.param(_edge('lifetime = "2000d"'), "certificates.edge.lifetime", "too long for issuer 'local'",
                 id="lifetime-over-ca"),
    pytest.param(_local(ISSUER, f'{ISSUER}\ndefault_lifetime = "1825d"'), "issuers.local.default_lifetime",
                 "too long for this CA", id="default-lifetime-over-ca"),
    # 3. owner and group unknown on this host
    pytest.param(_edge('owner = "certd-no-such-user"'), "certificates.edge.owner", "is not a user on this host",
                 id="unknown-owner"),
    pytest.param(_edge('group = "certd-no-such-group"'), "certificates.edge.group", "is not a group on this host",
                 id="unknown-group"),
    # 4. an unknown signal (and the certificate deploying to it gets no "unknown deploy target" on top)
    pytest.param(_edge('deploy = ["nginx"]', extra=NGINX % "BOGUS"), "deploy.nginx.signal",
                 "unknown signal 'BOGUS'", id="unknown-signal"),
    pytest.param(_edge('deploy = ["nginx"]', extra=NGINX % "SIGHUPP"), "deploy.nginx.signal",
                 "unknown signal 'SIGHUPP'", id="unknown-sig-name"),
    # 5. daemon intervals of zero or less
    pytest.param(_local(EDGE_OUT, EDGE_OUT, daemon='check_interval = "0s"'), "daemon.check_interval",
                 "must be longer than 0s", id="zero-check-interval"),
    pytest.param(_local(EDGE_OUT, EDGE_OUT, daemon='lease_ttl = "0m"'), "daemon.lease_ttl",
                 "must be longer than 0s", id="zero-lease-ttl"),
    pytest.param(_local(EDGE_OUT, EDGE_OUT, daemon='check_interval = "-5m"'), "daemon.check_interval",
                 "invalid duration '-5m'", id="negative-check-interval"),
    # 6. durations that would overflow
    pytest.param(_edge('renew_before = "99999999999d"'), "certificates.edge.renew_before",
                 "duration '99999999999d' is too long", id="overflowing-renew-before"),
    pytest.param(_local(BACKEND_LIFETIME, f'lifetime = "{"9" * 400}s"'), "certificates.backend.lifetime",
                 "is too long (at most 36500d", id="overflowing-lifetime"),
    pytest.param(_local(EDGE_OUT, EDGE_OUT, daemon='check_interval = "99999999999w"'), "daemon.check_interval",
                 "is too long", id="overflowing-check-interval"),
    # 7. output directories that nest, or meet a local CA's dir
    pytest.param(_local('"{tmp}/out/backend"', '"{tmp}/out/edge/backend"'), "certificates.backend.output_dir",
                 "is inside {tmp}/out/edge, the output_dir of certificates.edge", id="output-dir-nested"),
    pytest.param(_local(EDGE_OUT, 'output_dir = "{tmp}/out"'), "certificates.backend.output_dir",
                 "is inside {tmp}/out, the output_dir of certificates.edge", id="output-dir-containing"),
    pytest.param(_local(EDGE_OUT, 'output_dir = "{tmp}/local-ca/edge"'), "certificates.edge.output_dir",
                 "the dir of issuers.local", id="output-dir-inside-ca-dir"),
    pytest.param(_local(EDGE_OUT, 'output_dir = "{tmp}/local-ca"'), "certificates.edge.output_dir",
                 "is inside {tmp}/local-ca, the dir of issuers.local", id="output-dir-is-ca-dir"),
    pytest.param(_local(ISSUER, 'type = "local-ca"\ndir = "{tmp}/out/edge/ca"'), "certificates.edge.output_dir",
                 "holds {tmp}/out/edge/ca, the dir of issuers.local", id="output-dir-holds-ca-dir"),
    # 8. IPv6 names compared as addresses
    pytest.param(_local('"lb.example.test", "www.example.test"', '"2001:DB8::0001", "2001:db8::1"'),
                 "certificates.edge", "names lists 2001:db8::1 more than once", id="ipv6-duplicate"),
    # 9. one bad key in an issuer table: reported there, not as "unknown issuer" on every certificate
    pytest.param(_local(ISSUER, f"{ISSUER}\nbogus = 1"), "issuers.local.bogus", "unknown key",
                 id="issuer-unknown-key"),
    pytest.param(_local(ISSUER, f'{ISSUER}\nkey = "dsa"'), "issuers.local.key", "Input should be",
                 id="issuer-invalid-key"),
    # 10. ports out of range: 70000 would wrap or fail only at deploy time; "²" passes str.isdigit
    pytest.param(_edge('deploy = ["lb"]', extra=HAPROXY % "127.0.0.1:70000"), "deploy.lb.socket",
                 "a port from 1 to 65535", id="haproxy-socket-port-over-range"),
    pytest.param(_edge('deploy = ["lb"]', extra=HAPROXY % "ipv4@127.0.0.1:0"), "deploy.lb.socket",
                 "a port from 1 to 65535", id="haproxy-socket-port-zero"),
    pytest.param(_edge('deploy = ["lb"]', extra=HAPROXY % ""), "deploy.lb.socket", "is empty",
                 id="haproxy-socket-empty"),
    pytest.param(_local(BACKEND_LIFETIME, f"{BACKEND_LIFETIME}\n{LB_CHECK % '127.0.0.1:99999'}"),
                 "certificates.backend.lb_checks.0.socket", "a port from 1 to 65535", id="lb-check-port-over-range"),
    pytest.param(_local(EDGE_OUT, EDGE_OUT, daemon='api_listen = "127.0.0.1:\u00b2"'), "daemon.api_listen",
                 "a port from 1 to 65535", id="api-listen-superscript-port"),
]


def _nothing_ordered(tmp_path: Path) -> None:
    assert not (tmp_path / "local-ca").exists(), "the local CA was created"
    assert not (tmp_path / "out").exists(), "an output directory was written"
    db = tmp_path / "certd.db"
    if db.exists():
        with sqlite3.connect(db) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "versions" in tables:
                assert conn.execute("SELECT count(*) FROM versions").fetchone() == (0,)


@pytest.mark.parametrize("command", [("check-config",), ("renew", "--all")], ids=["check-config", "renew-all"])
@pytest.mark.parametrize(("body", "key", "problem"), REJECTED)
def test_rejected_before_the_ca_is_contacted(
    write_config: WriteConfig, tmp_path: Path, command: tuple[str, ...], body: str, key: str, problem: str
) -> None:
    path = write_config(body, db_url=f"sqlite:///{tmp_path}/certd.db")
    proc = certd(*command, config=path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{path}: {key}: " in proc.stderr
    assert problem.replace("{tmp}", str(tmp_path)) in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line.removeprefix("error: ") for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), "a problem was printed twice"
    assert "unknown issuer" not in proc.stderr and "unknown deploy target" not in proc.stderr
    _nothing_ordered(tmp_path)


def test_a_valid_config_still_passes_and_renews(write_config: WriteConfig, tmp_path: Path) -> None:
    # renew_before just fits the local CA's 90d default (90d - 1m); an IPv6 name written long-hand.
    body = _edge('renew_before = "89d23h58m"').replace('"www.example.test"', '"2001:DB8::0001"')
    path = write_config(body + NGINX % "sighup", db_url=f"sqlite:///{tmp_path}/certd.db")
    check = certd("check-config", config=path)
    assert check.returncode == 0, check.stderr
    assert "ok (2 certificates, 1 issuers, 1 deploy targets)" in check.stdout
    proc = certd("renew", "--all", "--json", config=path)
    assert proc.returncode == 0, proc.stderr
    assert {r["name"]: r["outcome"] for r in json.loads(proc.stdout)["results"]} == {
        "edge": "renewed", "backend": "renewed"}
    leaf = load_pem_certs((tmp_path / "out/edge/cert.pem").read_bytes())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["2001:db8::1"]
    listed = json.loads(certd("list", "--json", config=path, check=True).stdout)["certificates"]
    assert {c["name"]: c["names"] for c in listed}["edge"] == ["lb.example.test", "2001:db8::1"]


def test_undecidable_lifetimes_are_left_to_the_check_step(write_config: WriteConfig, tmp_path: Path) -> None:
    """Vault without a lifetime: its role's ttl decides, so the config cannot compare renew_before with it."""
    body = VAULT.replace('output_dir = "{tmp}/out/api"', 'output_dir = "{tmp}/out/api"\nrenew_before = "3650d"')
    proc = certd("check-config", config=write_config(body, db_url=f"sqlite:///{tmp_path}/certd.db"))
    assert proc.returncode == 0, proc.stderr


def test_strict_prints_each_problem_once(write_config: WriteConfig, tmp_path: Path) -> None:
    bundle = 'verify = [{ endpoint = "127.0.0.1:1", ca_bundle = "{tmp}/missing.pem" }]'
    body = _local(EDGE_OUT, f"{EDGE_OUT}\n{bundle}").replace(
        'output_dir = "{tmp}/out/backend"', f'output_dir = "{{tmp}}/out/backend"\n{bundle}')
    path = write_config(body, db_url=f"sqlite:///{tmp_path}/certd.db")
    for args, code in ((("check-config", "--strict"), 2), (("check-config",), 0)):
        proc = certd(*args, config=path)
        assert proc.returncode == code, proc.stderr
        (line,) = [line for line in proc.stderr.splitlines() if "missing.pem" in line]
        assert f"{path}: certificates.edge.verify[0].ca_bundle: {tmp_path}/missing.pem does not exist" in line
        assert "certificates.backend.verify[0].ca_bundle" in line


@pytest.mark.parametrize("text", ["99999999999d", "9" * 400 + "s", "36500d1s"])
def test_huge_durations_are_value_errors(text: str) -> None:
    with pytest.raises(ValueError, match="is too long"):
        parse_duration(text)
