"""certd's Vault issuer against a real OpenBao behind the HTTP fault proxy (issue 18): the faults OpenBao cannot
be made to produce on its own, aimed at one request — a 429 or 500 for exactly the next N signs, server errors
until the retries run out, a Vault slower than ``timeout``, one that resets the connection, and one that
accepts and never answers (bounded by ``attempt_timeout``, however many requests and retries are left).

OpenBao itself still answers everything the proxy lets through: the login, the role read, the sign.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from certd.errors import IssuerUnavailable
from tests.servers.http_fault_proxy import HttpFaultProxy
from tests.servers.openbao import OpenBaoServer
from tests.test_issuer_vault import Bao, make_issuer, request

SIGN = "/v1/pki/sign/backend"


@pytest.fixture
def bao(openbao: OpenBaoServer) -> Bao:
    role, role_id, secret_id = openbao.approle()
    return Bao(openbao, role, role_id, secret_id, openbao.kubernetes_jwt(), openbao.audit_mark())


@pytest.fixture
def proxy(openbao: OpenBaoServer) -> Iterator[HttpFaultProxy]:
    front = HttpFaultProxy(openbao.url, Path(openbao.workdir))
    yield front
    front.close()


def vault_error(status: int, message: str, **rule: object) -> dict[str, object]:
    return {"kind": "answer", "path": SIGN, "method": "POST", "status": status, "body": {"errors": [message]},
            **rule}


def test_transient_errors_are_retried(bao: Bao, proxy: HttpFaultProxy, tmp_path: Path) -> None:
    sleeps: list[float] = []
    issuer = make_issuer(bao, tmp_path, sleeps=sleeps, url=proxy.url)
    issuer.issue(request("a.example.test"))
    proxy.inject(**vault_error(429, 'request path "pki/sign/backend": rate limit quota exceeded', times=1))
    proxy.inject(**vault_error(500, "internal error", times=1))
    assert issuer.issue(request("a.example.test")).leaf
    assert len(sleeps) == 2
    assert proxy.count(SIGN, method="POST") == 4  # ok; 429, 500, ok (OpenBao signed twice)
    assert proxy.count(SIGN, method="POST", status=200) == 2


def test_persistent_server_errors_exhaust_the_retries_and_stay_retryable(bao: Bao, proxy: HttpFaultProxy,
                                                                        tmp_path: Path) -> None:
    sleeps: list[float] = []
    issuer = make_issuer(bao, tmp_path, sleeps=sleeps, url=proxy.url)
    issuer.issue(request("a.example.test"))
    proxy.inject(**vault_error(500, "internal error", times=3))
    with pytest.raises(IssuerUnavailable) as err:
        issuer.issue(request("a.example.test"))
    assert err.value.reason == "VaultServerError" and err.value.retryable
    assert "internal error" in err.value.message and "role backend" in err.value.message
    assert sleeps == [0.01, 0.02] and proxy.count(SIGN, method="POST") == 4


def test_unreachable_slow_and_resetting_vault_are_unavailable(bao: Bao, proxy: HttpFaultProxy,
                                                              tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(IssuerUnavailable) as err:
        make_issuer(bao, tmp_path, url=f"https://127.0.0.1:{closed_port}").issue(request("a.example.test"))
    assert err.value.reason == "VaultUnreachable"
    proxy.inject("slow", SIGN, delay=0.5)
    with pytest.raises(IssuerUnavailable) as err:
        make_issuer(bao, tmp_path, timeout="200ms", attempts=1, url=proxy.url).issue(request("a.example.test"))
    assert err.value.reason == "VaultUnreachable" and "timed out" in err.value.message
    proxy.clear()
    proxy.inject("reset", SIGN, times=1)
    sleeps: list[float] = []
    assert make_issuer(bao, tmp_path, sleeps=sleeps, url=proxy.url).issue(request("a.example.test")).leaf
    assert len(sleeps) == 1  # the reset one retried, then OpenBao signed


def test_a_vault_that_never_answers_ends_the_attempt_at_attempt_timeout(bao: Bao, proxy: HttpFaultProxy,
                                                                       tmp_path: Path) -> None:
    issuer = make_issuer(bao, tmp_path, url=proxy.url, timeout="30s", attempt_timeout="2s", attempts=3)
    issuer.issue(request("a.example.test"))
    rule = proxy.inject("hang", SIGN)
    started = time.monotonic()
    with pytest.raises(IssuerUnavailable) as err:
        issuer.issue(request("a.example.test"))
    took = time.monotonic() - started
    assert 1.5 < took < 5, took  # not 3 tries of 30 s each
    assert err.value.retryable and "issuers.internal.attempt_timeout" in err.value.message, err.value.message
    assert rule.hits >= 1
    proxy.clear()
    assert issuer.issue(request("a.example.test")).leaf  # the next attempt, once Vault answers
