"""ACME faults for the ``HttpFaultProxy`` in front of Pebble: where each phase's requests go, and what a CA
says when it misbehaves (RFC 8555 problem documents, as Let's Encrypt and Pebble send them).
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

from cryptography import x509

from tests.servers import tlsutil
from tests.servers.http_fault_proxy import HttpFaultProxy, Request, Response, Rule
from tests.servers.pebble import PebbleServer

ACME_ERROR = "urn:ietf:params:acme:error:"


class Phase(StrEnum):
    """A renewal's ACME requests, by the Pebble path each goes to (the same on every Pebble)."""

    ACCOUNT = "/sign-me-up"
    ORDER = "/order-plz"
    AUTHZ = "/authZ/"
    CHALLENGE = "/chalZ/"
    FINALIZE = "/finalize-order/"
    POLL = "/my-order/"
    DOWNLOAD = "/certZ/"


NONCE_PATH = "/nonce-plz"


def proxy_for(pebble: PebbleServer) -> HttpFaultProxy:
    return HttpFaultProxy(pebble.directory_url, Path(pebble.workdir), nonce_path=NONCE_PATH)


def problem(kind: str, detail: str, status: int) -> dict[str, object]:
    return {"type": ACME_ERROR + kind, "detail": detail, "status": status}


def server_error(phase: Phase, **when: object) -> Rule:
    return Rule("answer", phase, method="POST", status=503,
                body={"type": "about:blank", "detail": "fault proxy: the CA is overloaded", "status": 503},
                **when)  # type: ignore[arg-type]


def rate_limited(phase: Phase, retry_after: int = 2, **when: object) -> Rule:
    return Rule("answer", phase, method="POST", status=429, headers={"Retry-After": str(retry_after)},
                body=problem("rateLimited", "fault proxy: too many requests", 429), **when)  # type: ignore[arg-type]


def bad_nonce(phase: Phase, **when: object) -> Rule:
    return Rule("answer", phase, method="POST", status=400,
                body=problem("badNonce", "fault proxy: JWS has an invalid anti-replay nonce", 400),
                **when)  # type: ignore[arg-type]


def account_gone(phase: Phase, **when: object) -> Rule:
    return Rule("answer", phase, method="POST", status=400,
                body=problem("accountDoesNotExist", "fault proxy: no account for this key", 400),
                **when)  # type: ignore[arg-type]


def _order_processing(request: Request, response: Response) -> Response:
    status, headers, body = response
    try:
        order = json.loads(body)
    except ValueError:
        return response
    if isinstance(order, dict) and order.get("status") == "valid":
        order["status"] = "processing"
        order.pop("certificate", None)
        headers = [(k, v) for k, v in headers if k.lower() != "retry-after"] + [("Retry-After", "1")]
        return status, headers, json.dumps(order).encode()
    return response


def stuck_processing(**when: object) -> list[Rule]:
    """An order that stays ``processing`` after finalize: both answers that could say ``valid`` are changed."""
    return [Rule("rewrite", Phase.FINALIZE, method="POST", rewrite=_order_processing, **when),  # type: ignore[arg-type]
            Rule("rewrite", Phase.POLL, method="POST", rewrite=_order_processing, **when)]  # type: ignore[arg-type]


def _another_key(request: Request, response: Response) -> Response:
    """The chain the CA sent, its leaf replaced by one for the same names and a key the client never had."""
    status, headers, body = response
    if status != 200:
        return response
    certs = x509.load_pem_x509_certificates(body)
    leaf = certs[0]
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)
    stranger = tlsutil.issue_server_cert(tlsutil.make_ca("fault proxy CA"), dns_names=names, ips=())
    rest = b"".join(c.public_bytes(tlsutil.serialization.Encoding.PEM) for c in certs[1:])
    return status, headers, stranger.cert_pem + rest


def wrong_certificate(**when: object) -> Rule:
    return Rule("rewrite", Phase.DOWNLOAD, method="POST", rewrite=_another_key, **when)  # type: ignore[arg-type]
