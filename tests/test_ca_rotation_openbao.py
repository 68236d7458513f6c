"""A CA rotation on real OpenBao, discovered by certd on its own, behind real HAProxy: no request fails.

The CA operator moves the ``pki`` mount to a new intermediate under a **new root** (a second root
mount), and adds that root to certd's pinned ``roots`` beforehand. HAProxy pins only what certd
writes into the issuer's ``bundle_file``: the old root and intermediate. At the next renewal the
certificate comes back under the new CA; certd writes the bundle with the new CA *and* the old one
(the backend still serves the old certificate) and pushes it into HAProxy before nginx is reloaded
(step ``trust``), then rolls the certificate out; after it, the old CA leaves the bundle because no
served certificate needs it any more. A client loop through HAProxy and HAProxy's own TLS health
checks see no failure, and HAProxy's pid does not change.

Were the bundle pushed after the rollout (as before this step existed), HAProxy would refuse the
backend between nginx's reload and the push: the loop and the health check would see it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from certd.pki.certs import load_pem_certs
from tests.servers.openbao import OpenBaoServer
from tests.servers.tlsutil import issue_server_cert, make_ca, write_server_files
from tests.test_ca_rotation import _Traffic
from tests.test_e2e_backend import certd

NAME = "backend-1.internal.test"


def _config(bao: OpenBaoServer, tmp: Path, nginx: Any, sock: Path, edge_pem: Path) -> str:
    return f"""
[database]
url = "sqlite:///{tmp}/certd.db"

[issuers.internal]
type = "vault"
url = "{bao.url}"
ca_bundle = "{bao.ca_bundle_path}"
roots = "{tmp}/roots.pem"
bundle_file = "{tmp}/pinned/backend-ca.pem"
role = "backend"
auth = "token"
token_file = "{tmp}/token"

[deploy.nginx]
type = "signal"
pid_file = "{nginx.pid_file}"

[deploy.lb]
type = "haproxy"
socket = "{sock}"
cert = "{edge_pem}"
ca_file = "{tmp}/pinned/backend-ca.pem"

