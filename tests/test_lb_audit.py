"""``certd haproxy-config`` and ``certd audit-lb`` against real servers: HAProxy and nginx as the load balancer,
re-encrypting to a real nginx backend whose certificate comes from certd's local CA.

Broken configs mark what the audit must find with a trailing ``# expect: code code`` comment on the very line
the finding must name (both parsers ignore comments), so every finding's line and code is asserted, and
nothing else may be found.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from certd.pki.certs import load_pem_certs, serial_hex
from tests.cli import certd as run_certd
from tests.servers.fixtures import require
from tests.servers.haproxy import HaproxyServer
from tests.servers.nginx import NginxServer
from tests.servers.ports import HOST, ServerProcess, free_port, make_workdir, tcp_open

BACKEND = "backend-1.internal"

_CERTD_TOML = """\
[database]
url = "sqlite:///{tmp}/certd.db"

[issuers.local]
type = "local-ca"
dir = "{tmp}/local-ca"
bundle_file = "{tmp}/pinned/local-ca.pem"

[certificates.edge]
issuer = "local"
names = ["lb.example.test", "127.0.0.1"]
output_dir = "{tmp}/out/edge"

[certificates.backend-1]
issuer = "local"
names = ["10.0.0.5", "{backend}"]
output_dir = "{tmp}/out/backend-1"
"""

# What the operator already has: the generated lines go next to it (as a second `-f` file).
_BASE_CFG = """\
global
    stats socket {sock} mode 600 level admin
    log stderr format raw local0 info

defaults
    mode http
    log global
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout check 2s
    default-server inter 300ms fall 2 rise 1
"""


def certd(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run_certd(*args, config=config)


def expected(text: str) -> set[tuple[int, str]]:
    """(line, code) for every ``# expect: a b`` marker."""
    out = set()
    for no, line in enumerate(text.splitlines(), 1):
        m = re.search(r"#\s*expect:\s*(.+)$", line)
        if m:
            out |= {(no, code) for code in m.group(1).split()}
    return out


def found(doc: dict[str, Any]) -> set[tuple[int, str]]:
    return {(f["line"], f["code"]) for f in doc["findings"]}


def audit(path: Path, *args: str, config: Path | None = None) -> tuple[int, dict[str, Any]]:
    proc = certd("audit-lb", str(path), "--json", *args, config=config)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


