"""``certd audit-lb`` on files written to be misread (issue 19, class 3): it must never answer OK for what it did
not understand. Each claim about what HAProxy 2.6 or nginx 1.22 does with a file is checked with the real binary on
the same file: the lines ``haproxy -c`` names are the lines the audit names.

Files mark what the audit must find with ``# expect: code[:level] ...`` on the line the finding names (level
defaults to the code's own); nothing else may be found.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from certd.lb.audit import audit_file, live_findings
from certd.lb.audit.findings import SEVERITY, Code, Level
from certd.lb.audit.nginx import MAX_DEPTH
from certd.lb.audit.nginx_read import MAX_FILES, MAX_INCLUDE_DEPTH
from tests.cli import certd
from tests.pki import make_ca, make_leaf
from tests.servers.fixtures import require
from tests.servers.ports import HOST, ServerProcess, free_port, make_workdir, tcp_open

GOOD = "sni str(a.in) check check-sni a.in"  # what a server line needs besides verification to have no finding

_HEAD = """\
global
    log stderr local0

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option httpchk GET /healthz
"""


def marks(text: str) -> set[tuple[int, str, str]]:
    """(line, code, level) for every ``# expect: code[:level]`` marker."""
    out = set()
    for no, line in enumerate(text.split("\n"), 1):
        m = re.search(r"#\s*expect:\s*(.+)$", line)
        for item in m.group(1).split() if m else []:
            code, _, level = item.partition(":")
            out.add((no, code, level or SEVERITY[Code(code)].value))
    return out


def found(doc: dict[str, Any]) -> set[tuple[int, str, str]]:
    return {(f["line"], f["code"], f["severity"]) for f in doc["findings"]}


def audit(path: Path) -> tuple[int, dict[str, Any]]:
    proc = certd("audit-lb", str(path), "--json")
    assert proc.stdout and "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def write(path: Path, text: str, ca: Path) -> tuple[Path, str]:
    text = text.replace("{ca}", str(ca)).replace("{good}", GOOD)
    path.write_bytes(text.encode("utf-8"))
    return path, text


def haproxy_c(*files: Path, env: dict[str, str] | None = None) -> tuple[int, set[int], str]:
    """``haproxy -c`` on ``files`` (in that order): exit code, lines of the last file it names in an alert, output."""
    require("haproxy", package="haproxy")
    argv = ["haproxy", "-c", *[arg for f in files for arg in ("-f", str(f))]]
    proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=30,
                          env={"PATH": os.environ["PATH"], **(env or {})})
    out = proc.stdout + proc.stderr
    name = re.escape(files[-1].name)
    lines = {int(m) for alert in out.splitlines() if "ALERT" in alert
             for m in re.findall(rf"{name}:(\d+)\]", alert)}
    return proc.returncode, lines, out


def nginx_t(conf: Path) -> tuple[int, str]:
    require("nginx", package="nginx-light")
    proc = subprocess.run(["nginx", "-t", "-c", str(conf), "-p", str(conf.parent), "-e", "stderr"],
                          capture_output=True, text=True, errors="replace", timeout=30)
    return proc.returncode, proc.stderr


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    """A pinned bundle of one CA certificate: HAProxy and nginx load it at start-up."""
    path = tmp_path / "ca.pem"
    path.write_bytes(make_ca("audit test CA").cert.public_bytes(serialization.Encoding.PEM))
    return path


def by_code(doc: dict[str, Any], code: str) -> set[int]:
    return {f["line"] for f in doc["findings"] if f["code"] == code}


# -- HAProxy: which defaults, which default-server, which servers --------------------------------------------------

_NAMED = """\
global
    log stderr local0

defaults loose
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option httpchk GET /healthz
    default-server verify none

defaults strict from loose
    default-server verify required

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option httpchk GET /healthz
    default-server verify required ca-file {ca}

backend from-loose from loose
    server s1 10.0.0.1:443 ssl ca-file {ca} {good}  # expect: verify-none

backend takes-the-last
    server s2 10.0.0.2:443 ssl {good}

backend from-strict from strict
    server s3 10.0.0.3:443 ssl ca-file {ca} {good}
"""

