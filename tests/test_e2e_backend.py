"""The end-to-end encrypted path: a real OpenBao (Vault API) issues a backend certificate from its intermediate,
real nginx serves it, real HAProxy re-encrypts to it verifying against ``certd bundle`` (the pinned OpenBao root)
with SNI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509

from certd.pki.certs import load_pem_certs, serial_hex
from tests.cli import certd as run_certd
from tests.servers.openbao import OpenBaoServer
from tests.servers.tlsutil import issue_server_cert, make_ca, write_server_files

NAME = "backend-1.internal.test"
ROLE = "backend-internal"


def certd(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_certd(*args, config=config)


def _config(vault: Any, tmp: Path, db: str, nginx: Any | None) -> str:
    deploy = ""
    if nginx is not None:
        deploy = (f'deploy = ["nginx"]\nverify = [{{ endpoint = "127.0.0.1:{nginx.port}", sni = "{NAME}" }}]\n'
                  f'rollback = true\n\n[deploy.nginx]\ntype = "signal"\npid_file = "{nginx.pid_file}"\n')
    return f"""
[database]
url = "{db}"

[issuers.internal]
type = "vault"
url = "{vault.url}"
ca_bundle = "{vault.ca_bundle_path}"
roots = "{tmp}/vault-root.pem"
bundle_file = "{tmp}/pinned/backend-ca.pem"
mount = "pki"
role = "{ROLE}"
auth = "approle"
role_id_file = "{tmp}/role_id"
secret_id_file = "{tmp}/secret_id"

[certificates.backend-1]
issuer = "internal"
names = ["{NAME}"]
lifetime = "1h"
output_dir = "{tmp}/out/backend-1"
{deploy}"""


def setup_openbao(vault: OpenBaoServer, tmp: Path) -> None:
    vault.add_role(ROLE, allowed_domains="internal.test", allow_subdomains=True, key_type="any", max_ttl="24h")
    _, role_id, secret_id = vault.approle()
    (tmp / "role_id").write_text(role_id + "\n")
    (tmp / "secret_id").write_text(secret_id + "\n")
    (tmp / "vault-root.pem").write_text(vault.root_pem())


def test_vault_backend_behind_haproxy(openbao: OpenBaoServer, nginx_factory: Any, haproxy_factory: Any,
                                      sqlite_url: str, tmp_path: Path) -> None:
    vault = openbao
    setup_openbao(vault, tmp_path)
    bootstrap = tmp_path / "bootstrap.toml"
    bootstrap.write_text(_config(vault, tmp_path, sqlite_url, None))

    first = certd(bootstrap, "renew", "backend-1", "--json")
    assert first.returncode == 0, first.stderr
    logged = [json.loads(line) for line in first.stderr.splitlines() if line.startswith("{")]
    assert [r for r in logged if r["level"] in ("warning", "error")] == []  # a healthy renewal is quiet
    out = tmp_path / "out/backend-1"
    nginx = nginx_factory(out / "fullchain.pem", out / "privkey.pem")
    full = tmp_path / "certd.toml"
    full.write_text(_config(vault, tmp_path, sqlite_url, nginx))

    bundle = tmp_path / "lb-pins.pem"
    assert certd(full, "bundle", "backend-1", "--out", str(bundle)).returncode == 0
    pinned = load_pem_certs(bundle.read_bytes())
    assert any(c.subject == c.issuer for c in pinned)  # the pinned root, no system store
    assert len(pinned) == 2
    assert {c.subject.rfc4514_string() for c in pinned} == {
        x509.load_pem_x509_certificate(vault.root_pem().encode()).subject.rfc4514_string(),
        x509.load_pem_x509_certificate(vault.intermediate_pem().encode()).subject.rfc4514_string()}
    assert (tmp_path / "pinned/backend-ca.pem").read_bytes() == bundle.read_bytes()  # issuer bundle_file

    edge_ca = make_ca("edge test CA")
    (tmp_path / "edge").mkdir()
    edge = write_server_files(tmp_path / "edge", issue_server_cert(edge_ca), edge_ca)
    lb = haproxy_factory(edge["combined"], backend_server=f"127.0.0.1:{nginx.port}", backend_ca_file=bundle,
                         backend_sni=NAME)
    through = requests.get(f"https://127.0.0.1:{lb.port}/", verify=str(edge["ca"]), timeout=10)
    assert through.status_code == 200 and through.text == "ok\n"

    wrong = haproxy_factory(edge["combined"], backend_server=f"127.0.0.1:{nginx.port}", backend_ca_file=bundle,
                            backend_sni="other.internal.test")
    refused = requests.get(f"https://127.0.0.1:{wrong.port}/", verify=str(edge["ca"]), timeout=10)
    assert refused.status_code == 503  # HAProxy refused the backend: its certificate is not for that name

    # Rotation through the full pipeline: SIGHUP to nginx, verify proves the new serial is served.
    renewed = json.loads(certd(full, "renew", "backend-1", "--force", "--json").stdout)["results"][0]
    assert (renewed["outcome"], renewed["state"]) == ("renewed", "served"), renewed
    served = load_pem_certs((out / "cert.pem").read_bytes())[0]
    assert serial_hex(served) == renewed["serial"]
    assert requests.get(f"https://127.0.0.1:{lb.port}/", verify=str(edge["ca"]), timeout=10).status_code == 200

    # Revocation at Vault by serial, without a replacement: OpenBao's CRL lists it.
    revoked = certd(full, "revoke", "backend-1", "--no-replace", "--json")
    assert revoked.returncode == 0, revoked.stderr
    assert vault.crl().get_revoked_certificate_by_serial_number(served.serial_number) is not None


@pytest.mark.parametrize("field", ["sealed", "wrong-secret"])
def test_vault_failures_leave_the_old_certificate(openbao: OpenBaoServer, openbao_factory: Any, sqlite_url: str,
                                                  tmp_path: Path, field: str) -> None:
    vault = openbao_factory() if field == "sealed" else openbao  # never seal the shared server
    setup_openbao(vault, tmp_path)
    cfg = tmp_path / "certd.toml"
    cfg.write_text(_config(vault, tmp_path, sqlite_url, None))
    assert certd(cfg, "renew", "backend-1").returncode == 0
    before = (tmp_path / "out/backend-1/combined.pem").read_bytes()
    if field == "sealed":
        vault.seal()
    else:
        (tmp_path / "secret_id").write_text("not-the-secret")  # each `certd renew` process logs in afresh
    proc = certd(cfg, "renew", "backend-1", "--force", "--json")
    assert proc.returncode == 1
    result = json.loads(proc.stdout)["results"][0]
    assert result["failed_step"] == "issue"
    assert "not-the-secret" not in proc.stdout + proc.stderr
    assert (tmp_path / "out/backend-1/combined.pem").read_bytes() == before
    if field == "sealed":
        vault.unseal()
        assert certd(cfg, "renew", "backend-1", "--force").returncode == 0
