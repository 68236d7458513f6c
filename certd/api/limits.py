"""What the API listener accepts from a client it does not know yet: sizes, counts and deadlines.

These limits hold before authentication, because an unauthenticated client
must not be able to spend the daemon's memory or its connection slots:

- **request head** (request line + header fields): at most ``MAX_HEAD``
  bytes and ``MAX_HEADERS`` fields (431), complete within ``HEAD_TIMEOUT`` of
  the connection opening or of the previous response (else the connection
  is closed: slow-loris). h11's ``max_incomplete_event_size`` stops the
  server from buffering more than ``MAX_HEAD`` of a head still arriving
  (400); it does not look at a head that arrived whole in one read (up to
  the 256 KiB asyncio reads at once), which is why the size is checked again
  here;
- **body**: at most ``MAX_BODY`` bytes, counted *while it is read*, chunked
  or not: a ``Content-Length`` over the cap is answered 413 before a byte of
  the body is read, a chunked body the moment the count passes the cap, so
  no more than the cap (plus the server's 64 KiB read-ahead) is ever held
  for one request; complete within ``BODY_TIMEOUT`` of the head (else 408);
- **connections**: at most ``connection_cap()`` held at once (a quarter of
  the descriptor limit, at most ``MAX_CONNECTIONS``); at the cap the oldest
  connection still waiting for a request is closed for a new one, so
  renewals never run out of descriptors and a client that asks at once is
  served; asyncio accepts at most ``ACCEPT_BACKLOG`` in one go; idle
  keep-alive ones closed after ``KEEP_ALIVE`` seconds; a client that has not
  taken a finished response within ``HEAD_TIMEOUT`` is cut off. Running
  requests beyond ``LIMIT_CONCURRENCY`` are answered 503.

Every refusal carries ``Connection: close``, and so does any answer given
while the request body is still arriving: the server then closes instead of
reading (and discarding) the rest of a body nobody wants.
The body is read here for every route and handed on from memory, so what
comes after (authentication, the routes) never reads from the socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import h11
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from certd.config.model import DaemonConfig
from certd.errors import ConfigError
from certd.inputs import CERT_LIMIT, KEY_LIMIT, read_file

__all__ = [
    "ACCEPT_BACKLOG",
    "BODY_TIMEOUT",
    "FD_TARGET",
    "HEAD_TIMEOUT",
    "KEEP_ALIVE",
    "LIMIT_CONCURRENCY",
    "MAX_BODY",
    "MAX_CONNECTIONS",
    "MAX_HEAD",
    "MAX_HEADERS",
    "BodyLimit",
    "GuardedH11Protocol",
    "connection_cap",
    "raise_fd_limit",
    "server_config",
]

log = logging.getLogger("certd.api")

MAX_BODY = 64 * 1024  # renew/deploy take no body; a signed caller may send a small JSON note
MAX_HEAD = 16 * 1024  # request line + every header field
MAX_HEADERS = 64
HEAD_TIMEOUT = 10.0
BODY_TIMEOUT = 10.0  # 64 KiB in 10 s is 6.5 KB/s: slower than any real client
KEEP_ALIVE = 5
LIMIT_CONCURRENCY = 64  # running requests beyond the connection cap; an operator API, not a public site
MAX_CONNECTIONS = 1024  # connections held at once, at most (connection_cap: a quarter of the descriptors)
ACCEPT_BACKLOG = 64  # the listen queue, and so the most connections asyncio accepts at once
FD_TARGET = 65536  # the soft descriptor limit raise_fd_limit asks for
GRACEFUL_SHUTDOWN = 5


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head.

    uvicorn arms no timer before the first request of a connection, and its
    keep-alive timer is cancelled by the first byte of the next request, so a
    client sending one header byte every few seconds would hold a connection
    slot forever. Here every wait for a request head has ``HEAD_TIMEOUT``.

    Why a subclass of uvicorn's internals: uvicorn has no public setting or
    hook for a head deadline (only ``timeout_keep_alive``), and an ASGI
    middleware runs only once a head is complete, too late.
    ``uvicorn.Config(http=<class>)`` is the public way to plug a protocol in,
    but the class plugged in leans on these parts of
    ``uvicorn.protocols.http.h11_impl.H11Protocol``, and only these
    (``tests/test_library_seams.py`` checks them and names the uvicorn version
    when they change): the methods ``connection_made``, ``connection_lost`` and
    ``on_response_complete`` (called once a response is sent), and the
    attributes ``conn`` (the ``h11.Connection``) and ``cycle`` (the current
    request, ``None`` before the first, with ``response_complete``). The loop
    and the transport are taken from asyncio, not from uvicorn's attributes.
    """

    _head_timer: asyncio.TimerHandle | None = None
    _head_transport: asyncio.Transport | None = None
    # Connections held open at once, across the listener (one API server per process); ``cap`` is set by
    # ``server_config`` from the descriptor limit. Beyond it a connection is closed the moment it is made.
    _open: ClassVar[dict[GuardedH11Protocol, None]] = {}  # oldest first
    cap: ClassVar[int] = 256

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(GuardedH11Protocol._open) >= GuardedH11Protocol.cap and not self._evict_idle():
            # Renewals need descriptors (sockets to the CA, files, hooks' pipes): an unauthenticated client
            # holding connections must never spend them. uvicorn never sees this connection.
            cast(asyncio.Transport, transport).abort()
            log.warning("API: %d connections open and busy, the most it holds; a new one was closed",
                        GuardedH11Protocol.cap)
            return
        GuardedH11Protocol._open[self] = None
        super().connection_made(transport)  # type: ignore[arg-type]
        self._head_transport = cast(asyncio.Transport, transport)  # a stream server's: it can abort()
        self._arm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self not in GuardedH11Protocol._open:
            return  # closed at once by the cap: uvicorn never knew it
        del GuardedH11Protocol._open[self]
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    @staticmethod
    def _evict_idle() -> bool:
        """At the cap, close the oldest connection still waiting for a request, so a client that asks at once
        is served while idle connections (someone holding slots) are the ones that go; ``False`` if none is."""
        for proto in GuardedH11Protocol._open:  # connection_lost removes it, and lets uvicorn forget it
            transport = proto._head_transport
            if transport is not None and not transport.is_closing() and proto._waiting_for_head():
                transport.abort()
                log.warning("API: %d connections open, the most it holds; the oldest idle ones are closed",
                            GuardedH11Protocol.cap)
                return True
        return False

    def _waiting_for_head(self) -> bool:
        return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

    def _arm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT, self._head_deadline)

    def _head_deadline(self) -> None:
        self._head_timer = None
        transport = self._head_transport
        if transport is None:
            return
        if transport.is_closing():
            transport.abort()  # asked to close HEAD_TIMEOUT ago and still not flushed: the peer is not reading
            return
        if self._waiting_for_head():
            transport.close()
            self._arm_head_timer()  # close() waits for unsent data; abort if the peer never takes it


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value)  # h11 already refused anything but ASCII digits
    return None