# Which defaults HAProxy applies, shown by HAProxy itself: "named" makes a server without ca-file fatal, the last
# (anonymous) one does not; HAProxy alerts for exactly the server whose backend says `from named`.
_NAMED_ORACLE = """\
global
    log stderr local0

defaults named
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option httpchk GET /healthz
    default-server verify required

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option httpchk GET /healthz
    default-server verify none

backend picks-named from named
    server s1 10.0.0.1:443 ssl {good}  # expect: no-ca-file

backend picks-last
    server s2 10.0.0.2:443 ssl {good}  # expect: verify-none
"""


def test_a_proxy_takes_the_defaults_it_names_with_from_not_the_last(tmp_path: Path, ca: Path) -> None:
    """The reviewed bug: `backend be from NAME` whose named defaults carried `verify none` was reported fine."""
    path, text = write(tmp_path / "named.cfg", _NAMED, ca)
    code, doc = audit(path)
    assert found(doc) == marks(text) and code == 2, doc["findings"]
    rc, alerts, out = haproxy_c(path)
    assert rc in (0, 2) and not alerts, out  # HAProxy loads it: verify none is a choice, not an error

    oracle, text = write(tmp_path / "oracle.cfg", _NAMED_ORACLE, ca)
    code, doc = audit(oracle)
    assert found(doc) == marks(text), doc["findings"]
    rc, alerts, out = haproxy_c(oracle)
    assert rc == 1 and alerts == by_code(doc, "no-ca-file"), out


def test_default_server_applies_to_the_servers_after_it_and_templates_are_servers(tmp_path: Path, ca: Path) -> None:
    text = _HEAD + """
backend be
    server early 10.0.0.1:443 ssl {good}  # expect: no-ca-file
    default-server verify none
    server late 10.0.0.2:443 ssl {good}  # expect: verify-none
    server-template pool 1-3 10.0.0.3:443 ssl verify none {good}  # expect: verify-none
    server-template web 2 10.0.0.4:443 ssl verify required {good}  # expect: no-ca-file
"""
    path, text = write(tmp_path / "order.cfg", text, ca)
    code, doc = audit(path)
    assert found(doc) == marks(text) and code == 2, doc["findings"]
    rc, alerts, out = haproxy_c(path)
    assert rc == 1 and alerts == by_code(doc, "no-ca-file"), out  # the default-server after `early` is not its


# -- HAProxy: what it expands, evaluates or splits at start-up -----------------------------------------------------


def test_environment_variables_make_what_rests_on_them_unknown(tmp_path: Path, ca: Path) -> None:
    text = _HEAD + """
backend be
    server env 10.0.0.1:443 ssl verify "${VERIFY}" ca-file {ca} {good}  # expect: environment
    server env-ca 10.0.0.2:443 ssl ca-file "$CA_FILE" {good}  # expect: environment
    server words 10.0.0.3:443 ssl "${OPTS[*]}" ca-file {ca} {good}  # expect: environment
    server literal 10.0.0.4:443 ssl ca-file $CA_FILE {good}  # expect: ca-file-unreadable
"""
    path, text = write(tmp_path / "env.cfg", text, ca)
    code, doc = audit(path)
    assert found(doc) == marks(text), doc["findings"]
    assert (code, doc["status"]) == (3, "unknown") and doc["counts"]["unknown"] == 3
    literal = next(f for f in doc["findings"] if f["code"] == "ca-file-unreadable")
    assert "only inside double quotes" in literal["message"]

    env, env_ca, words, literal_line = sorted(line for line, _, _ in marks(text))
    # The values are HAProxy's environment's: "none" loads, "bogus" is refused, on the line the audit names.
    _, alerts, out = haproxy_c(path, env={"VERIFY": "none", "CA_FILE": str(ca), "OPTS": "verify none"})
    assert alerts == {literal_line} and "'$CA_FILE'" in out, out  # unquoted: the file named "$CA_FILE"
    _, alerts, out = haproxy_c(path, env={"VERIFY": "bogus", "CA_FILE": str(ca), "OPTS": "verify bogus"})
    assert {env, words} <= alerts and env_ca not in alerts, out


