"""An ARI front (RFC 9773) for Pebble: an HTTPS reverse proxy that adds ``renewalInfo`` to Pebble's directory.

Pebble 2.4 (Debian) has no renewalInfo resource and no notion of ``replaces``, yet certd must be tested against
a real ACME server with real validation. So every ACME request still goes to Pebble unchanged, and only the ARI
part is played by this front: it answers ``GET /renewal-info/<certID>`` with a window the test chooses, and it
reads (never changes) the JWS payload of each newOrder so a test can see the ``replaces`` certd sent.

The client must see only the front: Pebble checks that the JWS ``url`` equals ``https://<Host><path>`` of the
request it receives and builds every URL it returns from that Host header, so the front forwards the client's
own Host header. Pebble's base URL is still rewritten to the front's in bodies and Location/Link headers, in
case a Pebble version builds some URL from its own listen address.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import http.client
import json
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.servers.pebble import PebbleServer
from tests.servers.ports import HOST, free_port, tcp_open

RENEWAL_INFO_PATH = "/renewal-info"
DEFAULT_RETRY_AFTER = 3600
_UPSTREAM_TIMEOUT = 30.0
# Hop-by-hop or recomputed here: copying them would corrupt framing of the re-encoded response.
_DROP_RESPONSE_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}
_DROP_REQUEST_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "accept-encoding"}


@dataclass(frozen=True)
class AskedCertID:
    """One renewalInfo lookup, decoded, so tests can check the client computed the certID correctly."""

    cert_id: str
    key_identifier: bytes
    serial: int


@dataclass(frozen=True)
class Window:
    start: dt.datetime
    end: dt.datetime
    explanation_url: str | None = None


def b64url_decode(text: str) -> bytes:
    """base64url without padding (RFC 7515 section 2), as ACME uses everywhere; raises ValueError if malformed."""
    if not text or "=" in text:
        raise ValueError(f"{text!r} is not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{text!r} is not base64url: {exc}") from exc


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def serial_der_bytes(serial: int) -> bytes:
    """The content octets of the DER INTEGER (two's complement, so a leading 0x00 when the top bit is set)."""
    return serial.to_bytes(serial.bit_length() // 8 + 1, "big", signed=True)


def cert_id(key_identifier: bytes, serial: int) -> str:
    """RFC 9773 section 4.1: base64url(AKI keyIdentifier) "." base64url(serial DER content octets)."""
    return f"{b64url_encode(key_identifier)}.{b64url_encode(serial_der_bytes(serial))}"


def parse_cert_id(text: str) -> AskedCertID:
    aki_part, sep, serial_part = text.partition(".")
    if not sep or "." in serial_part:
        raise ValueError(f"{text!r} is not <keyIdentifier>.<serial>")
    key_identifier = b64url_decode(aki_part)
    serial_bytes = b64url_decode(serial_part)
    serial = int.from_bytes(serial_bytes, "big", signed=True)
    if serial <= 0 or serial_der_bytes(serial) != serial_bytes:
        # A non-minimal or negative encoding means the client got the DER rule wrong; a CA would not match it.
        raise ValueError(f"serial {serial_bytes.hex()} is not a positive, minimally encoded DER INTEGER")
    return AskedCertID(text, key_identifier, serial)


def _rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AriFront:
    """HTTPS proxy to one PebbleServer that adds ARI; ``directory_url`` is what the client under test gets.

    Records, for assertions: ``asked`` (every certID looked up, decoded), ``replaces_seen`` (each ``replaces``
    in a newOrder payload, in arrival order) and ``new_orders`` (every newOrder payload, decoded), counting only
    the newOrder requests Pebble accepted (201): one it refused, e.g. for a bad nonce (5 % by default), made no
    order, and the client sends it again.
    """

    def __init__(self, pebble: PebbleServer, *, retry_after: int = DEFAULT_RETRY_AFTER) -> None:
        self.pebble = pebble
        self.retry_after = retry_after
        self.port = free_port()
        self.base_url = f"https://{HOST}:{self.port}"
        upstream = urlsplit(pebble.directory_url)
        self._upstream_host = upstream.hostname or HOST
        self._upstream_port = upstream.port or 443
        self.upstream_base = f"{upstream.scheme}://{upstream.netloc}"
        self._directory_path = upstream.path
        self.directory_url = f"{self.base_url}{upstream.path}"
        self.renewal_info_url = f"{self.base_url}{RENEWAL_INFO_PATH}"
        self.asked: list[AskedCertID] = []
        self.replaces_seen: list[str] = []
        self.new_orders: list[dict[str, Any]] = []
        self._windows: dict[int | None, Window] = {}
        self._lock = threading.Lock()
        self.upstream_context = ssl.create_default_context(cafile=str(pebble.ca_bundle))
        self._new_order_path = urlsplit(self._upstream_json(self._directory_path)["newOrder"]).path

        # Pebble's own listener certificate (SAN 127.0.0.1, signed by ca_bundle): one trust file for both.
        workdir = Path(pebble.workdir)
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_context.load_cert_chain(workdir / "fullchain.pem", workdir / "privkey.pem")
        self._server = ThreadingHTTPServer((HOST, self.port), self._handler_class())
        self._server.daemon_threads = True
        # Handshake in the per-connection thread, not in accept(), so one stalled client cannot block the rest.
        self._server.socket = server_context.wrap_socket(
            self._server.socket, server_side=True, do_handshake_on_connect=False
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="ari-front", daemon=True)
        self._thread.start()
        if not tcp_open(self.port):
            self.stop()
            raise RuntimeError(f"ARI front did not start on {self.base_url}")

    # --- what tests control -------------------------------------------------------------------------------

    def set_window(
        self,
        serial: int | None,
        start: dt.datetime,
        end: dt.datetime,
        explanation_url: str | None = None,
    ) -> None:
        """The window answered for one serial, or for every serial without its own when serial is None."""
        if end <= start:
            raise ValueError("RFC 9773 requires end after start")
        with self._lock:
            self._windows[serial] = Window(start, end, explanation_url)

    def window_for(self, serial: int) -> Window:
        """Without a window set, the front cannot know the certificate's life, so it says "soon, not now"."""
        with self._lock:
            window = self._windows.get(serial) or self._windows.get(None)
        if window is not None:
            return window
        now = dt.datetime.now(dt.UTC)
        return Window(now + dt.timedelta(hours=1), now + dt.timedelta(hours=2))

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    # --- proxying -------------------------------------------------------------------------------------------

    def _upstream_json(self, path: str) -> dict[str, Any]:
        conn = http.client.HTTPSConnection(
            self._upstream_host, self._upstream_port, context=self.upstream_context, timeout=_UPSTREAM_TIMEOUT
        )
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"Pebble {path}: HTTP {resp.status}: {body[:200]!r}")
            data: dict[str, Any] = json.loads(body)
            return data
        finally:
            conn.close()

    def _rewrite(self, value: str) -> str:
        return value.replace(self.upstream_base, self.base_url)

    def _note_new_order(self, body: bytes) -> None:
        """Read the flattened JWS payload; never alter it, since the client's signature covers it."""
        try:
            payload = json.loads(b64url_decode(json.loads(body)["payload"]))
        except (ValueError, KeyError, TypeError):
            return  # Pebble answers malformed requests itself; the front only records.
        if not isinstance(payload, dict):
            return
        with self._lock:
            self.new_orders.append(payload)
            if "replaces" in payload:
                self.replaces_seen.append(payload["replaces"])

    def _renewal_info(self, cert_id_text: str) -> tuple[int, dict[str, str], bytes]:
        try:
            asked = parse_cert_id(cert_id_text)
        except ValueError as exc:
            problem = {"type": "urn:ietf:params:acme:error:malformed", "detail": str(exc), "status": 400}
            return 400, {"Content-Type": "application/problem+json"}, json.dumps(problem).encode()
        with self._lock:
            self.asked.append(asked)
        window = self.window_for(asked.serial)
        doc: dict[str, Any] = {"suggestedWindow": {"start": _rfc3339(window.start), "end": _rfc3339(window.end)}}
        if window.explanation_url:
            doc["explanationURL"] = window.explanation_url
        headers = {"Content-Type": "application/json", "Retry-After": str(self.retry_after)}
        return 200, headers, json.dumps(doc).encode()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as ACME clients expect; every reply has a Content-Length
            upstream: http.client.HTTPSConnection | None = None

            def log_message(self, format: str, *args: Any) -> None:
                """Silent: pytest captures stderr, and per-request lines would drown real failures."""

            def do_GET(self) -> None:
                self._serve()

            def do_HEAD(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = urlsplit(self.path).path
                if self.command in ("GET", "HEAD") and path.startswith(RENEWAL_INFO_PATH + "/"):
                    status, headers, out = front._renewal_info(path[len(RENEWAL_INFO_PATH) + 1 :])
                    self._reply(status, list(headers.items()), out)
                    return
                try:
                    status, headers_list, out = self._forward(body)
                except (OSError, http.client.HTTPException) as exc:
                    problem = {"type": "about:blank", "detail": f"ARI front: Pebble unreachable: {exc}"}
                    self._reply(502, [("Content-Type", "application/problem+json")], json.dumps(problem).encode())
                    return
                if self.command == "POST" and path == front._new_order_path and status == 201:
                    front._note_new_order(body)
                if self.command == "GET" and path == front._directory_path and status == 200:
                    directory = json.loads(out)
                    directory["renewalInfo"] = front.renewal_info_url
                    out = json.dumps(directory, indent=2).encode()
                self._reply(status, headers_list, out)

            def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _DROP_REQUEST_HEADERS}
                headers["Accept-Encoding"] = "identity"  # bodies are rewritten as text: no gzip in between
                if body or self.command == "POST":
                    headers["Content-Length"] = str(len(body))
                # One retry on a fresh connection: Pebble may have closed the idle keep-alive one in between.
                for attempt in (1, 2):
                    if self.upstream is None:
                        self.upstream = http.client.HTTPSConnection(
                            front._upstream_host,
                            front._upstream_port,
                            context=front.upstream_context,
                            timeout=_UPSTREAM_TIMEOUT,
                        )
                    try:
                        # Host stays the client's (the front): Pebble checks the JWS url against it.
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
                    if self.command == "HEAD":
                        out = b""
                    kept = [
                        (k, front._rewrite(v) if k.lower() in ("location", "link") else v)
                        for k, v in resp.getheaders()
                        if k.lower() not in _DROP_RESPONSE_HEADERS
                    ]
                    if not out.startswith(b"-----BEGIN"):
                        out = out.replace(front.upstream_base.encode(), front.base_url.encode())
                    return resp.status, kept, out
                raise AssertionError("unreachable")

            def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD" and body:
                    self.wfile.write(body)

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    if self.upstream is not None:
                        with contextlib.suppress(OSError):
                            self.upstream.close()
                        self.upstream = None

        return Handler
