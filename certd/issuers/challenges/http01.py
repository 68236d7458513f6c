"""HTTP-01 (RFC 8555 section 8.3): answer the CA's GET for a token with its key authorization.

Two ways, picked by ``build_http01``:

* ``StandaloneHttp01`` runs certd's own tiny HTTP server. It listens only
  while some order has a challenge outstanding, because port 80 usually
  belongs to the load balancer the rest of the time and an idle open port is
  attack surface. Every solver with the same ``listen`` address, in every
  worker thread, shares one process-wide responder (a registry keyed by
  address, refcounted by outstanding challenges): a second server could not
  bind the same port anyway, and dozens of concurrent orders must all be
  answerable at once. This registry is the one deliberate piece of global
  state, because the socket it guards is itself process-global.
* ``WebrootHttp01`` drops the token file into the document root of a web
  server that already owns port 80, so nothing new listens.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import socket
import socketserver
import threading
import time
from collections import Counter
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from certd.config.model import AcmeIssuerConfig
from certd.errors import IssuerError
from certd.files import write_atomic
from certd.issuers.challenges.base import Challenge, ChallengeSolver

__all__ = ["StandaloneHttp01", "WebrootHttp01", "build_http01"]

log = logging.getLogger("certd.issuers.challenges.http01")

CHALLENGE_PATH = "/.well-known/acme-challenge/"
# A token is base64url (RFC 8555 section 8.3); anything else must never become a file name or a path.
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_REASON = "ChallengeFailed"


def _check_tokens(challenges: Sequence[Challenge]) -> None:
    """Refuse tokens that are not base64url, so a hostile CA cannot make us write outside the webroot."""
    for ch in challenges:
        if not _TOKEN_RE.match(ch.token):
            raise IssuerError(f"HTTP-01 token for {ch.domain} is not base64url; refusing it", reason=_REASON)


def _split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` with ``[v6]`` brackets, as config.HostPort accepts it."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise IssuerError(f"HTTP-01 listen address {listen!r} is not HOST:PORT", reason=_REASON)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class _Server(ThreadingHTTPServer):
    """The HTTP server of one responder; looks tokens up in the responder's table."""

    allow_reuse_address = True  # a restart right after the last order must not wait out TIME_WAIT
    daemon_threads = True  # a CA connection left hanging must not keep shutdown (or the process) waiting

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, responder: _Responder) -> None:
        self.address_family = family
        self.responder = responder
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Skip HTTPServer's reverse lookup of our own address: without working DNS it can stall for seconds."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _Handler(BaseHTTPRequestHandler):
    """Serves key authorizations and nothing else."""

    server_version = "certd"
    sys_version = ""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        token = path[len(CHALLENGE_PATH) :] if path.startswith(CHALLENGE_PATH) else ""
        server = self.server
        assert isinstance(server, _Server)
        body = server.responder.lookup(token) if token else None
        if body is None:
            self._reply(404, b"not found\n")
        else:
            self._reply(200, body.encode("ascii"))

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """The stdlib writes every request to stderr; certd's stderr is its structured log."""
        log.debug("http-01 %s: " + format, self.client_address[0], *args)