def test_conditional_blocks_are_evaluated_when_literal_and_unknown_otherwise(tmp_path: Path, ca: Path) -> None:
    text = _HEAD + """
backend decided-at-start
.if defined(INSECURE)
    default-server verify none
.endif
    server cond 10.0.0.1:443 ssl ca-file {ca} {good}  # expect: verify-none:unknown conditional
    server also 10.0.0.8:443 ssl {good}  # expect: verify-none:unknown conditional

backend literal
.if 0
    server off 10.0.0.2:443 ssl verify required {good}
.elif 1
    server on 10.0.0.3:443 ssl verify required {good}  # expect: no-ca-file
.else
    server never 10.0.0.4:443 ssl verify required {good}
.endif
.if !0
    server negated 10.0.0.5:443 ssl verify none {good}  # expect: verify-none
.endif

backend version
.if version_atleast(2.4)
    server new 10.0.0.6:443 ssl verify none {good}  # expect: verify-none:unknown conditional
.else
    server old 10.0.0.7:443 ssl ca-file {ca} {good}  # expect: conditional
.alert "too old"  # expect: conditional
.endif
"""
    path, text = write(tmp_path / "cond.cfg", text, ca)
    code, doc = audit(path)
    assert found(doc) == marks(text), doc["findings"]
    assert code == 2  # a certain critical elsewhere outranks what cannot be judged
    also = next(no for no, t in enumerate(text.split("\n"), 1) if "server also" in t)
    # `.if 0`, the `.else` after `.elif 1` and (2.6 being >= 2.4) the `.alert` are not read. `also` is what the
    # audit cannot know: without INSECURE it verifies with no CA file (refused), with INSECURE it does not verify.
    _, alerts, out = haproxy_c(path)
    assert alerts == by_code(doc, "no-ca-file") | {also}, out
    _, alerts, out = haproxy_c(path, env={"INSECURE": "1"})
    assert alerts == by_code(doc, "no-ca-file"), out

    only_unknown = path.with_name("cond-unknown.cfg")
    only_unknown.write_text("\n".join(t for t in text.split("\n") if "10.0.0.3" not in t and "10.0.0.5" not in t))
    code, doc = audit(only_unknown)
    assert (code, doc["status"]) == (3, "unknown"), doc["findings"]
    human = certd("audit-lb", str(only_unknown))
    assert human.returncode == 3 and "CERTD AUDIT-LB UNKNOWN - " in human.stdout
    assert ": unknown conditional: " in human.stdout and "unknown=" in human.stdout


def test_words_are_split_as_haproxy_splits_them(tmp_path: Path, ca: Path) -> None:
    """\\xNN escapes, VT and FF as blanks, other control characters inside a word, CR ending the line after a word
    and a blank among blanks: no server has a ca-file, so HAProxy alerts exactly where it does not read `verify
    none` (its check after parsing; what it refuses while parsing is in the next test)."""
    text = _HEAD + (
        "\nbackend be\n"
        "    server hex 10.0.0.1:443 ssl verify \\x6eone {good}  # expect: verify-none\n"
        "    server vt 10.0.0.2:443 ssl verify\vnone {good}  # expect: verify-none\n"
        "    server fs 10.0.0.3:443 ssl sni str(a.in) check check-sni a\x1cb verify none  # expect: verify-none\n"
        "    server cr 10.0.0.4:443 ssl {good}\r verify none  # expect: no-ca-file\n"
        "    server cr-blank 10.0.0.5:443 ssl {good} \r verify none  # expect: verify-none\n"
        "\rbackend after-cr\n"
        "    server t 10.0.0.6:443 ssl {good}  # expect: no-ca-file\n"
    )
    path, text = write(tmp_path / "words.cfg", text, ca)
    code, doc = audit(path)
    assert found(doc) == marks(text) and code == 2, doc["findings"]
    rc, alerts, out = haproxy_c(path)
    assert rc == 1 and alerts == by_code(doc, "no-ca-file"), out


