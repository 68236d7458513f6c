"""Issued versus requested, on a real OpenBao: the failure behind cert-manager #7157 and #7741.

There, Vault's ``leaf_not_after_behavior = truncate`` cut certificates at the CA's own expiry, every
certificate came back already due, and the client ordered again at once: 8,000 requests in five
minutes. certd compares what came back with what it asked for:

* a lifetime capped by the role's ``max_ttl`` is usable: one warning event (naming the role) and the
  ``certd_lifetime_shortened_total`` metric, and no new order until the shorter certificate is due;
* a lifetime truncated at the issuing CA's expiry, so short that it would be due at once, is refused
  at ``check`` (``LifetimeShortenedByCA``, naming the CA and its expiry), not retryable, backed off
  for at least an hour, and the next ``renew`` does not ask the CA again;
* an extended key usage asked for (``ext_key_usage = ["clientAuth"]``) that the role leaves out is
  refused, naming the role's setting.
"""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from certd.config.load import load_config
from certd.engine.app import App
from certd.metrics import Metrics
from tests.cli import certd
from tests.servers.openbao import OpenBaoServer


def _certd(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return certd(*args, config=config)


def _config(bao: OpenBaoServer, tmp: Path, *, mount: str, role: str, lifetime: str, renew_before: str,
            extra: str = "") -> Path:
    (tmp / "token").write_text(bao.root_token + "\n")
    (tmp / "token").chmod(0o600)
    (tmp / "root.pem").write_text(bao.root_pem())
    path = tmp / "certd.toml"
    path.write_text(f"""
[database]
url = "sqlite:///{tmp}/certd.db"

[issuers.internal]
type = "vault"
url = "{bao.url}"
ca_bundle = "{bao.ca_bundle_path}"
roots = "{tmp}/root.pem"
mount = "{mount}"
role = "{role}"
auth = "token"
token_file = "{tmp}/token"

[certificates.api]
issuer = "internal"
names = ["api.example.test"]
lifetime = "{lifetime}"
renew_before = "{renew_before}"
output_dir = "{tmp}/out/api"
{extra}
""")
    return path


def _signs(bao: OpenBaoServer, mount: str, role: str, since: int) -> int:
    return bao.count(f"{mount}/sign/{role}", since=since)


def test_a_lifetime_capped_by_max_ttl_warns_once_and_does_not_loop(openbao: OpenBaoServer, tmp_path: Path) -> None:
    openbao.add_role("capped", allowed_domains="example.test", allow_subdomains=True, key_type="any", max_ttl="2h")
    config = _config(openbao, tmp_path, mount="pki", role="capped", lifetime="48h", renew_before="30m")
    mark = openbao.audit_mark()
    metrics = Metrics()
    app = App.open(load_config(config), metrics=metrics)
    try:
        result = app.pipeline.renew("api")
        assert result.outcome == "renewed", result
        shortened = [e for e in app.inventory.events("api") if e.kind == "check.lifetime_shortened"]
        assert len(shortened) == 1 and shortened[0].level == "warning", shortened
        message = shortened[0].message
        assert re.search(r"for 2h(30s)? of the 2d asked", message), message  # OpenBao backdates 30 s
        assert "Vault role capped's max_ttl" in message, message
        text = metrics.render().decode()
        assert 'certd_lifetime_shortened_total{issuer="internal",name="api"} 1.0' in text, text
        again = app.pipeline.renew("api")  # due in ~1.5h, not now: no new order
        assert again.outcome == "skipped", again
        assert _signs(openbao, "pki", "capped", mark) == 1
    finally:
        app.close()


def test_a_lifetime_truncated_at_the_ca_expiry_is_refused_and_backed_off(
    openbao: OpenBaoServer, tmp_path: Path
) -> None:
    """A mount whose intermediate expires in 2h, truncating leaves at its end, and a role that allows 72h."""
    mount = f"pki-short-{tmp_path.name[-8:].strip('_')}"  # the server is shared by the session's tests
    openbao.api(f"sys/mounts/{mount}", {"type": "pki", "config": {"max_lease_ttl": "87600h"}})
    csr = openbao.api(f"{mount}/intermediate/generate/internal",
                      {"common_name": "certd test short-lived intermediate", "key_type": "ec",
                       "key_bits": 256})["data"]["csr"]
    signed = openbao.api("pki-root/root/sign-intermediate", {"csr": csr, "ttl": "2h", "format": "pem",
                                                             "common_name": "certd test short-lived intermediate"})
    imported = openbao.api(f"{mount}/intermediate/set-signed",
                           {"certificate": signed["data"]["certificate"] + "\n" + signed["data"]["issuing_ca"]})
    issuer_id = imported["data"]["imported_issuers"][0]
    openbao.api(f"{mount}/config/issuers", {"default": issuer_id})
    openbao.api(f"{mount}/issuer/default", {"leaf_not_after_behavior": "truncate"}, method="POST")
    openbao.api(f"{mount}/roles/long", {"allowed_domains": "example.test", "allow_subdomains": True,
                                        "key_type": "any", "max_ttl": "72h"})
    config = _config(openbao, tmp_path, mount=mount, role="long", lifetime="72h", renew_before="24h")
    mark = openbao.audit_mark()

    first = _certd(config, "renew", "api", "--json")
    assert first.returncode == 1, first.stdout + first.stderr
    (result,) = json.loads(first.stdout)["results"]
    assert (result["failed_step"], result["reason"]) == ("check", "LifetimeShortenedByCA"), result
    assert "cut at the issuing CA's own expiry" in result["error"] and "short-lived intermediate" in result["error"]
    assert "does not order again" in result["error"]
    listed = {c["name"]: c for c in json.loads(_certd(config, "list", "--json").stdout)["certificates"]}["api"]
    retry = datetime.fromisoformat(listed["next_attempt_at"].replace("Z", "+00:00"))
    assert retry - datetime.now(UTC) > timedelta(minutes=50), listed  # not retryable: an hour at least
    assert listed["status"] != "ok"

    second = _certd(config, "renew", "api", "--json")  # backed off: the CA is not asked again
    assert second.returncode == 0, second.stdout + second.stderr
    assert json.loads(second.stdout)["results"][0]["outcome"] == "skipped"
    assert _signs(openbao, mount, "long", mark) == 1
    assert not (tmp_path / "out/api/cert.pem").exists()  # nothing was published


def test_a_missing_client_auth_usage_is_refused(openbao: OpenBaoServer, tmp_path: Path) -> None:
    openbao.add_role("server-only", allowed_domains="example.test", allow_subdomains=True, key_type="any",
                     max_ttl="24h", server_flag=True, client_flag=False)
    config = _config(openbao, tmp_path, mount="pki", role="server-only", lifetime="1h", renew_before="20m",
                     extra='ext_key_usage = ["serverAuth", "clientAuth"]')
    done = _certd(config, "renew", "api", "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    (result,) = json.loads(done.stdout)["results"]
    assert (result["failed_step"], result["reason"]) == ("check", "ExtendedKeyUsageMissing"), result
    assert "does not allow clientAuth" in result["error"] and "ext_key_usage" in result["error"]
    openbao.add_role("server-only", allowed_domains="example.test", allow_subdomains=True, key_type="any",
                     max_ttl="24h", server_flag=True, client_flag=True)
    fixed = _certd(config, "renew", "api", "--force", "--json")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
