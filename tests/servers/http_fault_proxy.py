"""An HTTPS reverse proxy in front of a real server (Pebble, OpenBao) that misbehaves per request, on demand.

The TCP ``FaultProxy`` breaks every connection alike; this one reads each request and breaks only those a
rule matches (by method and path prefix), so a fault can be aimed at one phase of a renewal: an ACME
finalize, a certificate download, a Vault sign. What a rule does:

- ``answer``: a canned reply (a 5xx, a ``rateLimited`` or ``badNonce`` problem, ``accountDoesNotExist``);
  for an ACME server a fresh ``Replay-Nonce`` from the real server goes with it, as a CA's error carries one;
- ``hang``: read the request, never answer, until the rule ends (the client's deadline is the subject);
- ``reset``: reset the connection (RST) without a byte of answer;
- ``refuse``: stop listening while the rule is active (connections refused), resetting the one that asked;
- ``slow``: forward, but answer ``delay`` seconds late;
- ``rewrite``: forward, then change the real answer (an order kept ``processing``, a certificate for a key
  the client never had); it sees the request too;
- ``serve``: answer from the test's own function, never asking the server (a resource the server lacks, such
  as ARI's ``renewalInfo`` in front of a Pebble without it).

A rule is active between ``start`` and ``end`` (monotonic seconds; ``None`` = from now / until cleared) and for
at most ``times`` matching requests. The client must see only the proxy: it serves the real server's own
listener certificate (so the client's ``ca_bundle`` is unchanged), forwards the client's Host header (Pebble
checks the JWS ``url`` against it and builds every URL it returns from it), and rewrites the upstream base URL
in bodies and Location/Link headers in case a server builds a URL from its own address.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.servers.ports import HOST, free_port, tcp_open

KINDS = ("answer", "hang", "reset", "refuse", "slow", "rewrite", "serve")
Response = tuple[int, list[tuple[str, str]], bytes]
Request = tuple[str, str, bytes]  # method, path, body
_UPSTREAM_TIMEOUT = 30.0
_DROP_RESPONSE_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}
_DROP_REQUEST_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "accept-encoding"}


@dataclass
class Rule:
    """One fault: which requests it hits, what it does to them, and for how long."""

    kind: str
    path: str = "/"
    method: str | None = None
    status: int = 500
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 1.0
    rewrite: Callable[[Request, Response], Response] | None = None
    serve: Callable[[Request], Response] | None = None
    times: int | None = None
    start: float | None = None
    end: float | None = None
    hits: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")

    def active(self, now: float) -> bool:
        if self.start is not None and now < self.start:
            return False
        if self.end is not None and now >= self.end:
            return False
        return self.times is None or self.hits < self.times

    def matches(self, method: str, path: str, now: float) -> bool:
        return (self.method is None or self.method == method) and path.startswith(self.path) and self.active(now)


@dataclass(frozen=True)
class Seen:
    """One request as the client sent it, and the status it got (0: no answer: hung, reset or refused)."""

    at: float
    method: str
    path: str
    status: int
    fault: str | None


class HttpFaultProxy:
    """The proxy; ``url`` replaces the real server's base URL in the client's config."""

    def __init__(self, upstream_url: str, workdir: Path, *, nonce_path: str | None = None) -> None:
        upstream = urlsplit(upstream_url)
        self.upstream_base = f"{upstream.scheme}://{upstream.netloc}"
        self._upstream = (upstream.hostname or HOST, upstream.port or 443)
        self.upstream_context = ssl.create_default_context(cafile=str(workdir / "ca.pem"))
        self._server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._server_context.load_cert_chain(workdir / "fullchain.pem", workdir / "privkey.pem")
        self.nonce_path = nonce_path
        self.port = free_port()
        self.url = f"https://{HOST}:{self.port}"
        self.rules: list[Rule] = []
        self.seen: list[Seen] = []
        self.errors: list[str] = []  # rules that raised: a bug in the test, which must fail it
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._watch = threading.Thread(target=self._keep_listening, name="http-fault-proxy-watch", daemon=True)
        self._listen()
        self._watch.start()

    # --- what tests control ---------------------------------------------------------------------------------

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def inject(self, kind: str, path: str = "/", **kwargs: Any) -> Rule:
        return self.add(Rule(kind, path, **kwargs))

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def count(self, path: str, *, method: str | None = None, status: int | None = None, since: float = 0.0,
              until: float = float("inf")) -> int:
        """Requests seen for ``path`` (a prefix), optionally by method, status and monotonic time."""
        with self._lock:
            return sum(1 for s in self.seen if s.path.startswith(path) and (method is None or s.method == method)
                       and (status is None or s.status == status) and since <= s.at <= until)

    def close(self) -> None:
        self._stopping.set()
        self._unlisten()
        self._watch.join(5)

    # --- listening, and refusing ----------------------------------------------------------------------------

    def _listen(self) -> None:
        server = ThreadingHTTPServer((HOST, self.port), self._handler_class())
        server.daemon_threads = True
        # Handshake in the per-connection thread, so one stalled client cannot block accept().
        server.socket = self._server_context.wrap_socket(server.socket, server_side=True,
                                                         do_handshake_on_connect=False)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="http-fault-proxy", daemon=True)
        self._thread.start()
        if not tcp_open(self.port):
            raise RuntimeError(f"fault proxy did not start on {self.url}")

    def _unlisten(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def _refusing(self) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(r.kind == "refuse" and r.hits and r.active(now) for r in self.rules)

    def _keep_listening(self) -> None:
        """A refuse rule closes the port; this reopens it when the rule has ended."""
        while not self._stopping.wait(0.05):
            if self._server is None and not self._refusing():
                with contextlib.suppress(OSError, RuntimeError):
                    self._listen()

    # --- per request ----------------------------------------------------------------------------------------

    def _rule_for(self, method: str, path: str) -> Rule | None:
        now = time.monotonic()
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path, now):
                    rule.hits += 1
                    return rule
        return None

    def _note(self, method: str, path: str, status: int, rule: Rule | None) -> None:
        with self._lock:
            self.seen.append(Seen(time.monotonic(), method, path, status, rule.kind if rule else None))

    def _fresh_nonce(self) -> str | None:
        if self.nonce_path is None:
            return None
        conn = http.client.HTTPSConnection(*self._upstream, context=self.upstream_context, timeout=10)
        try:
            conn.request("HEAD", self.nonce_path)
            resp = conn.getresponse()
            resp.read()
            return resp.getheader("Replay-Nonce")
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def _rewrite_url(self, value: str) -> str:
        return value.replace(self.upstream_base, self.url)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            upstream: http.client.HTTPSConnection | None = None

            def log_message(self, format: str, *args: Any) -> None:
                """Silent: tests read ``proxy.seen``."""

            def do_GET(self) -> None:
                self._serve()

            def do_HEAD(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def do_PUT(self) -> None:
                self._serve()

            def do_DELETE(self) -> None:
                self._serve()

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = urlsplit(self.path).path
                rule = proxy._rule_for(self.command, path)
                kind = rule.kind if rule else None
                if rule is not None and kind in ("hang", "reset", "refuse"):
                    proxy._note(self.command, path, 0, rule)
                    if kind == "hang":
                        while not proxy._stopping.wait(0.1) and rule.active(time.monotonic()):
                            pass
                    elif kind == "refuse":
                        threading.Thread(target=proxy._unlisten, daemon=True).start()
                    self._reset()
                    return
                if rule is not None and kind in ("answer", "serve"):
                    answer = self._guarded(lambda: rule.serve((self.command, path, body)) if rule.serve
                                           else self._canned(rule))
                    self._reply(*answer)
                    proxy._note(self.command, path, answer[0], rule)
                    return
                try:
                    response = self._forward(body)
                except (OSError, http.client.HTTPException) as exc:
                    problem = {"type": "about:blank", "detail": f"fault proxy: upstream unreachable: {exc}"}
                    response = (502, [("Content-Type", "application/problem+json")], json.dumps(problem).encode())
                if rule is not None and kind == "slow":
                    time.sleep(rule.delay)
                if rule is not None and kind == "rewrite" and rule.rewrite is not None:
                    rewrite, real = rule.rewrite, response
                    response = self._guarded(lambda: rewrite((self.command, path, body), real))
                proxy._note(self.command, path, response[0], rule)
                self._reply(*response)

            def _guarded(self, make: Callable[[], Response]) -> Response:
                """A rule that raised is the test's bug: kept in ``proxy.errors`` and answered as a 500 naming it,
                never a silently closed connection that would read as a network fault."""
                try:
                    return make()
                except Exception as exc:
                    proxy.errors.append(f"{self.command} {self.path}: {type(exc).__name__}: {exc}")
                    problem = {"type": "about:blank", "detail": f"fault proxy: the rule failed: {exc}"}
                    return 500, [("Content-Type", "application/problem+json")], json.dumps(problem).encode()

            def _canned(self, rule: Rule) -> Response:
                headers = [("Content-Type", "application/problem+json"), *rule.headers.items()]
                nonce = proxy._fresh_nonce()
                if nonce:
                    headers.append(("Replay-Nonce", nonce))
                return rule.status, headers, json.dumps(rule.body or {}).encode()

            def _reset(self) -> None:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()

            def _forward(self, body: bytes) -> Response:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _DROP_REQUEST_HEADERS}
                headers["Accept-Encoding"] = "identity"
                if body or self.command in ("POST", "PUT"):
                    headers["Content-Length"] = str(len(body))
                for attempt in (1, 2):  # a fresh connection once: the server may have closed the idle one
                    if self.upstream is None:
                        self.upstream = http.client.HTTPSConnection(
                            *proxy._upstream, context=proxy.upstream_context, timeout=_UPSTREAM_TIMEOUT)
                    try:
                        self.upstream.request(self.command, self.path, body=body or None, headers=headers)
                        resp = self.upstream.getresponse()
                        out = resp.read()
                    except (OSError, http.client.HTTPException):
                        self.upstream.close()
                        self.upstream = None
                        if attempt == 2:
                            raise
                        continue
                    if resp.will_close:
                        self.upstream.close()
                        self.upstream = None
                    kept = [(k, proxy._rewrite_url(v) if k.lower() in ("location", "link") else v)
                            for k, v in resp.getheaders() if k.lower() not in _DROP_RESPONSE_HEADERS]
                    if self.command == "HEAD":
                        out = b""
                    elif not out.startswith(b"-----BEGIN"):
                        out = out.replace(proxy.upstream_base.encode(), proxy.url.encode())
                    return resp.status, kept, out
                raise AssertionError("unreachable")

            def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                try:
                    self.send_response(status)
                    for key, value in headers:
                        if key.lower() != "content-length":
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if self.command != "HEAD" and body:
                        self.wfile.write(body)
                except OSError:
                    self.close_connection = True

            def finish(self) -> None:
                with contextlib.suppress(OSError):
                    super().finish()
                if self.upstream is not None:
                    with contextlib.suppress(OSError):
                        self.upstream.close()
                    self.upstream = None

        return Handler