_REFUSED = {  # a file HAProxy 2.6 refuses: the audit says so (critical) on a line HAProxy names
    "unmatched-quote": "backend be\n    server s 10.0.0.1:443 ssl verify \"none {good}\n",
    "bad-hex-escape": "backend be\n    server s 10.0.0.1:443 ssl verify \\x4g {good}\n",
    "65-words": "backend be\n    http-request set-header X-A" + " a" * 63 + "\n",
    "bad-variable-name": "backend be\n    server s 10.0.0.1:443 ssl verify \"$1\" {good}\n",
    "unknown-escape-kept": "backend be\n    server s 10.0.0.1:443 ssl verify n\\one {good}\n",
    "verify-is-case-sensitive": "backend be\n    server s 10.0.0.1:443 ssl verify NONE {good}\n",
    "a-proxy-without-a-name": "backend\n    server s 10.0.0.1:443 ssl ca-file {ca} {good}\n",
    "defaults-x-from-nothing": "defaults x from\n    mode http\n",
    "verify-without-a-value": "backend be\n    server s 10.0.0.1:443 ssl ca-file {ca} {good} verify\n",
    "global-ssl-server-verify": "backend be\n    server s 10.0.0.1:443 ssl ca-file {ca} {good}\n",
    "from-an-unknown-defaults": "backend be from nope\n    server s 10.0.0.1:443 ssl ca-file {ca} {good}\n",
    "from-a-later-defaults": "backend be from later\n    server s 10.0.0.1:443 ssl ca-file {ca} {good}\n"
                             "defaults later\n    mode http\n",
    "from-an-ambiguous-name": "defaults twice\n    mode http\ndefaults twice\n    mode http\n"
                              "backend be from twice\n    server s 10.0.0.1:443 ssl ca-file {ca} {good}\n",
    "extra-word-on-a-header": "backend be extra\n    server s 10.0.0.1:443 ssl ca-file {ca} {good}\n",
    "from-without-a-name": "backend be from\n    server s 10.0.0.1:443 ssl ca-file {ca} {good}\n",
    "two-backends-of-one-name": "backend be\n    server s 10.0.0.1:443 ssl ca-file {ca} {good}\n"
                                "backend be\n    server t 10.0.0.2:443 ssl ca-file {ca} {good}\n",
    "two-servers-of-one-name": "backend be\n    server s 10.0.0.1:443 ssl ca-file {ca} {good}\n"
                               "    server s 10.0.0.2:443 ssl ca-file {ca} {good}\n",
    "short-server-template": "backend be\n    server-template pool 3\n",
    "lone-endif": ".endif\nbackend be\n    server s 10.0.0.1:443 ssl ca-file {ca} {good}\n",
    "else-after-else": ".if 0\n.else\n.else\n.endif\nbackend be\n",
    "unknown-directive": ".iff 1\nbackend be\n",
    "alert": ".alert \"stop\"\nbackend be\n",
    "100-nested-if": ".if 1\n" * 100 + ".endif\n" * 100 + "backend be\n",
    "nul-byte-in-a-comment": "backend be\n    # a\x00b\n    server s 10.0.0.1:443 ssl ca-file {ca} {good}\n",
    "no-lf-on-the-last-line": "backend be\n    server s 10.0.0.1:443 ssl ca-file {ca} {good}",
}


@pytest.mark.parametrize("case", sorted(_REFUSED))
def test_what_haproxy_refuses_is_critical_at_its_line(tmp_path: Path, ca: Path, case: str) -> None:
    head = _HEAD.replace("log stderr local0", "ssl-server-verify None") if case == "global-ssl-server-verify" else _HEAD
    path, _ = write(tmp_path / "refused.cfg", head + _REFUSED[case], ca)
    code, doc = audit(path)
    refused = by_code(doc, "config-refused")
    assert code == 2 and refused, doc["findings"]
    rc, alerts, out = haproxy_c(path)
    assert rc == 1 and refused & alerts, out


def test_99_nested_if_blocks_are_accepted(tmp_path: Path, ca: Path) -> None:
    path, _ = write(tmp_path / "nested.cfg", _HEAD + ".if 1\n" * 99 + ".endif\n" * 99 + "backend be\n", ca)
    code, doc = audit(path)
    assert (code, doc["findings"]) == (0, []), doc["findings"]
    assert haproxy_c(path)[0] in (0, 2)