class _Responder:
    """One listening socket and the tokens it answers; only touched under ``_registry_lock``, except lookup."""

    def __init__(self, listen: str) -> None:
        host, port = _split_listen(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listen = listen
        self._tokens: dict[str, str] = {}
        self._counts: Counter[str] = Counter()
        self._tokens_lock = threading.Lock()
        self._server = _bind(listen, (host, port), family, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"http01 {listen}", daemon=True
        )
        self._thread.start()
        log.debug("http-01 responder listening on %s", listen)

    def lookup(self, token: str) -> str | None:
        with self._tokens_lock:
            return self._tokens.get(token)

    def add(self, challenges: Sequence[Challenge]) -> None:
        with self._tokens_lock:
            for ch in challenges:
                self._tokens[ch.token] = ch.validation
                self._counts[ch.token] += 1

    def remove(self, challenges: Sequence[Challenge]) -> None:
        """Forget only tokens we hold, so a cleanup after a failed present cannot stop others' server."""
        with self._tokens_lock:
            for ch in challenges:
                if self._counts[ch.token] > 0:
                    self._counts[ch.token] -= 1
                if self._counts[ch.token] <= 0:
                    del self._counts[ch.token]
                    self._tokens.pop(ch.token, None)

    @property
    def idle(self) -> bool:
        with self._tokens_lock:
            return not self._counts

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        log.debug("http-01 responder on %s stopped", self.listen)


def _bind(listen: str, address: tuple[str, int], family: socket.AddressFamily, responder: _Responder) -> _Server:
    """Open the socket, turning the usual failures into an error an operator can act on.

    An address in use is tried again for up to two seconds: another certd process answering its own order on
    the same port (a CLI renewal beside the daemon) holds it only while its challenges are outstanding.
    """
    deadline = time.monotonic() + 2.0
    while True:
        try:
            return _Server(address, family, responder)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE and time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            why = {
                errno.EADDRINUSE: "the address is already in use",
                errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
                errno.EADDRNOTAVAIL: "no such local address",
            }.get(exc.errno or 0, exc.strerror or str(exc))
            raise IssuerError(
                f"HTTP-01 standalone responder cannot listen on {listen}: {why}; set http01_listen to an address "
                "certd may bind (the CA must reach it on port 80, e.g. through your proxy), or http01_webroot to "
                "serve the challenge from an existing web server",
                reason=_REASON,
                retryable=exc.errno == errno.EADDRINUSE,
            ) from exc


_registry: dict[str, _Responder] = {}
_registry_lock = threading.Lock()


class StandaloneHttp01:
    """HTTP-01 from a shared, on-demand responder listening on ``listen`` (``host:port``, ``[v6]:port``)."""

    challenge_type = "http-01"

    def __init__(self, listen: str) -> None:
        host, port = _split_listen(listen)
        self.listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def present(self, challenges: Sequence[Challenge]) -> None:
        _check_tokens(challenges)
        with _registry_lock:
            responder = _registry.get(self.listen)
            if responder is None:
                responder = _Responder(self.listen)
                _registry[self.listen] = responder
            responder.add(challenges)

    def cleanup(self, challenges: Sequence[Challenge]) -> None:
        try:
            self._release(challenges)
        except Exception:
            log.warning("http-01 cleanup on %s failed", self.listen, exc_info=True)

    def _release(self, challenges: Sequence[Challenge]) -> None:
        # Stopping under the lock: a present() racing in must not try to bind while the old socket is open.
        with _registry_lock:
            responder = _registry.get(self.listen)
            if responder is None:
                return
            responder.remove(challenges)
            if responder.idle:
                del _registry[self.listen]
                responder.stop()


class WebrootHttp01:
    """HTTP-01 through files in ``<webroot>/.well-known/acme-challenge/`` served by an existing web server."""

    challenge_type = "http-01"

    def __init__(self, webroot: Path) -> None:
        self.webroot = Path(webroot)
        self.directory = self.webroot / ".well-known" / "acme-challenge"

    def present(self, challenges: Sequence[Challenge]) -> None:
        _check_tokens(challenges)
        if not self.webroot.is_dir():
            raise IssuerError(
                f"HTTP-01 webroot {self.webroot} is not a directory (check http01_webroot)", reason=_REASON
            )
        self._make_directories()
        for ch in challenges:
            self._write(self.directory / ch.token, ch.validation)

    def cleanup(self, challenges: Sequence[Challenge]) -> None:
        for ch in challenges:
            path = self.directory / ch.token
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("http-01 cleanup: cannot remove %s: %s", path, exc.strerror or exc)

    def _make_directories(self) -> None:
        """0755 whatever the umask: the web server usually runs as another user and must traverse them."""
        for directory in (self.directory.parent, self.directory):
            try:
                directory.mkdir(mode=0o755)
            except FileExistsError:
                continue
            except OSError as exc:
                raise _write_error(directory, exc) from exc
            with contextlib.suppress(OSError):
                os.chmod(directory, 0o755)  # noqa: S103 - the web server must traverse it

    def _write(self, path: Path, content: str) -> None:
        """Atomically, so the web server never serves a half-written key authorization to the CA."""
        try:
            write_atomic(path, content.encode("ascii"), 0o644)
        except OSError as exc:
            raise _write_error(path, exc) from exc


def _write_error(path: Path, exc: OSError) -> IssuerError:
    return IssuerError(
        f"HTTP-01 webroot: cannot write {path}: {exc.strerror or exc} (check http01_webroot and its permissions)",
        reason=_REASON,
    )


def build_http01(config: AcmeIssuerConfig) -> ChallengeSolver:
    """Webroot when configured (a web server already owns port 80), else the standalone responder."""
    if config.http01_webroot is not None:
        return WebrootHttp01(config.http01_webroot)
    return StandaloneHttp01(config.http01_address)
