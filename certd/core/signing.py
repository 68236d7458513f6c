"""The one signed-request scheme, shared by the HTTP API (verifying) and the webhook target (signing).

A signature binds everything a request does, not just its body::

    X-Certd-Timestamp: <unix seconds, ASCII digits>
    X-Certd-Signature: v1=<hex HMAC-SHA256(key, message)>
    message = label + "\\n" + METHOD + "\\n" + path-with-query + "\\n" + timestamp + "\\n" + raw body

``label`` says who may accept it: ``certd-api-v1`` for calls to certd's own
API, ``certd-webhook-v1`` for the events certd sends. Because the label,
method and path are inside the MAC, a signature made for ``POST
/v1/certificates/a/renew`` is worthless for ``/b/renew``, for ``/a/deploy``,
with another query, and a webhook receiver holding the same secret cannot
replay a delivery against certd's API. The path is the request target as
sent on the wire (percent-encoding untouched); an empty query string is
the same as none, because the ASGI server cannot tell them apart.

The key is the token or secret file's content without surrounding
whitespace. Timestamps are accepted within ``WINDOW`` seconds either way;
a verifier must also remember each accepted signature until its timestamp
leaves the window (the API keeps them in the database:
``inventory/signatures.py``) so that it is accepted once only. The older
``sha256=<HMAC(timestamp + "." + body)>`` form bound neither method nor
path, so it is refused, not upgraded.

This module is pure (no I/O, no clock of its own): callers pass ``now``.
"""

from __future__ import annotations

import hashlib
import hmac
import re

__all__ = [
    "API_LABEL",
    "WEBHOOK_LABEL",
    "WINDOW",
    "BadSignature",
    "message",
    "sign",
    "signed_headers",
    "verify",
]

API_LABEL = "certd-api-v1"
WEBHOOK_LABEL = "certd-webhook-v1"
WINDOW = 300  # seconds either side of the verifier's clock

_STAMP = re.compile(r"[0-9]{1,12}")  # ASCII only: str.isdigit() also accepts superscripts and other scripts
_SIGNATURE = re.compile(r"v1=([0-9a-fA-F]{64})")
_METHOD = re.compile(r"[A-Z]{1,16}")


class BadSignature(Exception):
    """A signed request that must be refused; the message describes only the request, so the caller may see it."""


def _ascii(value: str | bytes, what: str) -> bytes:
    """Paths are signed as sent; a non-ASCII str would be percent-encoded by the client and never match."""
    if isinstance(value, bytes):
        return value
    try:
        return value.encode("ascii")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} must be ASCII as sent on the wire (percent-encode it first)") from exc


def message(label: str, method: str, path: str | bytes, timestamp: str, body: bytes) -> bytes:
    """The exact bytes under the MAC (see the module docstring)."""
    if not _METHOD.fullmatch(method):
        raise ValueError(f"method {method!r} is not an upper-case HTTP method")
    if not _STAMP.fullmatch(timestamp):
        raise ValueError("timestamp must be 1 to 12 ASCII digits")
    return b"\n".join((label.encode("ascii"), method.encode("ascii"), _ascii(path, "path"),
                       timestamp.encode("ascii"), body))


def sign(key: str, label: str, method: str, path: str | bytes, timestamp: int | str, body: bytes) -> str:
    """The ``X-Certd-Signature`` value: ``v1=`` and 64 lowercase hex digits."""
    mac = hmac.new(key.strip().encode(), message(label, method, path, str(timestamp), body), hashlib.sha256)
    return "v1=" + mac.hexdigest()


def signed_headers(key: str, label: str, method: str, path: str | bytes, body: bytes, now: float) -> dict[str, str]:
    """Both headers for one request signed at ``now`` (unix seconds)."""
    stamp = str(int(now))
    return {"X-Certd-Timestamp": stamp, "X-Certd-Signature": sign(key, label, method, path, stamp, body)}


def verify(
    key: str,
    label: str,
    method: str,
    path: str | bytes,
    timestamp: str,
    signature: str,
    body: bytes,
    now: float,
) -> tuple[str, int]:
    """Check one signed request; return ``(canonical signature, timestamp)`` or raise ``BadSignature``.

    The canonical signature (lower-case hex) is what a replay cache must
    remember: the hex digits are case-insensitive, so remembering the header
    as sent would let ``V1=ABC…`` replay ``v1=abc…``. The caller remembers it
    until ``timestamp + WINDOW``.
    """
    if signature.startswith("sha256="):
        raise BadSignature("the sha256= signature form is no longer accepted (it bound neither method nor path)")
    match = _SIGNATURE.fullmatch(signature)
    if match is None:
        raise BadSignature("X-Certd-Signature is not v1=<64 hex digits>")
    if not _STAMP.fullmatch(timestamp):
        raise BadSignature("X-Certd-Timestamp is not 1 to 12 ASCII digits")
    if abs(now - int(timestamp)) > WINDOW:
        raise BadSignature(f"X-Certd-Timestamp is more than {WINDOW}s away from this host's clock")
    try:
        expected = sign(key, label, method, path, timestamp, body)
    except ValueError as exc:
        raise BadSignature(str(exc)) from exc
    given = "v1=" + match.group(1).lower()
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise BadSignature("signature does not match (wrong key, or signed for another label, method, path "
                           "or body)")
    return expected, int(timestamp)