def test_an_unterminated_if_is_refused(tmp_path: Path, ca: Path) -> None:
    path, text = write(tmp_path / "open.cfg", _HEAD + ".if 1  # expect: config-refused\nbackend be\n", ca)
    code, doc = audit(path)
    assert found(doc) == marks(text) and code == 2, doc["findings"]
    rc, _, out = haproxy_c(path)
    assert rc == 1 and "non-terminated '.if'" in out, out


# -- HAProxy: a file loaded after others (-f base.cfg -f this.cfg) ---------------------------------------------------

_BASE = """\
global
    ssl-server-verify none

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
"""

_FRAGMENT = """\
backend app
    option httpchk GET /healthz
    server implicit 10.0.0.1:443 ssl {good}  # expect: no-ca-file:unknown unseen-context
    server stated 10.0.0.2:443 ssl verify required ca-file {ca} {good}
"""


def test_a_file_without_global_leaves_unstated_settings_to_files_not_seen(tmp_path: Path, ca: Path) -> None:
    """A server that states its verification is judged; one that does not is decided by the file before it."""
    base = tmp_path / "base.cfg"
    base.write_text(_BASE)
    path, text = write(tmp_path / "fragment.cfg", _FRAGMENT, ca)
    code, doc = audit(path)
    assert found(doc) == marks(text) and code == 3, doc["findings"]
    rc, alerts, out = haproxy_c(base, path)
    assert rc in (0, 2) and not alerts, out  # the base's ssl-server-verify none: no CA file needed, no refusal
    rc, alerts, out = haproxy_c(path)
    assert alerts == by_code(doc, "no-ca-file"), out  # alone, HAProxy's own default: verification, refused


def test_an_unknown_keyword_before_a_judged_one_is_unknown(tmp_path: Path, ca: Path) -> None:
    text = _HEAD + "\nbackend be\n    server s 10.0.0.1:443 ssl ca-file {ca} {good} newkw verify none  # expect: " \
        "verify-none:unknown ambiguous-keyword\n"
    path, text = write(tmp_path / "kw.cfg", text, ca)
    code, doc = audit(path)
    assert found(doc) == marks(text) and code == 3, doc["findings"]


def test_live_findings_of_a_doubtful_server_are_unknown(tmp_path: Path, ca: Path) -> None:
    """--live probes a server inside a `.if` too, but its failing handshake is not a certain critical."""
    port = free_port()
    text = _HEAD + f"\nbackend be\n.if defined(X)\n    server s 127.0.0.1:{port} ssl ca-file {{ca}} {{good}}\n.endif\n"
    path, _ = write(tmp_path / "live.cfg", text, ca)
    audited = audit_file(path)
    (backend,) = audited.backends
    assert backend.doubt and "defined(X)" in backend.doubt
    found_live, report = live_findings(audited, datetime.now(UTC), timeout=1)
    assert [(f.code, f.level) for f in found_live] == [(Code.LIVE_HANDSHAKE, Level.UNKNOWN)], found_live
    assert report[0]["verified"] is False


# -- nginx ---------------------------------------------------------------------------------------------------------

_NGINX_HEAD = "pid {dir}/nginx.pid;\nevents { worker_connections 64; }\n"
_VERIFIED = ("proxy_ssl_verify on; proxy_ssl_trusted_certificate {ca}; proxy_ssl_server_name on; "
             "proxy_ssl_name a.in;")


def nginx_file(path: Path, body: str, ca: Path) -> tuple[Path, str]:
    text = (_NGINX_HEAD + body).replace("{verified}", _VERIFIED).replace("{dir}", str(path.parent)).replace(
        "{ca}", str(ca))
    path.write_bytes(text.encode("utf-8"))
    return path, text


