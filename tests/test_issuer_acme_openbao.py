"""certd's ACME issuer against a second, independent ACME server: OpenBao's PKI engine (not Pebble's code).

Real OpenBao (``tests/servers/openbao_acme.py``), real validation: HTTP-01 on 127.0.0.1:80 (OpenBao validates only
there) for ``localhost`` and the IP identifier ``127.0.0.1``, DNS-01 through BIND (OpenBao's ``dns_resolver``),
External Account Binding, renewal, key rollover and revocation. OpenBao refuses revocation reason codes
(``badRevocationReason``): certd revokes without one, says so in a ``revoke.reason_dropped`` event, and the serial
is on OpenBao's CRL. OpenBao has no ARI: the lifetime rule decides.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store

from certd.config.load import load_config
from certd.engine.app import App
from certd.pki.certs import load_pem_certs
from certd.pki.keys import build_csr
from certd.pki.revocation import RevocationReason
from tests.cli import certd as run_certd
from tests.conftest import WriteConfig
from tests.servers.bind import BindServer
from tests.servers.openbao_acme import IP_ROLE, OpenBaoAcme

HTTP01 = 'http01_listen = "127.0.0.1:80"'


def bao_config(acme: OpenBaoAcme, tmp: Path, certs: dict[str, list[str]], *, issuer_extra: str = "",
               challenge: str = HTTP01, directory: str | None = None) -> str:
    """One ACME issuer ``bao`` on ``acme``'s directory (its TLS trusted through ``ca_bundle``, issued chains
    pinned to OpenBao's root) and one certificate per entry of ``certs``."""
    roots = tmp / "openbao-root.pem"
    roots.write_text(acme.root_pem())
    body = [
        f'[database]\nurl = "sqlite:///{tmp}/certd.db"\n',
        "[issuers.bao]",
        'type = "acme"',
        f'directory = "{directory or acme.directory_url}"',
        f'ca_bundle = "{acme.ca_bundle_path}"',
        f'roots = "{roots}"',
        'email = "ops@example.test"',
        "rate_limits = false",
        challenge,
        issuer_extra,
        "",
    ]
    for name, names in certs.items():
        quoted = ", ".join(f'"{n}"' for n in names)
        body += [f"[certificates.{name}]", 'issuer = "bao"', f"names = [{quoted}]", f'output_dir = "{tmp}/out/{name}"',
                 ""]
    return "\n".join(body)


