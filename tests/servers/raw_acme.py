"""Helpers for raw ``acme`` clients (smoke tests, the ARI front test, the benchmark), independent of certd.

Raw-client code must not lean on certd's issuer or solvers: the point of those clients is to be a baseline
without certd.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from acme import messages

T = TypeVar("T")


def retry_bad_nonce(fn: Callable[[], T], attempts: int = 8) -> T:
    """`acme` retries a badNonce only once; Pebble rejects 5% of nonces on purpose, so under load that fails."""
    for attempt in range(attempts):
        try:
            return fn()
        except messages.Error as exc:
            if exc.code != "badNonce" or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


class Http01Responder:
    """Serves ``tokens`` (URL path -> key authorization) on 127.0.0.1:port; one for all threads of a test."""

    def __init__(self, port: int) -> None:
        self.tokens: dict[str, str] = {}
        tokens = self.tokens

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = tokens.get(self.path, "").encode()
                self.send_response(200 if body else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