def test_nginx_nested_1200_deep_is_unknown_not_a_traceback(tmp_path: Path, ca: Path) -> None:
    depth = 1200
    body = ("http {\n server {\n  listen 127.0.0.1:8080;\n" + "  location / {\n" * depth
            + "   proxy_pass https://10.0.0.1;\n" + "  }\n" * depth + " }\n}\n")
    path, _ = nginx_file(tmp_path / "deep.conf", body, ca)
    rc, out = nginx_t(path)
    assert rc == 0, out  # nginx itself has no such limit
    code, doc = audit(path)
    assert (code, doc["status"]) == (3, "unknown"), doc["findings"]
    # Lines: pid, events, http, server, listen, then location k on line 5 + k. Below the file's root, http and
    # server, location k is MAX_DEPTH blocks down when 3 + k == MAX_DEPTH + 1.
    assert found(doc) == {(5 + MAX_DEPTH - 2, "too-deep", "unknown")}, doc["findings"]


def test_nginx_follows_includes_within_bounds(tmp_path: Path, ca: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "snippets").mkdir()
    (tmp_path / "snippets/proxy.conf").write_text("proxy_ssl_verify off;\n")
    (tmp_path / "conf.d/a.conf").write_text(
        "server {\n    listen 127.0.0.1:8081;\n    location / {\n        proxy_pass https://10.0.0.2;\n    }\n}\n")
    body = """\
http {
    include conf.d/*.conf;
    server {
        listen 127.0.0.1:8080;
        location / {
            include snippets/proxy.conf;
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_server_name on;
            proxy_ssl_name a.in;
            proxy_pass https://10.0.0.1;  # expect: verify-none
        }
    }
}
"""
    path, text = nginx_file(tmp_path / "nginx.conf", body, ca)
    assert nginx_t(path)[0] == 0
    code, doc = audit(path)
    assert code == 2, doc["findings"]
    mine = {(f["line"], f["code"], f["severity"]) for f in doc["findings"] if f["file"] is None}
    assert mine == marks(text), doc["findings"]
    included = {(f["file"], f["line"], f["code"]) for f in doc["findings"] if f["file"]}
    assert included == {(str(tmp_path / "conf.d/a.conf"), 4, "verify-none")}, doc["findings"]
    assert "snippets/proxy.conf:1" in next(f["message"] for f in doc["findings"] if f["file"] is None)
    human = certd("audit-lb", str(path)).stdout
    assert f"{tmp_path / 'conf.d/a.conf'}:4: critical verify-none" in human


def test_nginx_includes_it_cannot_read_or_that_loop(tmp_path: Path, ca: Path) -> None:
    (tmp_path / "self.conf").write_text("include self.conf;\n")
    location = "location / { %s {verified} proxy_pass https://10.0.0.1; }"
    body = ("http {\n server {\n  listen 127.0.0.1:8080;\n  " + location % "include missing.conf;"
            + "  # expect: include-not-read\n }\n}\n")
    path, text = nginx_file(tmp_path / "missing.conf.main", body, ca)
    code, doc = audit(path)
    assert code == 3 and found(doc) == marks(text), doc["findings"]  # the include, and the proxy_pass under it

    path, text = nginx_file(tmp_path / "loop.conf", "http {\n include self.conf;\n}\n", ca)
    code, doc = audit(path)
    assert code == 2, doc["findings"]
    assert [(f["file"], f["line"], f["code"]) for f in doc["findings"]] == [
        (str(tmp_path / "self.conf"), 1, "config-refused")]
    rc, out = nginx_t(path)
    assert rc != 0, out  # nginx 1.22 recurses until it crashes (SIGSEGV)

    many = tmp_path / "many"
    many.mkdir()
    for i in range(MAX_FILES + 1):
        (many / f"{i:03}.conf").write_text("# nothing\n")
    path, text = nginx_file(tmp_path / "many.conf", "http {\n include many/*.conf;  # expect: include-not-read\n}\n",
                            ca)
    code, doc = audit(path)
    assert code == 3 and found(doc) == marks(text), doc["findings"]

    chain = tmp_path / "chain"
    chain.mkdir()
    for i in range(MAX_INCLUDE_DEPTH + 2):
        (chain / f"{i}.conf").write_text(f"include chain/{i + 1}.conf;\n")
    path, text = nginx_file(tmp_path / "chain.conf", "http {\n include chain/0.conf;\n}\n", ca)
    code, doc = audit(path)
    assert code == 3 and by_code(doc, "include-not-read"), doc["findings"]


