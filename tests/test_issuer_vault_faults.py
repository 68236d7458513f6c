"""certd's Vault issuer against the Vault stand-in, for the faults a real OpenBao cannot be made to produce.

Everything else about the Vault issuer is tested against a real OpenBao in ``test_issuer_vault.py``. What stays
here, and why OpenBao cannot do it on demand:

* 429 answers (rate-limit quotas or a standby node) and 500s, injected for exactly the next N calls: OpenBao has
  rate-limit quotas, but they cannot be aimed at one request, and it has no switch for an internal error.
* Five server errors in a row: the retry budget runs out and the error stays retryable.
* A Vault slower than the client's ``timeout``: OpenBao answers in milliseconds and has no delay knob.
* An unreachable Vault (a closed port) is here too because it needs no server at all, next to its slow twin.

The stand-in has no role read (it answers 404), so certd sends the names with every sign here, as it does for
a token that may not read its role.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from certd.config.model import VaultIssuerConfig
from certd.errors import IssuerUnavailable
from certd.issuers.base import IssueRequest
from certd.issuers.vault import VaultIssuer
from certd.pki.keys import KeyType, build_csr, generate_key
from tests.standins.vault import VaultStandin

ROLE_ID, SECRET_ID = "role-id-5d1f", "secret-id-9c2e7a41"


@pytest.fixture
def vault(vault_standin: VaultStandin) -> VaultStandin:
    vault_standin.add_role("backend", allowed_domains="example.test", allow_subdomains=True, key_type="any",
                           max_ttl="24h", ttl="1h")
    vault_standin.add_approle(ROLE_ID, SECRET_ID, token_ttl=3600)
    return vault_standin


def make_issuer(vault: VaultStandin, tmp_path: Path, *, sleeps: list[float] | None = None, attempts: int = 3,
                **overrides: Any) -> VaultIssuer:
    (tmp_path / "role_id").write_text(ROLE_ID)
    (tmp_path / "secret_id").write_text(SECRET_ID)
    settings: dict[str, Any] = {
        "type": "vault", "url": vault.url, "ca_bundle": vault.ca_bundle_path, "role": "backend", "auth": "approle",
        "role_id_file": tmp_path / "role_id", "secret_id_file": tmp_path / "secret_id", "timeout": "5s",
    }
    settings.update(overrides)
    record = sleeps if sleeps is not None else []
    return VaultIssuer("internal", VaultIssuerConfig(**settings), attempts=attempts, backoff=0.01,
                       sleep=record.append)


def request(*names: str) -> IssueRequest:
    key = generate_key(KeyType.ECDSA_P256)
    return IssueRequest(certificate="web", names=names, key_type=KeyType.ECDSA_P256, csr=build_csr(key, names))


def test_transient_errors_are_retried(vault: VaultStandin, tmp_path: Path) -> None:
    sleeps: list[float] = []
    issuer = make_issuer(vault, tmp_path, sleeps=sleeps)
    issuer.issue(request("a.example.test"))
    vault.fail_next(429, 'request path "pki/sign/backend": rate limit quota exceeded')
    vault.fail_next(500, "internal error")
    assert issuer.issue(request("a.example.test")).leaf
    assert len(sleeps) == 2
    assert vault.count("POST", "/v1/pki/sign/backend") == 4  # ok; 429, 500, ok


def test_persistent_server_errors_exhaust_the_retries_and_stay_retryable(vault: VaultStandin,
                                                                        tmp_path: Path) -> None:
    sleeps: list[float] = []
    issuer = make_issuer(vault, tmp_path, sleeps=sleeps)
    issuer.issue(request("a.example.test"))
    vault.fail_next(500, "internal error", count=3)
    with pytest.raises(IssuerUnavailable) as err:
        issuer.issue(request("a.example.test"))
    assert err.value.reason == "VaultServerError" and err.value.retryable
    assert "internal error" in err.value.message and "role backend" in err.value.message
    assert sleeps == [0.01, 0.02] and vault.count("POST", "/v1/pki/sign/backend") == 4


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