def _head_size(scope: Scope) -> int:
    target = len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string", b""))
    return target + sum(len(name) + len(value) + 4 for name, value in scope["headers"])  # ": " and CRLF


@dataclass
class _Body:
    chunks: list[bytes]
    size: int = 0
    done: bool = False


class BodyLimit:
    """ASGI middleware: head-field count, body size and body deadline, before anything else runs."""

    def __init__(self, app: ASGIApp, *, max_body: int = MAX_BODY, max_headers: int = MAX_HEADERS,
                 max_head: int = MAX_HEAD, body_timeout: float = BODY_TIMEOUT) -> None:
        self.app = app
        self.max_body = max_body
        self.max_headers = max_headers
        self.max_head = max_head
        self.body_timeout = body_timeout

    async def _read(self, receive: Receive) -> _Body:
        body = _Body(chunks=[])
        try:
            async with asyncio.timeout(self.body_timeout):
                while not body.done:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _Refused(400, "client went away")  # nobody reads the answer; ends the request
                    chunk = message.get("body", b"")
                    body.size += len(chunk)
                    if body.size > self.max_body:
                        raise _Refused(413, f"body larger than {self.max_body} bytes")
                    body.chunks.append(chunk)
                    body.done = not message.get("more_body", False)
        except TimeoutError:
            raise _Refused(408, f"body not received within {self.body_timeout:g}s") from None
        return body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            if len(scope["headers"]) > self.max_headers:
                raise _Refused(431, f"more than {self.max_headers} header fields")
            if _head_size(scope) > self.max_head:
                raise _Refused(431, f"request line and header fields larger than {self.max_head} bytes")
            length = _content_length(scope)
            if length is not None and length > self.max_body:
                raise _Refused(413, f"body larger than {self.max_body} bytes")
            body = await self._read(receive)
        except _Refused as exc:
            await _refuse(send, exc.status, exc.detail)
            return
        pending = [b"".join(body.chunks)]

        async def replay() -> Message:
            if pending:
                return {"type": "http.request", "body": pending.pop(), "more_body": False}
            return await receive()  # after the body only http.disconnect can come

        await self.app(scope, replay, send)