_SITE = """\
server {
    listen 127.0.0.1:8082;
    location /inherits {
        proxy_pass https://10.0.0.1;  # expect: verify-none:unknown unseen-context
    }
    location /states {
        {verified}
        proxy_pass https://10.0.0.2;
    }
}
"""


def test_a_sites_enabled_file_is_audited_and_what_it_inherits_is_unknown(tmp_path: Path, ca: Path) -> None:
    """Before: a file with no http block had nothing to audit and said OK. Its server blocks are judged now; what
    they leave to the including file is UNKNOWN, which nginx shows by loading it verified from there."""
    site = tmp_path / "site.conf"
    text = _SITE.replace("{verified}", _VERIFIED.replace("{ca}", str(ca)))
    site.write_text(text)
    code, doc = audit(site)
    assert found(doc) == marks(text) and code == 3, doc["findings"]
    main, _ = nginx_file(tmp_path / "nginx.conf", "http {\n proxy_ssl_verify on;\n proxy_ssl_trusted_certificate "
                         "{ca};\n proxy_ssl_server_name on;\n proxy_ssl_name a.in;\n include site.conf;\n}\n", ca)
    rc, out = nginx_t(main)
    assert rc == 0, out
    code, doc = audit(main)
    assert (code, doc["findings"]) == (0, []), doc["findings"]


def test_what_nginx_refuses_or_reads_differently(tmp_path: Path, ca: Path) -> None:
    cases = {
        "duplicate": ("proxy_ssl_verify off; {verified}", "is duplicate"),
        "flag value": ("proxy_ssl_verify yes;", "invalid value \"yes\""),
        "not a blank": ("proxy_ssl_verify\von; proxy_ssl_trusted_certificate {ca};", "unknown directive"),
    }
    for name, (directives, nginx_says) in cases.items():
        body = ("http {\n server {\n  listen 127.0.0.1:8080;\n  location / {\n   " + directives
                + "\n   proxy_pass https://10.0.0.1;\n  }\n }\n}\n")
        path, _ = nginx_file(tmp_path / f"{name.replace(' ', '-')}.conf", body, ca)
        rc, out = nginx_t(path)
        assert rc == 1 and nginx_says in out, (name, out)
        code, doc = audit(path)
        assert code == 2, (name, doc["findings"])
        assert by_code(doc, "config-refused") or by_code(doc, "verify-none"), (name, doc["findings"])

    body = ("http {\n server {\n  listen 127.0.0.1:8080;\n  location /a} {\n   {verified}\n"
            "   proxy_pass https://10.0.0.1;\n  }\n }\n}\n")
    path, _ = nginx_file(tmp_path / "brace.conf", body, ca)
    assert nginx_t(path)[0] == 0  # `}` inside a word is part of it
    code, doc = audit(path)
    assert (code, doc["findings"]) == (0, []), doc["findings"]

    body = ("http {\n server {\n  listen 127.0.0.1:8080;\n  location / {\n"
            "   proxy_ssl_verify on; proxy_ssl_trusted_certificate {ca}; proxy_ssl_server_name on;\n"
            "   proxy_ssl_name a.in\x00b;  # expect: nul-byte\n"
            "   proxy_pass https://10.0.0.1;  # expect: nul-byte\n  }\n }\n}\n")
    path, text = nginx_file(tmp_path / "nul.conf", body, ca)
    assert nginx_t(path)[0] == 0  # nginx takes the name as written; most values it compares up to the NUL
    code, doc = audit(path)
    assert code == 3 and found(doc) == marks(text), doc["findings"]

    path, _ = nginx_file(tmp_path / "stream.conf", "stream {\n server {\n  listen 8443;\n  proxy_pass 10.0.0.1:443;\n"
                         "  proxy_ssl on;\n }\n}\n", ca)
    code, doc = audit(path)
    assert (code, found(doc)) == (3, {(3, "not-audited", "unknown")}), doc["findings"]


