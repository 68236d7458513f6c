"""certd's Vault issuer against the Vault stand-in over HTTPS (verified with its ca_bundle)."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from certd.config import VaultIssuerConfig
from certd.errors import CertdError, IssuerError, IssuerUnavailable
from certd.issuers.base import Issuer, IssueRequest, RevocationReason
from certd.issuers.vault import VaultIssuer
from certd.keys import KeyType, build_csr, generate_key
from tests.standins.vault import VaultStandin

ROLE_ID, SECRET_ID, JWT = "role-id-5d1f", "secret-id-9c2e7a41", "jwt.eyJzdWIiOiJjZXJ0ZCJ9.sig"


class FakeClock:
    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


@pytest.fixture
def vault(vault_standin: VaultStandin) -> VaultStandin:
    vault_standin.add_role("backend", allowed_domains="example.test", allow_subdomains=True, key_type="any",
                           max_ttl="24h", ttl="1h")
    vault_standin.add_role("keys", allowed_domains="example.test", allow_subdomains=True, key_type="ec")
    vault_standin.add_approle(ROLE_ID, SECRET_ID, token_ttl=3600)
    vault_standin.add_kubernetes_role("certd", JWT)
    return vault_standin


def write(path: Path, text: str) -> Path:
    path.write_text(text + "\n")  # trailing whitespace must be stripped
    return path


def make_issuer(vault: VaultStandin, tmp_path: Path, *, auth: str = "approle", sleeps: list[float] | None = None,
                clock: Any = None, attempts: int = 3, **overrides: Any) -> VaultIssuer:
    settings: dict[str, Any] = {
        "type": "vault", "url": vault.url, "ca_bundle": vault.ca_bundle_path, "role": "backend", "auth": auth,
        "roots": write(tmp_path / "roots.pem", vault.root_pem()), "timeout": "5s",
    }
    if auth == "approle":
        settings["role_id_file"] = write(tmp_path / "role_id", ROLE_ID)
        settings["secret_id_file"] = write(tmp_path / "secret_id", SECRET_ID)
    elif auth == "token":
        settings["token_file"] = tmp_path / "token"
    else:
        settings["kubernetes_role"] = "certd"
        settings["jwt_file"] = write(tmp_path / "jwt", JWT)
    settings.update(overrides)
    record = sleeps if sleeps is not None else []
    return VaultIssuer("internal", VaultIssuerConfig(**settings), clock=clock, attempts=attempts, backoff=0.01,
                       sleep=record.append)


def request(*names: str, lifetime: timedelta | None = None, key_type: KeyType = KeyType.ECDSA_P256) -> IssueRequest:
    key = generate_key(key_type)
    return IssueRequest(certificate="web", names=names, key_type=key_type, csr=build_csr(key, names),
                        lifetime=lifetime)


def sans(cert: x509.Certificate) -> list[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(ext.get_values_for_type(x509.DNSName)) + [str(i) for i in ext.get_values_for_type(x509.IPAddress)]


def assert_chains_to_root(vault: VaultStandin, leaf: x509.Certificate, chain: tuple[x509.Certificate, ...]) -> None:
    root = x509.load_pem_x509_certificate(vault.root_pem().encode())
    assert [c.subject for c in chain] == [x509.load_pem_x509_certificate(vault.intermediate_pem().encode()).subject]
    leaf.verify_directly_issued_by(chain[0])
    chain[0].verify_directly_issued_by(root)


def lifetime_of(cert: x509.Certificate) -> timedelta:
    return cert.not_valid_after_utc - datetime.now(UTC)


@pytest.mark.parametrize("auth", ["approle", "token", "kubernetes"])
def test_sign_with_each_auth_method(vault: VaultStandin, tmp_path: Path, auth: str) -> None:
    if auth == "token":
        write(tmp_path / "token", vault.create_token(ttl=3600))
    issuer = make_issuer(vault, tmp_path, auth=auth)
    assert isinstance(issuer, Issuer)
    req = request("web.example.test", "api.example.test")
    issued = issuer.issue(req)
    assert sans(issued.leaf) == ["api.example.test", "web.example.test"]
    assert issued.leaf.public_key() == req.csr.public_key() and issued.private_key is None
    assert_chains_to_root(vault, issued.leaf, issued.chain)
    assert issuer.roots() == [x509.load_pem_x509_certificate(vault.root_pem().encode())]
    assert vault.count("POST", "/v1/pki/sign/backend") == 1 and vault.count("POST", "/v1/pki/issue/backend") == 0
    issuer.issue(request("web.example.test"))
    logins = sum(vault.count(m, p) for m, p in [("POST", "/v1/auth/approle/login"),
                                                 ("POST", "/v1/auth/kubernetes/login"),
                                                 ("GET", "/v1/auth/token/lookup-self")])
    assert logins == 1  # the token is reused


def test_vault_generates_key(vault: VaultStandin, tmp_path: Path) -> None:
    issuer = make_issuer(vault, tmp_path, role="keys", vault_generates_key=True)
    issued = issuer.issue(request("gen.example.test"))
    assert issued.private_key is not None
    assert issued.private_key.public_key() == issued.leaf.public_key()
    assert vault.count("POST", "/v1/pki/issue/keys") == 1 and vault.count("POST", "/v1/pki/sign/keys") == 0
    assert_chains_to_root(vault, issued.leaf, issued.chain)


def test_lifetime_is_sent_as_ttl_and_capped_by_max_ttl(vault: VaultStandin, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    issuer = make_issuer(vault, tmp_path)
    two_hours = issuer.issue(request("a.example.test", lifetime=timedelta(hours=2))).leaf
    assert timedelta(hours=2) - timedelta(minutes=1) < lifetime_of(two_hours) <= timedelta(hours=2)
    default = issuer.issue(request("a.example.test")).leaf
    assert timedelta(minutes=59) < lifetime_of(default) <= timedelta(hours=1)  # the role's ttl
    with caplog.at_level(logging.WARNING, logger="certd.issuers.vault"):
        capped = issuer.issue(request("a.example.test", lifetime=timedelta(hours=48))).leaf
    assert timedelta(hours=23) < lifetime_of(capped) <= timedelta(hours=24)
    assert any("is longer than permitted maxTTL" in r.getMessage() and "role backend" in r.getMessage()
               for r in caplog.records)


def test_ip_literals_become_ip_sans(vault: VaultStandin, tmp_path: Path) -> None:
    leaf = make_issuer(vault, tmp_path).issue(request("svc.example.test", "10.1.2.3", "fd00::7")).leaf
    assert sans(leaf) == ["svc.example.test", "10.1.2.3", "fd00::7"]
    issued = make_issuer(vault, tmp_path, role="keys", vault_generates_key=True).issue(
        request("gen.example.test", "10.9.9.9"))
    ext = issued.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ext.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.9.9.9")]


def test_namespace_is_sent_on_every_request(vault_standin_factory: Callable[..., VaultStandin],
                                            tmp_path: Path) -> None:
    vault = vault_standin_factory(namespace="team-a/certs")
    vault.add_role("backend", allowed_domains="example.test", allow_subdomains=True, key_type="any")
    vault.add_approle(ROLE_ID, SECRET_ID)
    issued = make_issuer(vault, tmp_path, namespace="team-a/certs").issue(request("ns.example.test"))
    assert_chains_to_root(vault, issued.leaf, issued.chain)
    assert {r.namespace for r in vault.requests} == {"team-a/certs"}
    with pytest.raises(IssuerError) as err:
        make_issuer(vault, tmp_path).issue(request("ns.example.test"))
    assert err.value.reason == "NotFound" and "no handler for route" in err.value.message


def test_expired_token_is_replaced_by_a_new_login(vault: VaultStandin, tmp_path: Path) -> None:
    vault.add_approle(ROLE_ID, SECRET_ID, token_ttl=2)
    issuer = make_issuer(vault, tmp_path)
    issuer.issue(request("a.example.test"))
    time.sleep(2.3)
    issuer.issue(request("a.example.test"))
    assert vault.count("POST", "/v1/auth/approle/login") == 2
    assert vault.count("POST", "/v1/pki/sign/backend") == 2


def test_token_revoked_mid_run_gets_one_relogin_and_retry(vault: VaultStandin, tmp_path: Path) -> None:
    issuer = make_issuer(vault, tmp_path)
    issuer.issue(request("a.example.test"))
    vault.expire_token(vault.requests[-1].token or "")  # Vault-side: the issuer still believes in it
    issuer.issue(request("a.example.test"))
    assert vault.count("POST", "/v1/auth/approle/login") == 2
    assert vault.count("POST", "/v1/pki/sign/backend") == 3  # ok, 403, retried ok


def test_token_file_is_reread_after_403(vault: VaultStandin, tmp_path: Path) -> None:
    old = vault.create_token()
    write(tmp_path / "token", old)
    issuer = make_issuer(vault, tmp_path, auth="token")
    issuer.issue(request("a.example.test"))
    vault.revoke_token(old)
    write(tmp_path / "token", vault.create_token())  # the operator rotated the file
    issuer.issue(request("a.example.test"))
    assert vault.count("GET", "/v1/auth/token/lookup-self") == 2


def test_renewable_token_is_renewed_after_two_thirds_of_its_ttl(vault: VaultStandin, tmp_path: Path) -> None:
    token = vault.create_token(ttl=600)
    write(tmp_path / "token", token)
    clock = FakeClock()
    issuer = make_issuer(vault, tmp_path, auth="token", clock=clock)
    issuer.issue(request("a.example.test"))
    clock.offset = timedelta(seconds=401)
    issuer.issue(request("a.example.test"))
    assert vault.count("POST", "/v1/auth/token/renew-self") == 1
    assert vault.count("GET", "/v1/auth/token/lookup-self") == 1


def test_sealed_vault_is_unavailable_then_recovers(vault: VaultStandin, tmp_path: Path) -> None:
    sleeps: list[float] = []
    issuer = make_issuer(vault, tmp_path, sleeps=sleeps)
    vault.seal()
    with pytest.raises(IssuerUnavailable) as err:
        issuer.issue(request("a.example.test"))
    assert err.value.reason == "VaultSealed" and err.value.retryable
    assert "Vault is sealed" in err.value.message and "issuer internal" in err.value.message
    assert sleeps == [0.01, 0.02]  # three tries, bounded exponential backoff
    vault.unseal()
    assert issuer.issue(request("a.example.test")).leaf


def test_transient_errors_are_retried(vault: VaultStandin, tmp_path: Path) -> None:
    sleeps: list[float] = []
    issuer = make_issuer(vault, tmp_path, sleeps=sleeps)
    issuer.issue(request("a.example.test"))
    vault.fail_next(429, 'request path "pki/sign/backend": rate limit quota exceeded')
    vault.fail_next(500, "internal error")
    assert issuer.issue(request("a.example.test")).leaf
    assert len(sleeps) == 2


def test_disallowed_name_names_the_rule_and_is_not_retried(vault: VaultStandin, tmp_path: Path) -> None:
    sleeps: list[float] = []
    issuer = make_issuer(vault, tmp_path, sleeps=sleeps)
    with pytest.raises(IssuerError) as err:
        issuer.issue(request("ok.example.test", "evil.other.test"))
    assert err.value.reason == "InvalidRequest" and not err.value.retryable
    assert "subject alternate name evil.other.test not allowed by this role" in err.value.message
    assert "issuer internal" in err.value.message and "mount pki, role backend" in err.value.message
    assert sleeps == [] and vault.count("POST", "/v1/pki/sign/backend") == 1


def test_wrong_secret_id_is_permission_denied(vault: VaultStandin, tmp_path: Path) -> None:
    issuer = make_issuer(vault, tmp_path, secret_id_file=write(tmp_path / "bad", "not-the-secret"))
    with pytest.raises(IssuerError) as err:
        issuer.issue(request("a.example.test"))
    assert err.value.reason == "PermissionDenied"
    assert "invalid role or secret ID" in err.value.message and "auth/approle" in err.value.message


def test_policy_denial_is_permission_denied_after_one_relogin(vault: VaultStandin, tmp_path: Path) -> None:
    vault.add_approle(ROLE_ID, SECRET_ID, policies=("default",))
    with pytest.raises(IssuerError) as err:
        make_issuer(vault, tmp_path).issue(request("a.example.test"))
    assert err.value.reason == "PermissionDenied" and "pki/sign/backend" in err.value.message
    assert vault.count("POST", "/v1/auth/approle/login") == 2


def test_kubernetes_wrong_jwt_is_permission_denied(vault: VaultStandin, tmp_path: Path) -> None:
    issuer = make_issuer(vault, tmp_path, auth="kubernetes", jwt_file=write(tmp_path / "other-jwt", "x.y.z"))
    with pytest.raises(IssuerError) as err:
        issuer.issue(request("a.example.test"))
    assert err.value.reason == "PermissionDenied"


def test_tls_not_verifying_against_ca_bundle(vault: VaultStandin, tmp_path: Path) -> None:
    wrong = write(tmp_path / "wrong-ca.pem", vault.root_pem())
    with pytest.raises(IssuerError) as err:
        make_issuer(vault, tmp_path, ca_bundle=wrong).issue(request("a.example.test"))
    assert err.value.reason == "TLSVerifyFailed" and not err.value.retryable
    assert f"did not verify against ca_bundle {wrong}" in err.value.message
    assert "certificate verify failed" in err.value.message


def test_unreachable_and_slow_vault_are_unavailable(vault: VaultStandin, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(IssuerUnavailable) as err:
        make_issuer(vault, tmp_path, url=f"https://127.0.0.1:{closed_port}").issue(request("a.example.test"))
    assert err.value.reason == "VaultUnreachable"
    vault.delay = 0.5
    with pytest.raises(IssuerUnavailable) as err:
        make_issuer(vault, tmp_path, timeout="200ms", attempts=1).issue(request("a.example.test"))
    assert err.value.reason == "VaultUnreachable" and "timed out" in err.value.message


def test_revoke_marks_the_serial_revoked(vault: VaultStandin, tmp_path: Path) -> None:
    issuer = make_issuer(vault, tmp_path)
    leaf = issuer.issue(request("a.example.test")).leaf
    issuer.revoke(leaf, RevocationReason.KEY_COMPROMISE)
    serial = ":".join(f"{b:02x}" for b in leaf.serial_number.to_bytes((leaf.serial_number.bit_length() + 7) // 8,
                                                                         "big"))
    assert vault.revoked_serials == {serial}


def test_ca_chain_and_issuer_ref(vault: VaultStandin, tmp_path: Path) -> None:
    root = x509.load_pem_x509_certificate(vault.root_pem().encode())
    inter = x509.load_pem_x509_certificate(vault.intermediate_pem().encode())
    assert make_issuer(vault, tmp_path).ca_chain() == [inter, root]
    pinned = make_issuer(vault, tmp_path, issuer_ref="root")
    issued = pinned.issue(request("r.example.test"))
    issued.leaf.verify_directly_issued_by(root)
    assert issued.chain == ()  # the self-signed root is never part of the chain
    assert vault.count("POST", "/v1/pki/issuer/root/sign/backend") == 1
    assert pinned.ca_chain() == [root]
    assert make_issuer(vault, tmp_path, roots=None).roots() is None


def test_concurrent_issue_logs_in_once(vault: VaultStandin, tmp_path: Path) -> None:
    issuer = make_issuer(vault, tmp_path)
    results: list[x509.Certificate] = []
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results.append(issuer.issue(request(f"w{i}.example.test")).leaf)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and len({c.serial_number for c in results}) == 8
    assert vault.count("POST", "/v1/auth/approle/login") == 1
    issuer.close()
    assert issuer.issue(request("after-close.example.test")).leaf


def test_no_secret_appears_in_errors_or_logs(vault: VaultStandin, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    token = vault.create_token(policies=("default",))
    write(tmp_path / "token", token)
    scenarios: list[Callable[[], object]] = [
        lambda: make_issuer(vault, tmp_path, secret_id_file=write(tmp_path / "bad", SECRET_ID + "x")).issue(
            request("a.example.test")),
        lambda: make_issuer(vault, tmp_path, auth="token").issue(request("a.example.test")),
        lambda: make_issuer(vault, tmp_path).issue(request("evil.other.test")),
        lambda: make_issuer(vault, tmp_path, auth="kubernetes", kubernetes_role="nope").issue(
            request("a.example.test")),
        lambda: make_issuer(vault, tmp_path, ca_bundle=tmp_path / "roots.pem").issue(request("a.example.test")),
    ]
    messages: list[str] = []
    with caplog.at_level(logging.DEBUG):
        for scenario in scenarios:
            with pytest.raises(CertdError) as err:
                scenario()
            exc: BaseException | None = err.value
            while exc is not None:
                messages.append(str(exc))
                exc = exc.__cause__ or exc.__context__
    messages += [r.getMessage() for r in caplog.records]
    assert len(messages) >= len(scenarios)
    for secret in (ROLE_ID, SECRET_ID, SECRET_ID + "x", JWT, token):
        assert not [m for m in messages if secret in m], secret