def _tls_problem(daemon: DaemonConfig) -> str | None:
    """What is wrong with the TLS files, naming the key (OpenSSL alone would only say "PEM lib")."""
    checks = [("api_tls_cert_file", daemon.api_tls_cert_file, x509.load_pem_x509_certificates, "PEM certificate"),
              ("api_tls_key_file", daemon.api_tls_key_file, lambda b: load_pem_private_key(b, password=None),
               "unencrypted PEM private key"),
              ("api_client_ca_file", daemon.api_client_ca_file, x509.load_pem_x509_certificates, "PEM certificate")]
    for key, path, parse, what in checks:
        if path is None:
            continue
        try:
            parse(read_file(path, KEY_LIMIT if key == "api_tls_key" else CERT_LIMIT))
        except OSError as exc:
            return f"daemon.{key}: cannot read {path}: {exc.strerror}"
        except ValueError:
            return f"daemon.{key}: {path} holds no {what}"
    if daemon.api_tls_cert_file is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(daemon.api_tls_cert_file, daemon.api_tls_key_file)
        except ssl.SSLError:
            return f"daemon.api_tls_key_file: {daemon.api_tls_key_file} is not the key of {daemon.api_tls_cert_file}"
    return None


def connection_cap() -> int:
    """A quarter of the descriptors this process may open, within 16..1024: the rest are the renewals'."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(16, min(MAX_CONNECTIONS, soft // 4))


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft descriptor limit to the hard one (at most ``FD_TARGET``); (before, after).

    The soft default is 1,024 under systemd and most shells, while the hard limit is usually far higher:
    a daemon with many renewals at once and an API must not run out at 1,024 (the shipped unit also sets
    ``LimitNOFILE``). Where the hard limit is low (a container), the API's cap shrinks with it instead.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = FD_TARGET if hard == resource.RLIM_INFINITY else min(hard, FD_TARGET)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, want
    return soft, soft


def server_config(app: ASGIApp, daemon: DaemonConfig, config_path: Path) -> uvicorn.Config:
    """The uvicorn settings for ``[daemon]``: the limits above and, when configured, TLS and mTLS.

    Raises ``ConfigError`` naming the key when a TLS file cannot be used, in
    the caller's thread rather than later inside the server thread.
    """
    problem = _tls_problem(daemon)
    if problem is not None:
        raise ConfigError(f"{config_path}: {problem}")
    host, _, port = daemon.api_listen.rpartition(":")
    tls: dict[str, Any] = {}
    if daemon.api_tls_cert_file is not None:
        tls = {"ssl_certfile": str(daemon.api_tls_cert_file), "ssl_keyfile": str(daemon.api_tls_key_file)}
        if daemon.api_client_ca_file is not None:
            tls |= {"ssl_ca_certs": str(daemon.api_client_ca_file), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    GuardedH11Protocol.cap = connection_cap()
    config = uvicorn.Config(
        app,
        host=host.strip("[]"),
        port=int(port),
        http=GuardedH11Protocol,
        ws="none",
        lifespan="off",
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,  # X-Forwarded-For from anyone would be believed for 127.0.0.1 peers
        h11_max_incomplete_event_size=MAX_HEAD,
        # uvicorn answers 503 once connections or running requests reach this: connections are capped
        # above (idle ones evicted), so only running requests may reach it.
        limit_concurrency=GuardedH11Protocol.cap + LIMIT_CONCURRENCY,
        log_config=None,  # uvicorn's lines go through certd's handler: JSON, and repeats rate-limited
        # asyncio accepts up to ``backlog`` connections in one go before any protocol sees them: uvicorn's
        # 2,048 let a burst of connections take every descriptor before the cap could close one.
        backlog=ACCEPT_BACKLOG,
        timeout_keep_alive=KEEP_ALIVE,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        **tls,
    )
    config.load()
    if config.ssl is not None:
        config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
    return config
