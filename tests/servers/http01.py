"""A bare HTTP-01 responder for raw ``acme`` clients (tests and the benchmark), independent of certd's own.

Raw-client code must not lean on certd's solver: the point of those clients is to be a baseline without certd.
"""

from __future__ import annotations

import http.server
import threading
from typing import Any


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
