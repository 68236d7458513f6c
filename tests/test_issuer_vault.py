"""certd's Vault issuer against a real OpenBao server (same HTTP API as Vault) over verified HTTPS.

Counts of what the server was asked come from OpenBao's own audit log, not from certd. What a real server cannot
be made to do (injected 429/5xx, slow answers) is in ``test_issuer_vault_faults.py`` against the stand-in.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from certd.config.model import VaultIssuerConfig
from certd.errors import CertdError, IssuerError, IssuerUnavailable
from certd.issuers.base import Issuer, IssueRequest
from certd.issuers.vault import VaultIssuer
from certd.pki.keys import KeyType, build_csr, generate_key
from certd.pki.revocation import RevocationReason
from tests.servers.openbao import OpenBaoServer

LOGIN_PATHS = ("auth/approle/login", "auth/kubernetes/login", "auth/token/lookup-self")


class FakeClock:
    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class Bao:
    """The shared server plus this test's own AppRole role, JWT and audit-log starting point."""

    server: OpenBaoServer
    role: str
    role_id: str
    secret_id: str
    jwt: str
    mark: int

    def count(self, path: str) -> int:
        return self.server.count(path, since=self.mark)

    def logins(self) -> int:
        return sum(self.count(p) for p in LOGIN_PATHS)


@pytest.fixture
def vault(openbao: OpenBaoServer) -> Bao:
    role, role_id, secret_id = openbao.approle()
    return Bao(openbao, role, role_id, secret_id, openbao.kubernetes_jwt(), openbao.audit_mark())


def write(path: Path, text: str) -> Path:
    path.write_text(text + "\n")  # trailing whitespace must be stripped
    return path


def make_issuer(vault: Bao | OpenBaoServer, tmp_path: Path, *, auth: str = "approle",
                sleeps: list[float] | None = None, clock: Any = None, attempts: int = 3,
                **overrides: Any) -> VaultIssuer:
    server = vault.server if isinstance(vault, Bao) else vault
    settings: dict[str, Any] = {
        "type": "vault", "url": server.url, "ca_bundle": server.ca_bundle_path, "role": "backend", "auth": auth,
        "roots": write(tmp_path / "roots.pem", server.root_pem()), "timeout": "5s",
    }
    if auth == "approle" and isinstance(vault, Bao):
        settings["role_id_file"] = write(tmp_path / "role_id", vault.role_id)
        settings["secret_id_file"] = write(tmp_path / "secret_id", vault.secret_id)
    elif auth == "token":
        settings["token_file"] = tmp_path / "token"
    elif auth == "kubernetes" and isinstance(vault, Bao):
        settings["kubernetes_role"] = server.kubernetes_role
        settings["jwt_file"] = write(tmp_path / "jwt", vault.jwt)
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