[certificates.backend-1]
issuer = "internal"
names = ["{NAME}"]
lifetime = "1h"
output_dir = "{tmp}/out/backend-1"
deploy = ["nginx"]
verify = [{{ endpoint = "127.0.0.1:{nginx.port}", sni = "{NAME}" }}]
lb_checks = [{{ socket = "{sock}", backend = "be_upstream", server = "upstream", interval = "200ms" }}]
rollback = true
"""


def _new_root_and_intermediate(bao: OpenBaoServer) -> tuple[str, str]:
    """A second root mount and, in ``pki``, an intermediate it signs; returns (root PEM, the new issuer id)."""
    bao.api("sys/mounts/pki-root2", {"type": "pki", "config": {"max_lease_ttl": "87600h"}})
    root = bao.api("pki-root2/root/generate/internal", {"common_name": "certd test OpenBao root 2027",
                                                        "ttl": "87600h", "key_type": "ec", "key_bits": 256})
    csr = bao.api("pki/intermediate/generate/internal", {"common_name": "certd test OpenBao intermediate 2027",
                                                         "key_type": "ec", "key_bits": 256})["data"]["csr"]
    signed = bao.api("pki-root2/root/sign-intermediate", {"csr": csr, "ttl": "43800h", "format": "pem",
                                                          "common_name": "certd test OpenBao intermediate 2027"})
    imported = bao.api("pki/intermediate/set-signed",
                       {"certificate": signed["data"]["certificate"] + "\n" + signed["data"]["issuing_ca"]})
    new = next(i for i in imported["data"]["imported_issuers"]
               if bao.api(f"pki/issuer/{i}", method="GET")["data"]["certificate"].strip()
               == signed["data"]["certificate"].strip())
    return str(root["data"]["certificate"]), str(new)


@pytest.mark.parametrize("how", ["renewal", "ca-rotate"])
def test_a_new_root_at_openbao_is_pinned_before_the_backend_serves_under_it(
    openbao_factory: Any, nginx_factory: Any, haproxy_factory: Any, tmp_path: Path, how: str,
) -> None:
    """``renewal``: found at the next renewal; ``ca-rotate``: `certd ca rotate` pins, re-issues in batches, unpins."""
    bao: OpenBaoServer = openbao_factory()  # its own server: the test switches the mount's default issuer
    bao.add_role("backend", allowed_domains="internal.test", allow_subdomains=True, key_type="any", max_ttl="24h")
    (tmp_path / "token").write_text(bao.root_token + "\n")
    (tmp_path / "token").chmod(0o600)
    (tmp_path / "roots.pem").write_text(bao.root_pem())
    edge_ca = make_ca("edge test CA")
    (tmp_path / "edge").mkdir()
    edge = write_server_files(tmp_path / "edge", issue_server_cert(edge_ca, ["lb.example.test"]), edge_ca)
    lb_dir = tmp_path / "lb"
    lb_dir.mkdir()
    sock = lb_dir / "admin.sock"

    class _NotYet:  # the first renewal runs before nginx exists: its pid file and port come later
        pid_file = tmp_path / "nginx/nginx.pid"
        port = 1

    config = tmp_path / "certd.toml"
    config.write_text(_config(bao, tmp_path, _NotYet, sock, edge["combined"]))
    first = certd(config, "renew", "backend-1", "--json")
    assert first.returncode == 0, first.stdout + first.stderr
    out = tmp_path / "out/backend-1"
    (tmp_path / "nginx").mkdir()
    nginx = nginx_factory(out / "fullchain.pem", out / "privkey.pem", workdir=tmp_path / "nginx")
    config.write_text(_config(bao, tmp_path, nginx, sock, edge["combined"]))
    bundle = tmp_path / "pinned/backend-ca.pem"
    old_pins = {c.subject.rfc4514_string() for c in load_pem_certs(bundle.read_bytes())}
    assert len(old_pins) == 2  # the old root and intermediate, nothing else
    haproxy = haproxy_factory(
        edge["combined"], backend_server=f"127.0.0.1:{nginx.port}", backend_ca_file=bundle,
        backend_sni=f'"{NAME}"', backend_options=f"verifyhost {NAME} check check-ssl check-sni {NAME} inter 200ms "
        f"crt {edge['combined']}", workdir=lb_dir,
    )
    time.sleep(0.8)
    assert haproxy.upstream_stat()["status"].startswith("UP")
    checks_failed = int(haproxy.upstream_stat()["chkfail"] or 0)

    new_root, new_issuer = _new_root_and_intermediate(bao)
    with (tmp_path / "roots.pem").open("a") as pins:  # the operator pins the new root first
        pins.write(new_root)
    with _Traffic(f"https://127.0.0.1:{haproxy.port}/", edge["ca"]) as traffic:
        time.sleep(0.5)
        bao.api("pki/config/issuers", {"default": new_issuer})  # the CA operator switches
        if how == "renewal":
            renewed = certd(config, "renew", "backend-1", "--force", "--json")
        else:
            before = json.loads(certd(config, "ca", "status", "internal", "--json").stdout)
            assert before["on_retired"] == ["backend-1"] and len(before["retired"]) == 2, before
            renewed = certd(config, "ca", "rotate", "internal", "--json")
        time.sleep(1)
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    doc = json.loads(renewed.stdout)
    result = doc["results"][0] if how == "renewal" else doc["renewals"][0]
    if how == "ca-rotate":
        assert [p["phase"] for p in doc["phases"]][:2] == ["stage", "pin"], doc["phases"]
        assert doc["phases"][-1]["phase"] == "unpin" and doc["ok"], doc
    assert (result["outcome"], result["state"]) == ("renewed", "served"), result
    assert traffic.failed == 0 and traffic.sent > 10, (traffic.sent, traffic.errors[:5])
    stat = haproxy.upstream_stat()
    assert stat["status"].startswith("UP") and int(stat["chkfail"] or 0) == checks_failed, stat
    assert haproxy._proc.proc.poll() is None and haproxy.pid == haproxy._proc.pid

    served = load_pem_certs((out / "cert.pem").read_bytes())[0]
    assert served.issuer.rfc4514_string() == "CN=certd test OpenBao intermediate 2027"
    history = json.loads(certd(config, "history", "backend-1", "--json").stdout)
    kinds = [e["kind"] for e in reversed(history["events"]) if e.get("renewal_id") == result["renewal_id"]]
    if how == "renewal":  # pinned before nginx reloaded (with ca rotate, the pin phase came before the renewal)
        assert kinds.index("bundle.pushed") < kinds.index("deploy.done"), kinds
    new_pins = {c.subject.rfc4514_string() for c in load_pem_certs(bundle.read_bytes())}
    assert new_pins == {"CN=certd test OpenBao root 2027", "CN=certd test OpenBao intermediate 2027"}, new_pins
    assert haproxy.runtime(f"show ssl ca-file {bundle}").count("Certificate #") == 2
    assert x509.load_pem_x509_certificate(new_root.encode()).subject.rfc4514_string() in new_pins
    after = json.loads(certd(config, "ca", "status", "internal", "--json").stdout)
    assert after["on_retired"] == [] and after["retired"] == [], after
