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
import datetime as dt
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.servers.http_fault_proxy import HttpFaultProxy, Request, Response, Rule
from tests.servers.pebble import PebbleServer

RENEWAL_INFO_PATH = "/renewal-info"
DEFAULT_RETRY_AFTER = 3600
NEW_ORDER_PATH = "/order-plz"  # Pebble's newOrder, the same on every Pebble


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

    Built on the ``HttpFaultProxy`` (which forwards everything else to Pebble unchanged), with three rules of
    its own: ``renewalInfo`` served here, the directory rewritten to name it, and each newOrder payload read.

    Records, for assertions: ``asked`` (every certID looked up, decoded), ``replaces_seen`` (each ``replaces``
    in a newOrder payload, in arrival order) and ``new_orders`` (every newOrder payload, decoded), counting only
    the newOrder requests Pebble accepted (201): one it refused, e.g. for a bad nonce (5 % by default), made no
    order, and the client sends it again.
    """

    def __init__(self, pebble: PebbleServer, *, retry_after: int = DEFAULT_RETRY_AFTER) -> None:
        self.pebble = pebble
        self.retry_after = retry_after
        self._proxy = HttpFaultProxy(pebble.directory_url, Path(pebble.workdir))
        self.port = self._proxy.port
        self.base_url = self._proxy.url
        directory_path = urlsplit(pebble.directory_url).path
        self.directory_url = f"{self.base_url}{directory_path}"
        self.renewal_info_url = f"{self.base_url}{RENEWAL_INFO_PATH}"
        self.asked: list[AskedCertID] = []
        self.replaces_seen: list[str] = []
        self.new_orders: list[dict[str, Any]] = []
        self._windows: dict[int | None, Window] = {}
        self._lock = threading.Lock()
        self._proxy.add(Rule("serve", RENEWAL_INFO_PATH + "/", serve=self._renewal_info))
        self._proxy.add(Rule("rewrite", directory_path, method="GET", rewrite=self._with_renewal_info))
        self._proxy.add(Rule("rewrite", NEW_ORDER_PATH, method="POST", rewrite=self._note_new_order))

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
        self._proxy.close()

    # --- the rules ------------------------------------------------------------------------------------------

    def _with_renewal_info(self, request: Request, response: Response) -> Response:
        status, headers, body = response
        if status != 200:
            return response
        directory = json.loads(body)
        directory["renewalInfo"] = self.renewal_info_url
        return status, headers, json.dumps(directory, indent=2).encode()

    def _note_new_order(self, request: Request, response: Response) -> Response:
        """Read the flattened JWS payload; never alter it, since the client's signature covers it."""
        if response[0] != 201:
            return response
        try:
            payload = json.loads(b64url_decode(json.loads(request[2])["payload"]))
        except (ValueError, KeyError, TypeError):
            return response  # Pebble answers malformed requests itself; the front only records.
        if isinstance(payload, dict):
            with self._lock:
                self.new_orders.append(payload)
                if "replaces" in payload:
                    self.replaces_seen.append(payload["replaces"])
        return response

    def _renewal_info(self, request: Request) -> Response:
        try:
            asked = parse_cert_id(request[1][len(RENEWAL_INFO_PATH) + 1 :])
        except ValueError as exc:
            problem = {"type": "urn:ietf:params:acme:error:malformed", "detail": str(exc), "status": 400}
            return 400, [("Content-Type", "application/problem+json")], json.dumps(problem).encode()
        with self._lock:
            self.asked.append(asked)
        window = self.window_for(asked.serial)
        doc: dict[str, Any] = {"suggestedWindow": {"start": _rfc3339(window.start), "end": _rfc3339(window.end)}}
        if window.explanation_url:
            doc["explanationURL"] = window.explanation_url
        headers = [("Content-Type", "application/json"), ("Retry-After", str(self.retry_after))]
        return 200, headers, json.dumps(doc).encode()