def certd(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_certd(*args, config=config, timeout=timeout)


def certd_json(config: Path, *args: str) -> list[dict[str, Any]]:
    proc = certd(config, *args, "--json")
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    results: list[dict[str, Any]] = json.loads(proc.stdout)["results"]
    return results


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


def published(tmp: Path, name: str) -> tuple[x509.Certificate, list[x509.Certificate]]:
    out = tmp / "out" / name
    return load_pem_certs((out / "cert.pem").read_bytes())[0], load_pem_certs((out / "chain.pem").read_bytes())


def verify_to_root(acme: OpenBaoAcme, leaf: x509.Certificate, chain: list[x509.Certificate],
                   subject: x509.DNSName | x509.IPAddress) -> None:
    """Path validation (RFC 5280, cryptography's verifier) from the leaf through chain.pem to OpenBao's root only."""
    root = load_pem_certs(acme.root_pem().encode())
    verifier = PolicyBuilder().store(Store(root)).build_server_verifier(subject)
    path = verifier.verify(leaf, chain)
    assert path[-1] == root[0] and len(path) == 3  # leaf, the mount's intermediate, the root


def sans(leaf: x509.Certificate) -> tuple[list[str], list[str]]:
    ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(ext.get_values_for_type(x509.DNSName)), [str(i) for i in ext.get_values_for_type(x509.IPAddress)]


def test_issue_renew_and_revoke_through_the_cli(
    openbao_acme: OpenBaoAcme, port80: None, tmp_path: Path, write_config: WriteConfig,
    open_app: Callable[[Path], App]
) -> None:
    """localhost + the IP identifier 127.0.0.1 over real HTTP-01; renewal; revoke with keyCompromise."""
    assert "renewalInfo" not in openbao_acme.directory()  # OpenBao has no ARI
    config = write_config(bao_config(openbao_acme, tmp_path, {"edge": ["localhost", "127.0.0.1"]}))
    started = time.monotonic()
    [first] = certd_json(config, "renew", "edge")
    assert (first["outcome"], first["state"]) == ("renewed", "published"), first
    leaf, chain = published(tmp_path, "edge")
    assert f"{leaf.serial_number:x}" == first["serial"].lstrip("0")
    assert sans(leaf) == (["localhost"], ["127.0.0.1"])
    verify_to_root(openbao_acme, leaf, chain, x509.DNSName("localhost"))
    verify_to_root(openbao_acme, leaf, chain, x509.IPAddress(IPv4Address("127.0.0.1")))
    assert openbao_acme.certificate_record(leaf.serial_number)["revocation_time"] == 0

    app = open_app(config)
    version = app.inventory.current_version("edge")
    assert version is not None and version.ari_cert_id is None and version.renew_at is not None  # lifetime rule
    assert app.inventory.load_account("bao", openbao_acme.directory_url) is not None

    [second] = certd_json(config, "renew", "edge", "--force")
    assert second["outcome"] == "renewed" and second["serial"] != first["serial"], second
    renewed, chain = published(tmp_path, "edge")
    verify_to_root(openbao_acme, renewed, chain, x509.DNSName("localhost"))

    proc = certd(config, "revoke", "edge", "--reason", "keyCompromise", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    revoked, replacement = json.loads(proc.stdout)["results"]
    assert (revoked["outcome"], revoked["serial"], revoked["reason"]) == ("revoked", second["serial"],
                                                                           "ReasonDropped"), revoked
    assert replacement["outcome"] == "renewed" and replacement["serial"] != second["serial"], replacement
    assert "badRevocationReason" in proc.stderr and "refused reason keyCompromise" in proc.stderr  # logged
    events = {e.kind: e for e in app.inventory.events("edge")}
    dropped = events["revoke.reason_dropped"]
    assert dropped.level == "warning" and second["serial"] in dropped.message
    assert "refused reason keyCompromise" in dropped.message and "badRevocationReason" in dropped.message
    assert "no reason: the CA refused keyCompromise" in events["revoke.done"].message
    states = {v.serial: v.state for v in app.inventory.versions("edge")}
    assert states[second["serial"]] == "revoked" and states[first["serial"]] != "revoked"

    crl = openbao_acme.crl()
    on_crl = {e.serial_number: e for e in crl}
    assert renewed.serial_number in on_crl  # revoked at the CA, not only in certd's inventory
    assert leaf.serial_number not in on_crl and replacement["serial"] not in {f"{s:x}" for s in on_crl}
    with pytest.raises(x509.ExtensionNotFound):  # OpenBao recorded no reason: it was really dropped
        on_crl[renewed.serial_number].extensions.get_extension_for_class(x509.CRLReason)
    assert time.monotonic() - started < 60


def test_unspecified_reason_is_accepted_as_sent(
    openbao_acme: OpenBaoAcme, port80: None, tmp_path: Path, write_config: WriteConfig,
    open_app: Callable[[Path], App]
) -> None:
    """An IP-only order; OpenBao takes reason 0: one request, no reason_dropped event; again counts as done.

    certd's CSR for IP-only names has an empty subject, but OpenBao copies the first identifier into the CN and
    checks that as a host name against the role's ``allowed_domains``: the operator's fix is a role listing the
    address there (checked first, so the finding stays true). OpenBao then also writes a DNS SAN "127.0.0.1".
    """
    assert build_csr(ec.generate_private_key(ec.SECP256R1()), ["127.0.0.1"]).subject == x509.Name([])
    default = open_app(write_config(bao_config(openbao_acme, tmp_path, {"ip": ["127.0.0.1"]}), name="default.toml"))
    refused = default.pipeline.renew("ip")
    assert refused.outcome == "failed" and "common name 127.0.0.1 not allowed by this role" in (refused.error or "")
    (tmp_path / "certd.db").unlink()
    config = bao_config(openbao_acme, tmp_path, {"ip": ["127.0.0.1"]},
                        directory=openbao_acme.role_directory_url(IP_ROLE))
    app = open_app(write_config(config))
    issued = app.pipeline.renew("ip")
    assert issued.outcome == "renewed", issued.error
    leaf, chain = published(tmp_path, "ip")
    dns_sans, ip_sans = sans(leaf)
    assert ip_sans == ["127.0.0.1"] and set(dns_sans) <= {"127.0.0.1"}  # OpenBao adds the bogus DNS SAN
    verify_to_root(openbao_acme, leaf, chain, x509.IPAddress(IPv4Address("127.0.0.1")))
    mark = openbao_acme.server.audit_mark()
    result = app.pipeline.revoke("ip", RevocationReason.UNSPECIFIED)
    assert (result.outcome, result.reason) == ("revoked", None), result.error
    asked = [e["request"]["path"] for e in openbao_acme.server.audited(mark)]
    assert [a for a in asked if a.endswith("/acme/revoke-cert")] == [f"{openbao_acme.mount}/roles/{IP_ROLE}/acme/"
                                                                      "revoke-cert"]  # one request, reason 0 taken
    assert "revoke.reason_dropped" not in {e.kind for e in app.inventory.events("ip")}
    assert leaf.serial_number in openbao_acme.revoked_serials()
    # The same certificate again, with a reason OpenBao refuses: refused, retried without, alreadyRevoked: done.
    app.services.issuer("bao").revoke(leaf, RevocationReason.SUPERSEDED)


def test_account_key_rollover_is_not_offered_and_changes_nothing(
    openbao_acme: OpenBaoAcme, port80: None, tmp_path: Path, write_config: WriteConfig,
    open_app: Callable[[Path], App]
) -> None:
    config = write_config(bao_config(openbao_acme, tmp_path, {"roll": ["localhost"]}))
    app = open_app(config)
    assert certd_json(config, "renew", "roll")[0]["outcome"] == "renewed"
    before = app.inventory.load_account("bao", openbao_acme.directory_url)
    assert "keyChange" in openbao_acme.directory()
    proc = certd(config, "account", "rollover", "bao", "--json")
    # OpenBao lists keyChange in its directory but answers it 404 "unsupported path": the rollover fails, and
    # the stored account key must be the one the CA still knows, so renewals go on working.
    assert proc.returncode == 1 and "ACME bao: key-rollover:" in proc.stderr, (proc.returncode, proc.stderr)
    assert app.inventory.load_account("bao", openbao_acme.directory_url) == before
    assert certd_json(config, "renew", "roll", "--force")[0]["outcome"] == "renewed"


@pytest.mark.parametrize("good", [True, False], ids=["accepted", "rejected"])
def test_external_account_binding(
    good: bool, openbao_acme_eab: OpenBaoAcme, port80: None, tmp_path: Path, write_config: WriteConfig,
    open_app: Callable[[Path], App]
) -> None:
    assert openbao_acme_eab.directory()["meta"]["externalAccountRequired"] is True
    kid, key = openbao_acme_eab.new_eab()
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    hmac_file = tmp_path / "eab.key"
    hmac_file.write_text((key if good else wrong) + "\n")
    extra = f'eab_kid = "{kid}"\neab_hmac_key_file = "{hmac_file}"'
    app = open_app(write_config(bao_config(openbao_acme_eab, tmp_path, {"edge": ["localhost"]}, issuer_extra=extra)))
    result = app.pipeline.renew("edge")
    if good:
        assert result.outcome == "renewed", result.error
        leaf, chain = published(tmp_path, "edge")
        verify_to_root(openbao_acme_eab, leaf, chain, x509.DNSName("localhost"))
        return
    assert result.outcome == "failed" and result.error is not None
    # OpenBao answers a binding signed with the wrong HMAC key with a 500 from go-jose, not RFC 8555's
    # unauthorized; certd retries it as a server error (bounded) and then reports the CA's own words.
    assert "ACME bao: edge: order:" in result.error and "serverInternal" in result.error, result.error
    assert key not in result.error and wrong not in result.error and key.split("-")[-1] not in result.error
    assert app.inventory.load_account("bao", openbao_acme_eab.directory_url) is None


def test_eab_required_but_not_configured(
    openbao_acme_eab: OpenBaoAcme, tmp_path: Path, write_config: WriteConfig, open_app: Callable[[Path], App]
) -> None:
    app = open_app(write_config(bao_config(openbao_acme_eab, tmp_path, {"edge": ["localhost"]})))
    result = app.pipeline.renew("edge")
    assert result.outcome == "failed" and "requires External Account Binding" in (result.error or ""), result


def _txt(bind: BindServer, name: str) -> list[str]:
    answer = dns.query.tcp(dns.message.make_query(name, "TXT"), bind.host, port=bind.port, timeout=5)
    return [r.to_text() for rrset in answer.answer for r in rrset]


def test_dns01_wildcard_through_bind(
    openbao_acme_dns: OpenBaoAcme, bind: BindServer, tmp_path: Path, write_config: WriteConfig,
    open_app: Callable[[Path], App]
) -> None:
    """OpenBao resolves through BIND (``dns_resolver``) and sees the TXT records certd wrote over RFC 2136."""
    dns01 = (f'challenge = "dns-01"\ndns_server = "{bind.address}"\ntsig_key_name = "{bind.tsig_key_name}"\n'
             f'tsig_secret_file = "{bind.tsig_secret_file}"\ndns_propagation_timeout = "30s"')
    names = [f"*.bao.{bind.zone}", f"bao.{bind.zone}"]
    app = open_app(write_config(bao_config(openbao_acme_dns, tmp_path, {"wild": names}, challenge=dns01)))
    result = app.pipeline.renew("wild")
    assert result.outcome == "renewed", result.error
    leaf, chain = published(tmp_path, "wild")
    assert sans(leaf) == (sorted(names), [])
    verify_to_root(openbao_acme_dns, leaf, chain, x509.DNSName(f"x.bao.{bind.zone}"))
    assert _txt(bind, f"_acme-challenge.bao.{bind.zone}") == []  # cleaned up


def test_http01_for_a_name_resolved_through_bind(
    openbao_acme_dns: OpenBaoAcme, bind: BindServer, port80: None, tmp_path: Path, write_config: WriteConfig,
    open_app: Callable[[Path], App]
) -> None:
    """With ``dns_resolver`` set, OpenBao also resolves HTTP-01 names there (BIND's ``*`` A is 127.0.0.1)."""
    names = [f"www.bao-http.{bind.zone}"]
    app = open_app(write_config(bao_config(openbao_acme_dns, tmp_path, {"web": names})))
    result = app.pipeline.renew("web")
    assert result.outcome == "renewed", result.error
    leaf, chain = published(tmp_path, "web")
    verify_to_root(openbao_acme_dns, leaf, chain, x509.DNSName(names[0]))


@pytest.mark.slow  # OpenBao retries a failing HTTP-01 validation with backoff for about 100 s before giving up
def test_failed_http01_keeps_the_old_certificate(
    openbao_acme: OpenBaoAcme, port80: None, tmp_path: Path, write_config: WriteConfig,
    open_app: Callable[[Path], App]
) -> None:
    """Webroot mode with nothing on port 80: OpenBao's validation cannot connect; the error says so."""
    config = write_config(bao_config(openbao_acme, tmp_path, {"edge": ["localhost"]}))
    assert open_app(config).pipeline.renew("edge").outcome == "renewed"
    before = (tmp_path / "out/edge/combined.pem").read_bytes()
    (tmp_path / "nowhere").mkdir()
    config.write_text(config.read_text().replace(HTTP01, f'http01_webroot = "{tmp_path}/nowhere"'))
    result = open_app(config).pipeline.renew("edge", force=True)
    assert result.outcome == "failed" and result.error is not None
    assert "ACME bao: edge" in result.error and "validation of localhost failed" in result.error, result.error
    assert (tmp_path / "out/edge/combined.pem").read_bytes() == before