def pem(text: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(text.encode())


def assert_chains_to_root(server: OpenBaoServer, leaf: x509.Certificate, chain: tuple[x509.Certificate, ...],
                          issuer: str = "intermediate") -> None:
    assert list(chain) == [pem(server.intermediate_pem(issuer))]
    leaf.verify_directly_issued_by(chain[0])
    chain[0].verify_directly_issued_by(pem(server.root_pem()))


def lifetime_of(cert: x509.Certificate) -> timedelta:
    return cert.not_valid_after_utc - datetime.now(UTC)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("auth", ["approle", "token", "kubernetes"])
def test_sign_with_each_auth_method(vault: Bao, tmp_path: Path, auth: str) -> None:
    if auth == "token":
        write(tmp_path / "token", vault.server.create_token(ttl=3600))
    issuer = make_issuer(vault, tmp_path, auth=auth)
    assert isinstance(issuer, Issuer)
    req = request("web.example.test", "api.example.test")
    issued = issuer.issue(req)
    assert sans(issued.leaf) == ["api.example.test", "web.example.test"]
    assert issued.leaf.public_key() == req.csr.public_key() and issued.private_key is None
    assert_chains_to_root(vault.server, issued.leaf, issued.chain)
    assert issuer.roots() == [pem(vault.server.root_pem())]
    assert vault.count("pki/sign/backend") == 1 and vault.count("pki/issue/backend") == 0
    issuer.issue(request("web.example.test"))
    assert vault.logins() == 1  # the token is reused
    assert vault.count("pki/roles/backend") == 1  # and so is what the role said


def test_healthy_sign_logs_no_warning(vault: Bao, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    issuer = make_issuer(vault, tmp_path)
    with caplog.at_level(logging.DEBUG, logger="certd.issuers.vault"):
        for _ in range(2):  # first renewal reads the role, the second uses what it said
            issued = issuer.issue(request("quiet.example.test", "10.7.7.7", lifetime=timedelta(hours=2)))
            assert sans(issued.leaf) == ["quiet.example.test", "10.7.7.7"]
    assert warnings_of(caplog) == []
    assert not [r for r in caplog.records if "Vault warned" in r.getMessage()]
    signs = vault.server.responses("pki/sign/backend", since=vault.mark)
    assert len(signs) == 2 and all(not e["response"].get("warnings") for e in signs)
    assert all(set(e["request"]["data"]) == {"csr", "format", "ttl"} for e in signs)  # the CSR carries the names


def test_role_that_ignores_csr_names_still_gets_every_name(vault: Bao, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    vault.server.add_role("no-csr-names", allowed_domains="example.test", allow_subdomains=True, key_type="any",
                          use_csr_common_name=False, use_csr_sans=False)
    with caplog.at_level(logging.DEBUG, logger="certd.issuers.vault"):
        leaf = make_issuer(vault, tmp_path, role="no-csr-names").issue(
            request("a.example.test", "b.example.test", "10.1.1.1")).leaf
    assert sans(leaf) == ["a.example.test", "b.example.test", "10.1.1.1"]
    assert leaf.subject.rfc4514_string() == "CN=a.example.test"
    assert warnings_of(caplog) == []


def test_role_unreadable_names_are_sent_and_vault_warnings_stay_debug(vault: Bao, tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A least-privilege token (sign only) cannot read the role: certd sends the names, which is right for any
    role; OpenBao then warns about them on every sign, and those warnings are debug lines, not warnings."""
    policy = vault.server.add_policy(f"sign-only-{uuid.uuid4().hex[:6]}",
                                     'path "pki/sign/backend" { capabilities = ["update"] }')
    _, role_id, secret_id = vault.server.approle(policies=(policy,))
    issuer = make_issuer(vault, tmp_path, role_id_file=write(tmp_path / "rid", role_id),
                         secret_id_file=write(tmp_path / "sid", secret_id))
    with caplog.at_level(logging.DEBUG, logger="certd.issuers.vault"):
        for _ in range(2):
            assert sans(issuer.issue(request("least.example.test")).leaf) == ["least.example.test"]
    assert warnings_of(caplog) == []
    vault_warned = [r for r in caplog.records if "Vault warned" in r.getMessage()]
    assert len(vault_warned) == 4 and {r.levelno for r in vault_warned} == {logging.DEBUG}
    assert any("use_csr_sans" in r.getMessage() for r in vault_warned)
    assert vault.count("pki/roles/backend") == 1  # refused once, not asked again, no re-login for it
    assert vault.count("auth/approle/login") == 1
    assert any("cannot read role backend" in r.getMessage() and "permission denied" in r.getMessage()
               for r in caplog.records if r.levelno == logging.INFO)


def test_vault_generates_key(vault: Bao, tmp_path: Path) -> None:
    issuer = make_issuer(vault, tmp_path, role="keys", vault_generates_key=True)
    issued = issuer.issue(request("gen.example.test"))
    assert issued.private_key is not None
    assert issued.private_key.public_key() == issued.leaf.public_key()
    assert vault.count("pki/issue/keys") == 1 and vault.count("pki/sign/keys") == 0
    assert_chains_to_root(vault.server, issued.leaf, issued.chain)


def test_lifetime_is_sent_as_ttl_and_capped_by_max_ttl(vault: Bao, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    issuer = make_issuer(vault, tmp_path)
    with caplog.at_level(logging.DEBUG, logger="certd.issuers.vault"):
        two_hours = issuer.issue(request("a.example.test", lifetime=timedelta(hours=2))).leaf
        default = issuer.issue(request("a.example.test")).leaf
    assert timedelta(hours=2) - timedelta(minutes=1) < lifetime_of(two_hours) <= timedelta(hours=2)
    assert timedelta(minutes=59) < lifetime_of(default) <= timedelta(hours=1)  # the role's ttl
    assert warnings_of(caplog) == []
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="certd.issuers.vault"):
        capped = issuer.issue(request("a.example.test", lifetime=timedelta(hours=48))).leaf
    assert timedelta(hours=23) < lifetime_of(capped) <= timedelta(hours=24)
    assert warnings_of(caplog) == []  # the pipeline's check warns, once (tests/test_issued_vs_requested.py)
    [info] = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "asked for" in r.getMessage()]
    assert "of the 2d asked for" in info and "role backend" in info and "max_ttl" in info
    assert any(r.levelno == logging.DEBUG and "is longer than permitted maxTTL" in r.getMessage()
               for r in caplog.records)  # OpenBao's own words, kept for debugging


def test_ip_literals_become_ip_sans(vault: Bao, tmp_path: Path) -> None:
    leaf = make_issuer(vault, tmp_path).issue(request("svc.example.test", "10.1.2.3", "fd00::7")).leaf
    assert sans(leaf) == ["svc.example.test", "10.1.2.3", "fd00::7"]
    issued = make_issuer(vault, tmp_path, role="keys", vault_generates_key=True).issue(
        request("gen.example.test", "10.9.9.9"))
    ext = issued.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ext.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.9.9.9")]


def test_namespace_is_sent_on_every_request(vault: Bao, tmp_path: Path) -> None:
    """OpenBao (2.3+) has namespaces: a tenant's AppRole and PKI exist only inside its namespace."""
    namespace = f"team-{uuid.uuid4().hex[:6]}/certs"
    role_id, secret_id, root = vault.server.add_namespace(namespace)
    creds: dict[str, Any] = {"role_id_file": write(tmp_path / "ns-rid", role_id),
                             "roots": write(tmp_path / "ns-root.pem", root),
                             "secret_id_file": write(tmp_path / "ns-sid", secret_id)}
    mark = vault.server.audit_mark()
    issued = make_issuer(vault, tmp_path, namespace=namespace, **creds).issue(request("ns.example.test"))
    issued.leaf.verify_directly_issued_by(pem(root))
    assert issued.chain == ()  # a one-tier namespace PKI: the root is never part of the chain
    seen = [e["request"] for e in vault.server.audited(mark)
            if e["request"]["path"] in ("auth/approle/login", "pki/roles/backend", "pki/sign/backend")]
    assert len(seen) == 3 and {r["namespace"].get("path") for r in seen} == {f"{namespace}/"}
    with pytest.raises(IssuerError) as err:
        make_issuer(vault, tmp_path, **creds).issue(request("ns.example.test"))
    assert err.value.reason == "PermissionDenied" and "invalid role or secret ID" in err.value.message


def test_expired_token_is_replaced_by_a_new_login(vault: Bao, tmp_path: Path) -> None:
    # OpenBao's shortest TTL; the login's lease_duration says 1 s, and the token really lapses on the server.
    _, role_id, secret_id = vault.server.approle(token_ttl="1s")
    issuer = make_issuer(vault, tmp_path, role_id_file=write(tmp_path / "rid", role_id),
                         secret_id_file=write(tmp_path / "sid", secret_id))
    issuer.issue(request("a.example.test"))
    time.sleep(1.3)
    issuer.issue(request("a.example.test"))
    assert vault.count("auth/approle/login") == 2
    assert vault.count("pki/sign/backend") == 2  # the expiry was known: no 403 first


@pytest.mark.parametrize("limit", [{"secret_id_num_uses": 1}, {"secret_id_ttl": "2s"}], ids=["num_uses", "ttl"])
def test_secret_id_expiring_mid_run_needs_the_rotated_file(vault: Bao, tmp_path: Path, limit: dict[str, Any]) -> None:
    """The token lapses, the re-login finds its secret_id used up or expired: a credential rejection until the
    operator (or an agent) writes a fresh secret_id to the file, which the next login reads."""
    # The secret_id's own 2 s must leave time for the first login on a busy machine; a used-up one needs no wait.
    ttl = 2 if "secret_id_ttl" in limit else 1
    role, role_id, secret_id = vault.server.approle(token_ttl=f"{ttl}s", **limit)
    issuer = make_issuer(vault, tmp_path, role_id_file=write(tmp_path / "rid", role_id),
                         secret_id_file=write(tmp_path / "sid", secret_id))
    issuer.issue(request("a.example.test"))
    time.sleep(ttl + 0.3)
    with pytest.raises(IssuerError) as err:
        issuer.issue(request("a.example.test"))
    assert err.value.reason == "PermissionDenied" and not err.value.retryable
    assert "auth/approle" in err.value.message and secret_id not in err.value.message
    write(tmp_path / "sid", vault.server.secret_id(role))
    assert issuer.issue(request("a.example.test")).leaf
    assert vault.count("auth/approle/login") == 3


def test_token_revoked_mid_run_gets_one_relogin_and_retry(vault: Bao, tmp_path: Path) -> None:
    issuer = make_issuer(vault, tmp_path)
    issuer.issue(request("a.example.test"))
    assert vault.server.revoke_approle_tokens(vault.role) == 1  # server-side: the issuer still believes in it
    issuer.issue(request("a.example.test"))
    assert vault.count("auth/approle/login") == 2
    assert vault.count("pki/sign/backend") == 3  # ok, 403, retried ok


def test_token_file_is_reread_after_403(vault: Bao, tmp_path: Path) -> None:
    old = vault.server.create_token()
    write(tmp_path / "token", old)
    issuer = make_issuer(vault, tmp_path, auth="token")
    issuer.issue(request("a.example.test"))
    vault.server.revoke_token(old)
    write(tmp_path / "token", vault.server.create_token())  # the operator rotated the file
    issuer.issue(request("a.example.test"))
    assert vault.count("auth/token/lookup-self") == 2


def test_token_expiring_mid_run_rereads_the_token_file(vault: Bao, tmp_path: Path) -> None:
    write(tmp_path / "token", vault.server.create_token(ttl="2s", renewable=False))
    issuer = make_issuer(vault, tmp_path, auth="token")
    issuer.issue(request("a.example.test"))
    write(tmp_path / "token", vault.server.create_token())  # e.g. Vault Agent's sink, refreshed
    time.sleep(2.3)
    issuer.issue(request("a.example.test"))
    assert vault.count("auth/token/lookup-self") == 2 and vault.count("pki/sign/backend") == 2


def test_renewable_token_is_renewed_after_two_thirds_of_its_ttl(vault: Bao, tmp_path: Path) -> None:
    write(tmp_path / "token", vault.server.create_token(ttl=600))
    clock = FakeClock()
    issuer = make_issuer(vault, tmp_path, auth="token", clock=clock)
    issuer.issue(request("a.example.test"))
    clock.offset = timedelta(seconds=401)
    issuer.issue(request("a.example.test"))
    assert vault.count("auth/token/renew-self") == 1
    assert vault.count("auth/token/lookup-self") == 1


def test_sealed_vault_is_unavailable_then_recovers(openbao_factory: Callable[..., OpenBaoServer],
                                                   tmp_path: Path) -> None:
    server = openbao_factory()  # its own: sealing the shared one would fail every other test
    _, role_id, secret_id = server.approle()
    sleeps: list[float] = []
    issuer = make_issuer(server, tmp_path, sleeps=sleeps, role_id_file=write(tmp_path / "rid", role_id),
                         secret_id_file=write(tmp_path / "sid", secret_id))
    assert issuer.issue(request("a.example.test")).leaf
    server.seal()
    with pytest.raises(IssuerUnavailable) as err:
        issuer.issue(request("a.example.test"))
    assert err.value.reason == "VaultSealed" and err.value.retryable
    assert "Vault is sealed" in err.value.message and "issuer internal" in err.value.message
    assert sleeps == [0.01, 0.02]  # three tries, bounded exponential backoff
    server.unseal()
    assert issuer.issue(request("a.example.test")).leaf  # the token survived the seal: no new login needed
    assert server.count("auth/approle/login") == 1


def test_disallowed_name_names_the_rule_and_is_not_retried(vault: Bao, tmp_path: Path) -> None:
    sleeps: list[float] = []
    issuer = make_issuer(vault, tmp_path, sleeps=sleeps)
    with pytest.raises(IssuerError) as err:
        issuer.issue(request("ok.example.test", "evil.other.test"))
    assert err.value.reason == "InvalidRequest" and not err.value.retryable
    assert "subject alternate name evil.other.test not allowed by this role" in err.value.message
    assert "issuer internal" in err.value.message and "mount pki, role backend" in err.value.message
    assert sleeps == [] and vault.count("pki/sign/backend") == 1


def test_wrong_secret_id_is_permission_denied(vault: Bao, tmp_path: Path) -> None:
    issuer = make_issuer(vault, tmp_path, secret_id_file=write(tmp_path / "bad", "not-the-secret"))
    with pytest.raises(IssuerError) as err:
        issuer.issue(request("a.example.test"))
    assert err.value.reason == "PermissionDenied"
    assert "invalid role or secret ID" in err.value.message and "auth/approle" in err.value.message
    assert vault.count("auth/approle/login") == 1 and vault.count("pki/roles/backend") == 0  # one refusal, no more


def test_policy_denial_is_permission_denied_after_one_relogin(vault: Bao, tmp_path: Path) -> None:
    _, role_id, secret_id = vault.server.approle(policies=("default",))
    issuer = make_issuer(vault, tmp_path, role_id_file=write(tmp_path / "rid", role_id),
                         secret_id_file=write(tmp_path / "sid", secret_id))
    with pytest.raises(IssuerError) as err:
        issuer.issue(request("a.example.test"))
    assert err.value.reason == "PermissionDenied" and "pki/sign/backend" in err.value.message
    assert vault.count("auth/approle/login") == 2


@pytest.mark.parametrize("jwt", ["forged", "revoked", "other-account"])
def test_kubernetes_wrong_jwt_is_permission_denied(vault: Bao, tmp_path: Path, jwt: str) -> None:
    """OpenBao asks the (stand-in) Kubernetes API with a TokenReview; only a live token of a bound account passes."""
    assert vault.server.kubernetes is not None
    if jwt == "forged":  # the right claims, but not a token Kubernetes issued
        token = vault.jwt.rsplit(".", 1)[0] + ".Zm9yZ2Vk"
    elif jwt == "revoked":
        token = vault.jwt
        vault.server.kubernetes.revoke_service_account_token(token)
    else:
        token = vault.server.kubernetes_jwt(name="someone-else")
    issuer = make_issuer(vault, tmp_path, auth="kubernetes", jwt_file=write(tmp_path / "other-jwt", token))
    with pytest.raises(IssuerError) as err:
        issuer.issue(request("a.example.test"))
    assert err.value.reason == "PermissionDenied" and "auth/kubernetes" in err.value.message
    assert token not in err.value.message


def test_tls_not_verifying_against_ca_bundle(vault: Bao, tmp_path: Path) -> None:
    wrong = write(tmp_path / "wrong-ca.pem", vault.server.root_pem())
    with pytest.raises(IssuerError) as err:
        make_issuer(vault, tmp_path, ca_bundle=wrong).issue(request("a.example.test"))
    assert err.value.reason == "TLSVerifyFailed" and not err.value.retryable
    assert f"did not verify against ca_bundle {wrong}" in err.value.message
    assert "certificate verify failed" in err.value.message


def test_revoke_marks_the_serial_revoked(vault: Bao, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    issuer = make_issuer(vault, tmp_path)
    leaf = issuer.issue(request("a.example.test")).leaf
    kept = issuer.issue(request("a.example.test")).leaf
    with caplog.at_level(logging.INFO, logger="certd.issuers.vault"):
        issuer.revoke(leaf, RevocationReason.KEY_COMPROMISE)
    crl = vault.server.crl()
    entry = crl.get_revoked_certificate_by_serial_number(leaf.serial_number)
    assert entry is not None and crl.get_revoked_certificate_by_serial_number(kept.serial_number) is None
    with pytest.raises(x509.ExtensionNotFound):  # Vault's revoke API has no reason field...
        entry.extensions.get_extension_for_class(x509.CRLReason)
    assert any("reason keyCompromise is not sent" in r.getMessage() for r in caplog.records)  # ...and certd says so
    crl.is_signature_valid(pem(vault.server.intermediate_pem()).public_key())  # type: ignore[arg-type]
    issuer.revoke(leaf, RevocationReason.KEY_COMPROMISE)  # revoking twice is not an error


def test_ca_chain_and_issuer_ref(vault: Bao, tmp_path: Path) -> None:
    """A mount with two issuers (as during a CA rotation): issuer_ref picks the one that signs."""
    root, inter = pem(vault.server.root_pem()), pem(vault.server.intermediate_pem())
    assert make_issuer(vault, tmp_path).ca_chain() == [inter, root]
    vault.server.add_issuer("intermediate-b")
    other = pem(vault.server.intermediate_pem("intermediate-b"))
    pinned = make_issuer(vault, tmp_path, issuer_ref="intermediate-b")
    issued = pinned.issue(request("r.example.test"))
    assert_chains_to_root(vault.server, issued.leaf, issued.chain, issuer="intermediate-b")
    assert vault.count("pki/issuer/intermediate-b/sign/backend") == 1 and vault.count("pki/sign/backend") == 0
    assert pinned.ca_chain() == [other, root]
    assert make_issuer(vault, tmp_path).issue(request("d.example.test")).chain == (inter,)  # default unchanged
    assert make_issuer(vault, tmp_path, roots=None).roots() is None


def test_concurrent_issue_logs_in_once(vault: Bao, tmp_path: Path) -> None:
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
    assert vault.count("auth/approle/login") == 1 and vault.count("pki/roles/backend") == 1
    issuer.close()
    assert issuer.issue(request("after-close.example.test")).leaf


def test_no_secret_appears_in_errors_or_logs(vault: Bao, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    token = vault.server.create_token(policies=("default",))
    write(tmp_path / "token", token)
    scenarios: list[Callable[[], object]] = [
        lambda: make_issuer(vault, tmp_path, secret_id_file=write(tmp_path / "bad", vault.secret_id + "x")).issue(
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
    for secret in (vault.role_id, vault.secret_id, vault.secret_id + "x", vault.jwt, token):
        assert not [m for m in messages if secret in m], secret
