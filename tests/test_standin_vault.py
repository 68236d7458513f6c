"""The Vault stand-in, driven by an unmodified hvac client: proof that it speaks Vault's API.

Nothing from certd is used here, so a bug shared by certd and the stand-in
cannot hide behind the other.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re

import hvac
import hvac.exceptions
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.standins.vault import VaultStandin, go_duration, parse_vault_duration

ENVELOPE = {"request_id", "lease_id", "renewable", "lease_duration", "data", "wrap_info", "warnings", "auth"}


def csr_pem(cn: str, *sans: str, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for san in sans or (cn,):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            names.append(x509.DNSName(san))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def client(vault: VaultStandin, token: str = "", **kwargs: object) -> hvac.Client:
    return hvac.Client(url=vault.url, token=token, verify=str(vault.ca_bundle_path), **kwargs)


@pytest.fixture
def vault(vault_standin: VaultStandin) -> VaultStandin:
    vault_standin.add_role("web", allowed_domains="example.test", allow_subdomains=True, key_type="ec",
                           max_ttl="24h", ttl="1h")
    vault_standin.add_approle("role-1", "secret-1", token_ttl=600)
    return vault_standin


@pytest.fixture
def logged_in(vault: VaultStandin) -> hvac.Client:
    c = client(vault)
    c.auth.approle.login("role-1", "secret-1")
    return c


def test_durations_follow_go_formatting() -> None:
    assert go_duration(768 * 3600) == "768h0m0s"
    assert go_duration(90) == "1m30s"
    assert go_duration(5) == "5s"
    assert parse_vault_duration("1h30m") == 5400
    assert parse_vault_duration("3600") == parse_vault_duration(3600) == parse_vault_duration("3600s") == 3600
    assert parse_vault_duration("2d") == 172800


def test_health_reports_active_standby_and_sealed(vault: VaultStandin) -> None:
    c = client(vault)
    assert c.sys.read_health_status(method="GET")["sealed"] is False
    vault.standby = True
    assert c.sys.read_health_status(method="GET").status_code == 429
    assert c.sys.read_health_status(method="GET", standby_ok=True)["standby"] is True
    vault.standby = False
    vault.seal()
    resp = c.sys.read_health_status(method="GET")
    assert resp.status_code == 503 and resp.json()["sealed"] is True
    assert c.sys.read_health_status(method="GET", sealed_code=200)["sealed"] is True


def test_approle_login_lookup_and_renew(vault: VaultStandin) -> None:
    c = client(vault)
    resp = c.auth.approle.login("role-1", "secret-1")
    assert resp.keys() >= ENVELOPE
    assert resp["auth"]["lease_duration"] == 600 and resp["auth"]["renewable"] is True
    assert c.token == resp["auth"]["client_token"] and c.token.startswith("hvs.")
    info = c.auth.token.lookup_self()["data"]
    assert info["id"] == c.token and info["path"] == "auth/approle/login"
    assert "pki" in info["policies"] and 590 <= info["ttl"] <= 600
    renewed = c.auth.token.renew_self(increment="2h")
    assert renewed["auth"]["lease_duration"] == 7200
    assert vault.requests[0].path == "/v1/auth/approle/login" and vault.requests[1].token == c.token


def test_wrong_secret_id_is_a_400_as_in_vault(vault: VaultStandin) -> None:
    with pytest.raises(hvac.exceptions.InvalidRequest, match="invalid role or secret ID"):
        client(vault).auth.approle.login("role-1", "wrong")


def test_unknown_expired_and_revoked_tokens_are_forbidden(vault: VaultStandin) -> None:
    with pytest.raises(hvac.exceptions.Forbidden, match="permission denied"):
        client(vault, token="hvs.nope").auth.token.lookup_self()
    token = vault.create_token(ttl=3600)
    c = client(vault, token=token)
    assert c.auth.token.lookup_self()["data"]["ttl"] > 3500
    vault.expire_token(token)
    with pytest.raises(hvac.exceptions.Forbidden):
        c.auth.token.lookup_self()
    other = vault.create_token()
    vault.revoke_token(other)
    with pytest.raises(hvac.exceptions.Forbidden):
        client(vault, token=other).secrets.pki.sign_certificate("web", csr_pem("a.example.test"), "a.example.test")


def test_kubernetes_login(vault: VaultStandin) -> None:
    vault.add_kubernetes_role("certd", "jwt-abc", token_ttl=300)
    c = client(vault)
    resp = c.auth.kubernetes.login("certd", "jwt-abc")
    assert resp["auth"]["lease_duration"] == 300 and c.auth.token.lookup_self()["data"]["ttl"] > 290
    with pytest.raises(hvac.exceptions.Forbidden):
        client(vault).auth.kubernetes.login("certd", "jwt-other")
    with pytest.raises(hvac.exceptions.InvalidRequest, match='invalid role name "nope"'):
        client(vault).auth.kubernetes.login("nope", "jwt-abc")


def test_sign_returns_leaf_and_two_level_chain(vault: VaultStandin, logged_in: hvac.Client) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    resp = logged_in.secrets.pki.sign_certificate("web", csr_pem("a.example.test", "a.example.test",
                                                                 "b.example.test", key=key), "a.example.test")
    assert resp.keys() >= ENVELOPE and resp["warnings"] is None and resp["lease_id"] == ""
    data = resp["data"]
    leaf = x509.load_pem_x509_certificate(data["certificate"].encode())
    chain = [x509.load_pem_x509_certificate(p.encode()) for p in data["ca_chain"]]
    root = x509.load_pem_x509_certificate(vault.root_pem().encode())
    assert chain == [x509.load_pem_x509_certificate(vault.intermediate_pem().encode()), root]
    assert data["issuing_ca"] == data["ca_chain"][0]
    leaf.verify_directly_issued_by(chain[0])
    chain[0].verify_directly_issued_by(root)
    assert leaf.public_key() == key.public_key()
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == ["a.example.test", "b.example.test"]
    assert data["serial_number"] == ":".join(f"{b:02x}" for b in leaf.serial_number.to_bytes(
        (leaf.serial_number.bit_length() + 7) // 8, "big"))
    assert data["expiration"] == int(leaf.not_valid_after_utc.timestamp())
    lifetime = leaf.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(minutes=59) < lifetime <= dt.timedelta(hours=1)  # the role's ttl


def test_issue_generates_the_key(logged_in: hvac.Client) -> None:
    data = logged_in.secrets.pki.generate_certificate("web", "c.example.test",
                                                      extra_params={"private_key_format": "pkcs8"})["data"]
    key = serialization.load_pem_private_key(data["private_key"].encode(), None)
    leaf = x509.load_pem_x509_certificate(data["certificate"].encode())
    assert data["private_key_type"] == "ec" and data["private_key"].startswith("-----BEGIN PRIVATE KEY")
    assert leaf.public_key() == key.public_key()


def test_ttl_above_max_ttl_is_capped_with_vaults_warning(logged_in: hvac.Client) -> None:
    resp = logged_in.secrets.pki.sign_certificate("web", csr_pem("a.example.test"), "a.example.test",
                                                  extra_params={"ttl": "48h"})
    assert resp["warnings"] == ['TTL "48h0m0s" is longer than permitted maxTTL "24h0m0s", so maxTTL is being used']
    leaf = x509.load_pem_x509_certificate(resp["data"]["certificate"].encode())
    assert leaf.not_valid_after_utc - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=24)


def test_role_rules_refuse_names_with_vaults_messages(vault: VaultStandin, logged_in: hvac.Client) -> None:
    pki = logged_in.secrets.pki
    with pytest.raises(hvac.exceptions.InvalidRequest,
                       match=re.escape("common name evil.test not allowed by this role")):
        pki.sign_certificate("web", csr_pem("evil.test"), "evil.test")
    with pytest.raises(hvac.exceptions.InvalidRequest,
                       match=re.escape("subject alternate name x.other.test not allowed by this role")):
        pki.sign_certificate("web", csr_pem("a.example.test", "a.example.test", "x.other.test"), "a.example.test")
    with pytest.raises(hvac.exceptions.InvalidRequest, match=re.escape("common name example.test not allowed")):
        pki.generate_certificate("web", "example.test")  # allow_bare_domains is false
    with pytest.raises(hvac.exceptions.InvalidRequest, match="unknown role: nope"):
        pki.generate_certificate("nope", "a.example.test")
    vault.add_role("bare", allowed_domains="example.test", allow_bare_domains=True, key_type="ec")
    assert pki.generate_certificate("bare", "example.test")["data"]["certificate"]


def test_ip_sans_and_key_type_rules(vault: VaultStandin, logged_in: hvac.Client) -> None:
    pki = logged_in.secrets.pki
    data = pki.generate_certificate("web", "a.example.test", extra_params={"ip_sans": "10.0.0.7"})["data"]
    leaf = x509.load_pem_x509_certificate(data["certificate"].encode())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    vault.add_role("noip", allowed_domains="example.test", allow_subdomains=True, allow_ip_sans=False,
                   key_type="ec")
    with pytest.raises(hvac.exceptions.InvalidRequest, match="IP Subject Alternative Names are not allowed"):
        pki.sign_certificate("noip", csr_pem("a.example.test", "a.example.test", "10.0.0.7"), "a.example.test")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="role requires keys of type ec"):
        pki.sign_certificate("web", csr_pem("a.example.test", key=rsa_key), "a.example.test")


def test_revoke_by_serial(vault: VaultStandin, logged_in: hvac.Client) -> None:
    serial = logged_in.secrets.pki.sign_certificate("web", csr_pem("a.example.test"),
                                                    "a.example.test")["data"]["serial_number"]
    data = logged_in.secrets.pki.revoke_certificate(serial)["data"]
    assert data["revocation_time"] > 0
    assert vault.revoked_serials == {serial}
    assert logged_in.secrets.pki.revoke_certificate(serial)["data"]["revocation_time"] == data["revocation_time"]
    with pytest.raises(hvac.exceptions.InvalidRequest, match="not found"):
        logged_in.secrets.pki.revoke_certificate("01:02:03")


def test_ca_chain_endpoints_need_no_token(vault: VaultStandin) -> None:
    c = client(vault)
    pem = c.secrets.pki.read_ca_certificate_chain()
    assert pem == vault.intermediate_pem() + vault.root_pem()
    data = c.read("pki/cert/ca_chain")["data"]
    assert data["ca_chain"] == [vault.intermediate_pem(), vault.root_pem()]
    assert data["certificate"] == pem


def test_sealed_vault_answers_503_to_everything(vault: VaultStandin, logged_in: hvac.Client) -> None:
    vault.seal()
    with pytest.raises(hvac.exceptions.VaultDown, match="Vault is sealed"):
        logged_in.auth.token.lookup_self()
    with pytest.raises(hvac.exceptions.VaultDown):
        client(vault).auth.approle.login("role-1", "secret-1")
    vault.unseal()
    assert logged_in.auth.token.lookup_self()["data"]["ttl"] > 0


def test_policy_without_pki_is_forbidden(vault: VaultStandin) -> None:
    c = client(vault, token=vault.create_token(policies=("default",)))
    with pytest.raises(hvac.exceptions.Forbidden):
        c.secrets.pki.sign_certificate("web", csr_pem("a.example.test"), "a.example.test")


def test_injected_faults_map_to_hvacs_exceptions(vault: VaultStandin, logged_in: hvac.Client) -> None:
    vault.fail_next(429, "request path \"pki/sign/web\": rate limit quota exceeded")
    with pytest.raises(hvac.exceptions.RateLimitExceeded, match="rate limit"):
        logged_in.auth.token.lookup_self()
    assert logged_in.auth.token.lookup_self()["data"]["ttl"] > 0


def test_namespace_only_the_configured_one_answers(vault_standin_factory) -> None:  # type: ignore[no-untyped-def]
    vault = vault_standin_factory(namespace="team-a")
    vault.add_approle("r", "s")
    c = client(vault, namespace="team-a")
    c.auth.approle.login("r", "s")
    assert c.auth.token.lookup_self()["data"]["ttl"] > 0
    assert vault.requests[-1].namespace == "team-a"
    with pytest.raises(hvac.exceptions.InvalidPath, match="no handler for route"):
        client(vault).auth.approle.login("r", "s")
    with pytest.raises(hvac.exceptions.InvalidPath):
        client(vault, namespace="team-b").auth.approle.login("r", "s")


def test_tls_verifies_only_against_the_listener_ca(vault: VaultStandin, tmp_path) -> None:  # type: ignore[no-untyped-def]
    wrong = tmp_path / "root.pem"
    wrong.write_text(vault.root_pem())  # the PKI root does not sign Vault's listener certificate
    with pytest.raises(requests.exceptions.SSLError):
        hvac.Client(url=vault.url, verify=str(wrong)).sys.read_health_status(method="GET")
    assert client(vault).sys.read_health_status(method="GET")["initialized"] is True