class GeneratedHaproxy(HaproxyServer):
    """HAProxy running the operator's base config plus certd's generated lines, as two ``-f`` files.

    Reuses ``HaproxyServer.runtime`` and ``stop``; only what it loads differs.
    """

    def __init__(self, workdir: Path, base: str, generated: str, port: int) -> None:
        self.workdir = workdir
        self._own_workdir = False
        self.port = port
        self.socket = workdir / "admin.sock"
        self.config = workdir / "base.cfg"
        self.config.write_text(base.format(sock=self.socket))
        self.generated = workdir / "certd-lb.cfg"
        self.generated.write_text(generated)
        argv = ["haproxy", "-db", "-f", str(self.config), "-f", str(self.generated)]
        check = subprocess.run([*argv[:1], "-c", *argv[2:]], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        self._proc = ServerProcess("haproxy", argv, workdir / "haproxy.log", cwd=workdir)
        self.pid = self._proc.pid
        try:
            self._proc.wait_until(lambda: tcp_open(port) and "Name: HAProxy" in self.runtime("show info"),
                                  f"TLS port {port} and runtime socket")
        except BaseException:
            self.stop()
            raise

    def check_status(self, backend: str, server: str) -> str:
        rows = csv.DictReader(io.StringIO(self.runtime("show stat").lstrip("# ")))
        return next(r["check_status"] for r in rows if (r["pxname"], r["svname"]) == (backend, server))

    def wait_check(self, backend: str, server: str, want: Callable[[str], bool], timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            status = self.check_status(backend, server).removeprefix("* ")  # "* X": a check is running now
            if want(status):
                return status
            time.sleep(0.1)
        raise AssertionError(f"{backend}/{server}: check status {status!r} after {timeout}s\n"
                             f"{(self.workdir / 'haproxy.log').read_text()[-3000:]}")


@dataclass
class Estate:
    tmp: Path
    config: Path
    bundle: Path
    backend: NginxServer
    serial: str


@pytest.fixture
def estate(tmp_path: Path, nginx_factory: Callable[..., NginxServer]) -> Estate:
    """certd's local CA issues the edge and the backend certificate (bundle_file written); nginx serves the backend."""
    config = tmp_path / "certd.toml"
    config.write_text(_CERTD_TOML.format(tmp=tmp_path, backend=BACKEND))
    issued = certd("renew", "--all", "--json", config=config)
    assert issued.returncode == 0, issued.stderr
    out = tmp_path / "out/backend-1"
    backend = nginx_factory(out / "fullchain.pem", out / "privkey.pem")
    serial = serial_hex(load_pem_certs((out / "cert.pem").read_bytes())[0])
    return Estate(tmp_path, config, tmp_path / "pinned/local-ca.pem", backend, serial)


@pytest.fixture
def haproxy_workdir() -> Iterator[Callable[[str, str, int], GeneratedHaproxy]]:
    require("haproxy", package="haproxy")
    made: list[GeneratedHaproxy] = []

    def start(base: str, generated: str, port: int) -> GeneratedHaproxy:
        lb = GeneratedHaproxy(make_workdir("haproxy-lb"), base, generated, port)
        made.append(lb)
        return lb

    yield start
    for lb in reversed(made):
        lb.stop()
        shutil.rmtree(lb.workdir, ignore_errors=True)


def _generate(estate: Estate, port: int, *extra: str) -> str:
    proc = certd("haproxy-config", "--edge", "edge", "--backend", f"backend-1=127.0.0.1:{estate.backend.port}",
                 "--bind", f"{HOST}:{port}", *extra, config=estate.config)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# -- certd haproxy-config ---------------------------------------------------------------------------------------


def test_generated_lines_run_in_haproxy_and_pass_the_audit(estate: Estate, haproxy_workdir: Any) -> None:
    port = free_port()
    snippet = _generate(estate, port)
    pinned = f"ca-file {estate.bundle} sni str({BACKEND}) verifyhost {BACKEND} check check-ssl check-sni {BACKEND}"
    assert (f"server backend-1 127.0.0.1:{estate.backend.port} ssl verify required {pinned}") in snippet
    edge = f"{estate.tmp}/out/edge/combined.pem"
    assert f"bind {HOST}:{port} ssl crt {edge} ssl-min-ver TLSv1.2 alpn h2,http/1.1" in snippet

    lb = haproxy_workdir(_BASE_CFG, snippet, port)
    assert lb.wait_check("backends", "backend-1", lambda s: s == "L7OK") == "L7OK"  # HTTPS GET /healthz, with SNI
    reply = requests.get(f"https://127.0.0.1:{port}/", verify=str(estate.bundle), timeout=10)
    assert (reply.status_code, reply.text) == (200, "ok\n")
    assert reply.headers["Strict-Transport-Security"] == "max-age=63072000"
    assert re.fullmatch(r"[0-9a-f-]{36}", reply.headers["X-Request-ID"])

    code, doc = audit(lb.generated, config=estate.config)
    assert (code, doc["status"], doc["kind"], doc["findings"]) == (0, "ok", "haproxy", []), doc
    (backend,) = doc["backends"]
    assert (backend["sni"], backend["name"], backend["ca_file"]) == (BACKEND, BACKEND, str(estate.bundle))

    code, doc = audit(lb.generated, "--live", config=estate.config)
    assert (code, doc["findings"]) == (0, []), doc
    (served,) = doc["live"]
    assert (served["serial"], served["verified"], served["covered"], served["sni"]) == (estate.serial, True, True,
                                                                                          BACKEND)
    assert BACKEND in served["names"] and served["endpoint"] == f"127.0.0.1:{estate.backend.port}"
    human = certd("audit-lb", str(lb.generated), "--live", config=estate.config)
    assert human.returncode == 0 and "CERTD AUDIT-LB OK" in human.stdout and estate.serial in human.stdout


def test_wrong_name_fails_haproxy_check_and_live_audit_says_why(estate: Estate, haproxy_workdir: Any) -> None:
    port = free_port()
    snippet = _generate(estate, port).replace(BACKEND, "other.internal")
    lb = haproxy_workdir(_BASE_CFG, snippet, port)
    status = lb.wait_check("backends", "backend-1", lambda s: s not in ("", "INI", "L7OK"))
    assert status.startswith("L6"), status  # the check's TLS handshake is refused: the name is not covered

    line = next(no for no, text in enumerate(snippet.splitlines(), 1) if text.strip().startswith("server "))
    code, doc = audit(lb.generated, config=estate.config)  # certd's config has no certificate for that name
    assert code == 1 and found(doc) == {(line, "name-not-covered")}, doc
    assert doc["findings"][0]["severity"] == "warning"

    code, doc = audit(lb.generated, "--live")
    assert code == 2 and found(doc) == {(line, "name-not-covered")}, doc
    assert doc["findings"][0]["severity"] == "critical"
    (served,) = doc["live"]
    assert (served["serial"], served["covered"], served["verified"], served["sni"]) == (estate.serial, False, False,
                                                                                          "other.internal")
    assert "does not cover other.internal" in doc["findings"][0]["message"]


def test_haproxy_config_refuses_what_it_cannot_pin(estate: Estate, tmp_path: Path) -> None:
    unpinned = tmp_path / "unpinned.toml"
    unpinned.write_text(estate.config.read_text().replace('bundle_file = "', '# bundle_file = "'))
    proc = certd("haproxy-config", "--backend", "backend-1=127.0.0.1:8443", config=unpinned)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "no bundle_file" in proc.stderr and "[issuers.local]" in proc.stderr and "certd bundle" in proc.stderr
    for args, message in ((["--backend", "nope=127.0.0.1:1"], "no certificate named nope"),
                          (["--backend", "backend-1=nowhere"], "is not HOST:PORT"),
                          (["--backend", "backend-1"], "expected NAME=HOST:PORT"),
                          ([], "give --edge NAME")):
        proc = certd("haproxy-config", *args, config=estate.config)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
    doc = json.loads(certd("haproxy-config", "--edge", "edge", "--backend", "backend-1=10.0.0.5:8443", "--json",
                           config=estate.config).stdout)
    (server,) = doc["backend"]["servers"]
    assert (server["name"], server["address"], server["server_name"], server["ca_file"]) == (
        "backend-1", "10.0.0.5:8443", BACKEND, str(estate.bundle))
    assert doc["frontend"]["crt"] == [f"{estate.tmp}/out/edge/combined.pem"]
    assert server["line"] in doc["snippet"] and doc["frontend"]["bind"] in doc["snippet"]
    assert "option httpchk GET /healthz" in doc["backend"]["lines"]


def test_no_value_can_add_a_line_or_a_keyword_to_the_generated_config(estate: Estate, tmp_path: Path) -> None:
    """Issue 19, class 2: every value that reaches a generated line is checked for what it is (HOST:PORT, a bind
    address, a path HAProxy reads as one word) and refused naming where it came from — never printed."""
    injections = (
        (["--backend", "backend-1=127.0.0.1:9443\n    server evil 10.6.6.6:80"], "is not HOST:PORT"),
        (["--backend", "backend-1=127.0.0.1:9443 verify none"], "is not HOST:PORT"),
        (["--edge", "edge", "--bind", "#"], "--bind '#': not [HOST]:PORT"),
        (["--edge", "edge", "--bind", ":443 ssl crt /etc/passwd"], "not [HOST]:PORT"),
        (["--edge", "edge", "--bind", ":99999"], "not [HOST]:PORT"),
    )
    for args, message in injections:
        proc = certd("haproxy-config", *args, config=estate.config)
        assert (proc.returncode, proc.stdout) == (2, ""), (args, proc.stdout)
        assert message in proc.stderr, (args, proc.stderr)
    for bundle in ("/x/ca.pem verify none", "/x/ca#.pem", "/x/${HOME}.pem", "/x/ca\\.pem"):
        spoiled = tmp_path / "spoiled.toml"
        text = estate.config.read_text()
        spoiled.write_text(text.replace(f'bundle_file = "{estate.bundle}"', f"bundle_file = {json.dumps(bundle)}"))
        assert spoiled.read_text() != text
        proc = certd("haproxy-config", "--backend", "backend-1=127.0.0.1:8443", config=spoiled)
        assert (proc.returncode, proc.stdout) == (2, ""), (bundle, proc.stdout)
        assert f"issuers.local.bundle_file: {bundle!r} holds" in proc.stderr, (bundle, proc.stderr)
    ok = certd("haproxy-config", "--edge", "edge", "--bind", "[::]:8443", "--backend", "backend-1=b1.internal:443",
               config=estate.config)
    assert ok.returncode == 0 and "bind [::]:8443 ssl" in ok.stdout, ok.stderr
    assert "server backend-1 b1.internal:443 " in ok.stdout


# -- certd audit-lb on broken HAProxy configs -------------------------------------------------------------------

_BROKEN_HAPROXY = """\
global
    stats socket /tmp/certd-audit-unused.sock mode 600 level admin

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend edge  # expect: no-hsts no-forwarded-proto no-request-id
    bind :443 ssl crt {crt} ssl-min-ver TLSv1.0  # expect: tls-below-1.2
    bind :8443 ssl crt {crt}  # expect: tls-min-implicit
    bind :80
    default_backend app

backend app
    option httpchk GET /healthz
    server no-verify 10.0.0.1:443 ssl verify none check check-sni a.in  # expect: verify-none
    server system 10.0.0.2:443 ssl verify required ca-file @system-ca sni str(b.in) check check-sni b.in  # expect: system-ca
    server big 10.0.0.3:443 ssl ca-file {big} sni str(c.in) check check-sni c.in  # expect: system-ca
    server no-ca 10.0.0.4:443 ssl verify required sni str(d.in) check check-sni d.in  # expect: no-ca-file
    server no-name 10.0.0.5:443 ssl verify required ca-file {bundle} check  # expect: no-name-check no-sni check-no-sni
    server no-sni 10.0.0.6:443 ssl ca-file {bundle} verifyhost f.in check check-sni f.in  # expect: no-sni
    server clear-check 10.0.0.7:443 ssl ca-file {bundle} sni str(g.in) check port 8080  # expect: check-not-tls
    server no-check-sni 10.0.0.8:443 ssl ca-file {bundle} sni str(h.in) check  # expect: check-no-sni
    server no-check 10.0.0.9:443 ssl ca-file {bundle} sni str(i.in)  # expect: no-check
    server plain 10.0.0.10:80 check  # expect: plaintext-backend
    server lost 10.0.0.11:443 ssl ca-file {tmp}/missing.pem sni str(k.in) check check-sni k.in  # expect: ca-file-unreadable
    server good 10.0.0.12:443 ssl verify required ca-file {bundle} sni str(l.in) verifyhost l.in check check-ssl check-sni l.in
    server dynamic 10.0.0.14:443 ssl ca-file {bundle} sni req.hdr(host) check check-sni n.in

backend handshake-only
    server no-httpchk 10.0.0.13:443 ssl ca-file {bundle} sni str(m.in) check check-sni m.in  # expect: check-not-http
"""  # noqa: E501

_GLOBAL_VERIFY_NONE = """\
global
    ssl-server-verify none
    ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
    mode http
    option httpchk GET /healthz

frontend edge
    bind :443 ssl crt {crt}
    unique-id-header X-Request-ID
    http-request add-header X-Forwarded-Proto https
    default_backend app

backend app
    http-response set-header Strict-Transport-Security max-age=63072000
    default-server check check-sni x.internal
    server by-global 10.0.0.1:443 ssl sni str(x.internal)  # expect: verify-none
    server stated 10.0.0.2:443 ssl verify required ca-file {bundle} sni str(x.internal)
    server quoted 10.0.0.3:443 "ssl" verify 'none' sni str(x.internal)  # expect: verify-none
"""


def _fixture(estate: Estate, name: str, template: str) -> tuple[Path, str]:
    big = estate.tmp / "big-bundle.pem"
    big.write_text(estate.bundle.read_text() * 6)  # 12 certificates: more than a pinned bundle
    text = template.format(crt=f"{estate.tmp}/out/edge/combined.pem", bundle=estate.bundle, big=big, tmp=estate.tmp)
    path = estate.tmp / name
    path.write_text(text)
    return path, text


def test_audit_finds_each_haproxy_pitfall_at_its_line(estate: Estate) -> None:
    path, text = _fixture(estate, "haproxy.cfg", _BROKEN_HAPROXY)
    code, doc = audit(path)
    assert found(doc) == expected(text), doc["findings"]
    assert (code, doc["status"]) == (2, "critical")
    severity = {f["code"]: f["severity"] for f in doc["findings"]}
    assert severity["verify-none"] == severity["no-name-check"] == severity["no-ca-file"] == "critical"
    assert severity["no-hsts"] == severity["system-ca"] == severity["check-no-sni"] == "warning"
    assert severity["tls-min-implicit"] == "ok"
    assert doc["counts"] == {"ok": 1, "warning": sum(1 for f in doc["findings"] if f["severity"] == "warning"),
                             "critical": 3, "unknown": 0}

    # The lines the audit names for a missing CA file and an unreadable one are those HAProxy itself refuses
    # (it stops parsing at the unreadable file, so that line is commented out for the second run).
    lost, no_ca = (next(line for line, c in expected(text) if c == code) for code in ("ca-file-unreadable",
                                                                                       "no-ca-file"))
    check = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert check.returncode != 0 and f"[{path}:{lost}]" in check.stderr, check.stderr
    lines = text.splitlines()
    lines[lost - 1] = "#" + lines[lost - 1]
    path.with_name("without-lost.cfg").write_text("\n".join(lines) + "\n")
    check = subprocess.run(["haproxy", "-c", "-f", str(path.with_name("without-lost.cfg"))], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode != 0 and f"without-lost.cfg:{no_ca}]" in check.stderr, check.stderr

    human = certd("audit-lb", str(path))
    assert human.returncode == 2
    assert f"{path}:{no_ca}: critical no-ca-file:" in human.stdout
    assert human.stdout.rstrip().splitlines()[-1].startswith("CERTD AUDIT-LB CRITICAL - ")


def test_audit_follows_global_and_default_server_verify(estate: Estate) -> None:
    path, text = _fixture(estate, "global.cfg", _GLOBAL_VERIFY_NONE)
    code, doc = audit(path)
    assert found(doc) == expected(text), doc["findings"]
    assert code == 2
    message = next(f["message"] for f in doc["findings"] if f["line"] == min(expected(text))[0])
    assert "ssl-server-verify none` (line 2)" in message


# -- nginx as the load balancer ---------------------------------------------------------------------------------

_BROKEN_NGINX = """\
worker_processes 1;
events { worker_connections 64; }
http {
    upstream pool { server 10.0.0.1:443; }
    server {  # expect: tls-below-1.2 no-hsts
        listen 127.0.0.1:8443 ssl;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Request-ID $request_id;
        location /no-verify {
            proxy_pass https://10.0.0.1:443;  # expect: verify-none
        }
        location /verify-off {
            proxy_ssl_verify off;
            proxy_pass https://10.0.0.1:443;  # expect: verify-none
        }
        location /no-ca {
            proxy_ssl_verify on;
            proxy_ssl_server_name on;
            proxy_ssl_name a.internal;
            proxy_pass https://10.0.0.1:443;  # expect: no-ca-file
        }
        location /system {
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {big};  # expect: system-ca
            proxy_ssl_server_name on;
            proxy_ssl_name a.internal;
            proxy_pass https://10.0.0.1:443;
        }
        location /no-sni {
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {bundle};
            proxy_ssl_name a.internal;
            proxy_pass https://10.0.0.1:443;  # expect: no-sni
        }
        location /pool {
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate "{bundle}";
            proxy_ssl_server_name on;
            proxy_pass https://pool;  # expect: no-ssl-name
        }
        location /headers-dropped {
            proxy_set_header Host $host;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {bundle};
            proxy_ssl_server_name on;
            proxy_ssl_name a.internal;
            proxy_pass https://10.0.0.1:443;  # expect: no-forwarded-proto no-request-id
        }
        location /plain {
            proxy_pass http://10.0.0.2:80;  # expect: plaintext-backend
        }
    }
    server {
        listen 127.0.0.1:9443 ssl;
        ssl_protocols TLSv1 TLSv1.2;  # expect: tls-below-1.2
        add_header Strict-Transport-Security "max-age=63072000" always;
        location / {  # expect: no-hsts
            add_header X-Frame-Options DENY;
            return 200 "ok; {{ braces }} in a string";
        }
    }
}
"""

_GOOD_NGINX = """\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen {host}:{port} ssl;
        ssl_certificate {edge}/fullchain.pem;
        ssl_certificate_key {edge}/privkey.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        add_header Strict-Transport-Security "max-age=63072000" always;
        location / {{
            proxy_pass https://127.0.0.1:{backend_port};
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {bundle};
            proxy_ssl_server_name on;
            proxy_ssl_name {name};
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Request-ID ${{request_id}};  # ${{var}}: one word, not a block
        }}
    }}
}}
"""


def test_audit_finds_each_nginx_pitfall_at_its_line(estate: Estate) -> None:
    path, text = _fixture(estate, "nginx.conf", _BROKEN_NGINX.replace("{", "{{").replace("}", "}}")
                          .replace("{{big}}", "{big}").replace("{{bundle}}", "{bundle}"))
    code, doc = audit(path)
    assert doc["kind"] == "nginx"
    assert found(doc) == expected(text), doc["findings"]
    assert (code, doc["status"]) == (2, "critical")


@pytest.fixture
def nginx_prefix() -> Iterator[Path]:
    """Outside pytest's 0700 tree: nginx's workers drop root and write their temporary files here."""
    require("nginx", package="nginx-light")
    prefix = make_workdir("nginx-lb")
    yield prefix
    shutil.rmtree(prefix, ignore_errors=True)


def test_nginx_load_balancer_config_runs_and_passes_the_audit(estate: Estate, nginx_prefix: Path) -> None:
    prefix = nginx_prefix
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(_GOOD_NGINX.format(prefix=prefix, host=HOST, port=port, edge=estate.tmp / "out/edge",
                                       backend_port=estate.backend.port, bundle=estate.bundle, name=BACKEND))
    argv = ["nginx", "-c", str(conf), "-p", str(prefix), "-e", "stderr"]
    tested = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30)
    assert tested.returncode == 0, tested.stderr
    lb = ServerProcess("nginx-lb", [*argv, "-g", "daemon off;"], prefix / "nginx.log")
    try:
        lb.wait_until(lambda: tcp_open(port), f"HTTPS port {port}")
        reply = requests.get(f"https://127.0.0.1:{port}/", verify=str(estate.bundle), timeout=10)
        assert (reply.status_code, reply.text) == (200, "ok\n")  # re-encrypted, verified, with SNI
        assert reply.headers["Strict-Transport-Security"] == "max-age=63072000"
    finally:
        lb.stop()

    code, doc = audit(conf, "--live", config=estate.config)
    assert (code, doc["kind"], doc["findings"]) == (0, "nginx", []), doc
    (served,) = doc["live"]
    assert (served["serial"], served["verified"], served["sni"]) == (estate.serial, True, BACKEND)

    wrong = conf.with_name("wrong.conf")
    wrong.write_text(conf.read_text().replace(f"proxy_ssl_name {BACKEND};", "proxy_ssl_name other.internal;"))
    code, doc = audit(wrong, "--live")
    line = next(no for no, t in enumerate(wrong.read_text().splitlines(), 1) if "proxy_pass" in t)
    assert (code, found(doc)) == (2, {(line, "name-not-covered")}), doc


# -- what cannot be judged --------------------------------------------------------------------------------------


def test_unknown_when_the_file_cannot_be_judged(tmp_path: Path) -> None:
    prose = tmp_path / "notes.txt"
    prose.write_text("this is neither\n")
    unbalanced = tmp_path / "broken.conf"
    unbalanced.write_text("http {\n    server {\n        listen 443 ssl;\n}\n")
    for path, message in ((prose, "neither a haproxy.cfg"), (tmp_path / "missing.cfg", "cannot read"),
                          (unbalanced, "not closed"), (tmp_path, "cannot read")):
        code, doc = audit(path)
        assert (code, doc["status"]) == (3, "unknown") and message in doc["error"], (path, doc)
    human = certd("audit-lb", str(prose))
    assert human.returncode == 3 and human.stdout.startswith("CERTD AUDIT-LB UNKNOWN - ")
    assert certd("audit-lb").returncode == 3  # usage errors are UNKNOWN to a monitor, not CRITICAL
    assert certd("audit-lb", str(prose), config=tmp_path / "absent.toml").returncode == 3
    helptext = certd("--help").stdout
    assert "audit-lb" in helptext and "haproxy-config" in helptext


def test_client_cert_makes_the_pushed_ca_file_live_and_the_audit_notes_its_absence(
    estate: Estate, haproxy_workdir: Any
) -> None:
    """HAProxy applies a pushed ca-file only to server lines with ``crt``: generated with --client-cert, no note."""
    pushing = estate.tmp / "pushing.toml"
    pushing.write_text(estate.config.read_text() + f"""
[deploy.lb]
type = "haproxy"
socket = "{estate.tmp}/lb.sock"
cert = "{estate.tmp}/out/edge/combined.pem"
ca_file = "{estate.bundle}"
""")
    port = free_port()
    snippet = _generate(estate, port, "--client-cert", "edge")
    assert f"ca-file {estate.bundle} crt {estate.tmp}/out/edge/combined.pem sni" in snippet
    lb = haproxy_workdir(_BASE_CFG, snippet, port)
    assert lb.wait_check("backends", "backend-1", lambda s: s == "L7OK") == "L7OK"
    code, doc = audit(lb.generated, config=pushing)
    assert (code, doc["findings"]) == (0, []), doc

    plain = lb.generated.with_name("plain.cfg")
    plain.write_text(_generate(estate, port))
    code, doc = audit(plain, config=pushing)
    assert code == 0 and [(f["code"], f["severity"]) for f in doc["findings"]] == [("ca-file-not-live", "ok")], doc
    assert "no client `crt`" in doc["findings"][0]["message"]
    code, doc = audit(plain, config=estate.config)  # certd pushes nothing there: nothing to note
    assert (code, doc["findings"]) == (0, []), doc