@pytest.fixture
def nginx_dir() -> Iterator[Path]:
    """Outside pytest's 0700 tree: nginx's workers drop root."""
    require("nginx", package="nginx-light")
    path = make_workdir("nginx-audit")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_ssl_protocols_twice_in_one_block_is_the_union(tmp_path: Path, ca: Path, nginx_dir: Path) -> None:
    """nginx ORs the two lists: a TLS 1.2 handshake works although the last line says TLSv1.3 only."""
    issuer = make_ca("edge CA")
    leaf = make_leaf(("127.0.0.1",), issuer)
    (nginx_dir / "cert.pem").write_bytes(leaf.cert.public_bytes(serialization.Encoding.PEM))
    (nginx_dir / "key.pem").write_bytes(leaf.key.private_bytes(serialization.Encoding.PEM,
                                                               serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
    port = free_port()
    conf = nginx_dir / "nginx.conf"
    conf.write_text(f"""pid {nginx_dir}/nginx.pid;
error_log stderr;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {nginx_dir}/body;
    proxy_temp_path {nginx_dir}/proxy;
    fastcgi_temp_path {nginx_dir}/fastcgi;
    uwsgi_temp_path {nginx_dir}/uwsgi;
    scgi_temp_path {nginx_dir}/scgi;
    server {{
        listen {HOST}:{port} ssl;
        ssl_certificate {nginx_dir}/cert.pem;
        ssl_certificate_key {nginx_dir}/key.pem;
        ssl_protocols TLSv1.2;
        ssl_protocols TLSv1.3;
        add_header Strict-Transport-Security "max-age=63072000" always;
        return 200 "ok";
    }}
}}
""")
    server = ServerProcess("nginx-audit", ["nginx", "-c", str(conf), "-p", str(nginx_dir), "-e", "stderr", "-g",
                                           "daemon off;"], nginx_dir / "nginx.log")
    try:
        server.wait_until(lambda: tcp_open(port), f"TLS port {port}")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        with socket.create_connection((HOST, port), timeout=5) as raw, context.wrap_socket(raw) as tls:
            assert tls.version() == "TLSv1.2"
    finally:
        server.stop()
    weak = tmp_path / "weak.conf"
    weak.write_text(conf.read_text().replace("TLSv1.2;", "TLSv1;").replace("TLSv1.3;", "TLSv1.2;"))
    code, doc = audit(weak)
    line = next(no for no, t in enumerate(weak.read_text().split("\n"), 1) if "ssl_protocols TLSv1;" in t)
    assert (code, found(doc)) == (1, {(line, "tls-below-1.2", "warning")}), doc["findings"]


def test_large_files_cost_linear_time(tmp_path: Path, ca: Path) -> None:
    """A 4 MiB line, 10,000 servers in one backend, 20,000 locations in one server: each lookup used to rescan the
    whole section (the old audit took 5 s for the servers, a minute for the locations); seconds now, nothing skipped."""
    started = time.monotonic()
    line = tmp_path / "line.cfg"
    line.write_text(_HEAD + "backend be\n    http-request set-header X-A " + "a" * (4 * 1024 * 1024 - 400) + "\n")
    assert audit_file(line).findings == []
    servers = tmp_path / "servers.cfg"
    servers.write_text(_HEAD + "backend be\n" + "".join(
        f"    server s{i} 10.0.0.1:443 ssl verify required ca-file {ca.name} {GOOD}\n" for i in range(10_000)))
    audited = audit_file(servers)  # a relative ca-file is found next to the file
    assert (audited.findings, len(audited.backends)) == ([], 10_000)
    locations = tmp_path / "locations.conf"
    locations.write_text("http {\n server {\n  listen 127.0.0.1:8080;\n  " + _VERIFIED.replace("{ca}", str(ca))
                         + "\n" + "".join(f"  location /{i} {{ proxy_pass https://10.0.0.1; }}\n"
                                          for i in range(20_000)) + " }\n}\n")  # each inherits from the server
    audited = audit_file(locations)
    assert (audited.findings, len(audited.backends)) == ([], 20_000)
    assert time.monotonic() - started < 20
