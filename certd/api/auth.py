"""Who may call the HTTP API: checked before routing, so a refused caller learns nothing about the estate.

Which requests need credentials:

- every method but ``GET``/``HEAD`` (writes), always;
- ``GET``/``HEAD`` when ``[daemon] api_read_auth`` says so: ``true`` for
  everything except ``/healthz``, ``/readyz`` and ``/metrics`` (probes and
  scrapers that cannot sign; note that ``/readyz`` and ``/metrics`` name
  certificates), ``"all"`` for every path.

Credentials are ``Authorization: Bearer <token>`` or a request signed with
the token (``certd/signing.py``, label ``certd-api-v1``: method, path with
query, timestamp and body all under the MAC). A signature is accepted once,
across restarts and replicas, because it is recorded in the inventory
(``inventory/signatures.py``) before the request goes on. The check runs
before routing: an unknown path, an unknown name and a malformed query all
answer 401 alike to a caller without credentials.

The body has been read (and capped) by ``api_limits.BodyLimit`` already; it
is handed on from memory.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from certd.core.signing import API_LABEL, WINDOW, BadSignature, verify
from certd.errors import InventoryError
from certd.inputs import read_text
from certd.inventory.signatures import SignatureLedger

__all__ = ["AUTHENTICATED", "OPEN_PATHS", "Authenticate", "NoToken", "ReadAuth", "needs_credentials", "read_token",
           "request_target"]


AUTHENTICATED = "certd_authenticated"  # key in the ASGI scope's state once credentials were checked


class NoToken(Exception):
    """There is no usable API token; the text says why (not configured, unreadable, empty)."""


def read_token(path: Path | None) -> str:
    """The token, re-read at every call so an operator can rotate the file under a running daemon.

    An empty or unreadable file is not "not configured": the operator set it and needs to hear what is wrong.
    """
    if path is None:
        raise NoToken("no [daemon] api_token_file is configured: writes are disabled")
    try:
        token = read_text(path).strip()
    except OSError as exc:
        raise NoToken(f"daemon.api_token_file {path} cannot be read ({exc.strerror or exc}): "
                      "writes are refused") from None
    if not token:
        raise NoToken(f"daemon.api_token_file {path} is empty: writes are refused")
    return token

log = logging.getLogger("certd.api")

ReadAuth = bool | Literal["all"]
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def needs_credentials(method: str, path: str, read_auth: ReadAuth) -> bool:
    """The policy in the module docstring, as one pure function."""
    if method not in ("GET", "HEAD"):
        return True
    if read_auth == "all":
        return True
    return bool(read_auth) and path not in OPEN_PATHS


def request_target(scope: Scope) -> bytes:
    """The path with query as the client sent it (percent-encoding untouched), which is what it signed."""
    raw = scope.get("raw_path") or scope["path"].encode("utf-8")
    query: bytes = scope.get("query_string", b"")
    return bytes(raw) + (b"?" + query if query else b"")


class _Unauthorized(Exception):
    pass


def _one(scope: Scope, name: bytes) -> str | None:
    values = [v for k, v in scope["headers"] if k == name]
    if len(values) > 1:
        raise _Unauthorized(f"{name.decode()} given more than once")
    return values[0].decode("latin-1") if values else None


async def _answer(send: Send, status: int, detail: str, *, challenge: bool) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if challenge:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class Authenticate:
    """ASGI middleware: bearer token or a once-only signature, where ``needs_credentials`` says so."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: Callable[[], str | None],
        read_auth: Callable[[], ReadAuth],
        ledger: SignatureLedger,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.token = token
        self.read_auth = read_auth
        self.ledger = ledger
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not needs_credentials(scope["method"], scope["path"], self.read_auth()):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:  # from BodyLimit's memory: one message, already capped
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            await self._check(scope, body)
        except _Unauthorized as exc:
            log.debug("API %s %s refused: %s", scope["method"], scope["path"], exc)
            await _answer(send, 401, str(exc), challenge=True)
            return
        except InventoryError as exc:
            log.error("API %s %s: %s", scope["method"], scope["path"], exc)
            await _answer(send, 503, "cannot check the signature against the inventory", challenge=False)
            return
        scope.setdefault("state", {})[AUTHENTICATED] = True  # routes show callers with credentials more
        pending = [body]

        async def replay() -> Message:
            if pending:
                return {"type": "http.request", "body": pending.pop(), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _check(self, scope: Scope, body: bytes) -> None:
        try:
            token = self.token()
        except NoToken as exc:  # the reason names a path on this host: for the log, not for the caller
            log.warning("API %s %s refused: %s", scope["method"], scope["path"], exc)
            raise _Unauthorized("the server has no usable API token, so it refuses every authenticated request "
                                "(its log says why)") from None
        if not token:
            raise _Unauthorized("no [daemon] api_token_file is configured: writes are disabled")
        auth = _one(scope, b"authorization")
        stamp = _one(scope, b"x-certd-timestamp")
        signature = _one(scope, b"x-certd-signature")
        if auth is not None and auth[:7].lower() == "bearer ":
            if hmac.compare_digest(auth[7:].strip().encode("latin-1"), token.encode()):
                return
            raise _Unauthorized("invalid bearer token")
        if stamp is None or signature is None:
            raise _Unauthorized("missing credentials: Authorization: Bearer, or X-Certd-Timestamp and "
                                "X-Certd-Signature")
        try:
            canonical, at = verify(token, API_LABEL, scope["method"], request_target(scope), stamp, signature, body,
                                   self.clock())
        except BadSignature as exc:
            raise _Unauthorized(str(exc)) from None
        expires = datetime.fromtimestamp(at + WINDOW, UTC)
        fresh = await run_in_threadpool(self.ledger.remember, canonical, expires, datetime.now(UTC))
        if not fresh:
            raise _Unauthorized("signature already used (each signed request is accepted once)")
