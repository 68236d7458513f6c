"""The ARI front (tests/servers/ari.py) against the real Pebble, driven by the plain `acme` library.

certd's ARI tests trust this front to be a faithful ACME server with renewalInfo; if it mangled nonces, URLs or
JWS payloads, certd's tests would fail (or pass) for the wrong reason. So it is checked here with a client that
is not certd: a real order with real HTTP-01 through the front, the RFC 9773 answer for the issued certificate,
and a second order carrying ``replaces``.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import uuid
from collections.abc import Iterator
from typing import TypeVar

import pytest
import requests
from acme import challenges, client, crypto_util, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.json_util import field
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from tests.servers.ari import AriFront, b64url_encode, cert_id, parse_cert_id, serial_der_bytes
from tests.servers.pebble import PebbleServer
from tests.servers.raw_acme import Http01Responder, retry_bad_nonce

T = TypeVar("T")
ORDER_DEADLINE = dt.timedelta(seconds=30)


class NewOrderWithReplaces(messages.NewOrder):
    """`acme` has no `replaces` (RFC 9773 section 5) on newOrder; certd's own issuer must add it the same way."""

    replaces: str | None = field("replaces", omitempty=True)


@pytest.fixture
def http01_tokens(pebble: PebbleServer) -> Iterator[dict[str, str]]:
    """HTTP-01 answers on Pebble's validation port, bound only for this test: other tests share the port."""
    responder = Http01Responder(pebble.http01_port)
    try:
        yield responder.tokens
    finally:
        responder.stop()


def front_client(front: AriFront) -> tuple[client.ClientV2, JWKEC]:
    key = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    # Typed as bool, but handed to requests' `verify`, which takes a CA bundle path.
    net = client.ClientNetwork(key, alg=ES256, verify_ssl=str(front.pebble.ca_bundle))  # type: ignore[arg-type]
    acme = client.ClientV2(client.ClientV2.get_directory(front.directory_url, net), net)
    reg = messages.NewRegistration.from_data(terms_of_service_agreed=True)
    net.account = retry_bad_nonce(lambda: acme.new_account(reg))
    return acme, key


def signed_post(acme: client.ClientV2, url: str, obj: NewOrderWithReplaces | None) -> requests.Response:
    """The library's public ClientNetwork.post, as ClientV2 uses it (nonces from newNonce)."""
    response: requests.Response = acme.net.post(url, obj, new_nonce_url=acme.directory["newNonce"])
    return response


def new_order(acme: client.ClientV2, csr_pem: bytes, replaces: str | None) -> messages.OrderResource:
    """ClientV2.new_order, with `replaces` in the signed payload (the library cannot send it)."""
    csr = x509.load_pem_x509_csr(csr_pem)
    names = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    identifiers = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=n) for n in names]
    order = NewOrderWithReplaces(identifiers=identifiers, replaces=replaces)
    response = signed_post(acme, acme.directory["newOrder"], order)
    body = messages.Order.from_json(response.json())
    authzs = [
        messages.AuthorizationResource(body=messages.Authorization.from_json(signed_post(acme, url, None).json()),
                                       uri=url)
        for url in body.authorizations
    ]
    return messages.OrderResource(
        body=body, uri=response.headers.get("Location"), authorizations=authzs, csr_pem=csr_pem
    )


def issue(acme: client.ClientV2, key: JWKEC, tokens: dict[str, str], name: str, replaces: str | None = None) -> str:
    leaf_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    csr_pem = crypto_util.make_csr(leaf_key, [name])
    order = retry_bad_nonce(lambda: new_order(acme, csr_pem, replaces))
    for authz in order.authorizations:
        if authz.body.status == messages.STATUS_VALID:
            continue  # Pebble reuses valid authorizations half of the time
        chall = next(c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01))
        response, validation = chall.response_and_validation(key)
        tokens[chall.chall.path] = validation
        retry_bad_nonce(functools.partial(acme.answer_challenge, chall, response))
    deadline = dt.datetime.now() + ORDER_DEADLINE
    done = retry_bad_nonce(lambda: acme.poll_and_finalize(order, deadline))
    fullchain: str = done.fullchain_pem
    return fullchain


def leaf_cert_id(cert: x509.Certificate) -> str:
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki is not None, "Pebble's leaves carry an AKI keyIdentifier; ARI cannot work without it"
    return f"{b64url_encode(aki)}.{b64url_encode(serial_der_bytes(cert.serial_number))}"


def test_cert_id_encoding_follows_rfc9773() -> None:
    # RFC 9773 section 4.1 example: keyIdentifier 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:01:C8:D4,
    # serial 00:87:65:43:21 (a leading zero, since the top bit of 0x87 is set).
    aki = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
    assert cert_id(aki, 0x87654321) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
    asked = parse_cert_id("aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE")
    assert (asked.key_identifier, asked.serial) == (aki, 0x87654321)
    for bad in ("", "nodot", "a.b.c", "aYhba4dGQEHhs3uEe6CuLN4ByNQ.h2VDIQ", "aYhb=.AIdlQyE", "x.AAAB"):
        with pytest.raises(ValueError):
            parse_cert_id(bad)


def test_directory_through_front_adds_renewal_info_and_keeps_client_on_front(ari_front: AriFront) -> None:
    verify = str(ari_front.pebble.ca_bundle)
    resp = requests.get(ari_front.directory_url, verify=verify, timeout=10)
    assert resp.status_code == 200
    directory = resp.json()
    assert directory["renewalInfo"] == f"{ari_front.base_url}/renewal-info"
    urls = [v for k, v in directory.items() if k != "meta"]
    assert all(u.startswith(ari_front.base_url + "/") for u in urls), urls
    head = requests.head(directory["newNonce"], verify=verify, timeout=10)
    assert head.headers.get("Replay-Nonce")
    bad = requests.get(f"{directory['renewalInfo']}/not-a-cert-id", verify=verify, timeout=10)
    assert bad.status_code == 400
    assert bad.json()["type"] == "urn:ietf:params:acme:error:malformed"
    assert ari_front.asked == []


@pytest.mark.slow
def test_renewal_info_and_replaces_through_front(ari_front: AriFront, http01_tokens: dict[str, str]) -> None:
    ari_front.retry_after = 1234
    acme, key = front_client(ari_front)
    assert acme.directory["renewalInfo"] == ari_front.renewal_info_url
    name = f"ari-{uuid.uuid4().hex[:10]}.example.test"

    first_pem = issue(acme, key, http01_tokens, name)
    first = x509.load_pem_x509_certificates(first_pem.encode())[0]
    first_id = leaf_cert_id(first)
    verify = str(ari_front.pebble.ca_bundle)

    # Without a window set, a serial gets "soon, not now": one to two hours ahead.
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    resp = requests.get(f"{ari_front.renewal_info_url}/{first_id}", verify=verify, timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Retry-After"] == "1234"
    default = resp.json()["suggestedWindow"]
    default_start = dt.datetime.fromisoformat(default["start"])
    default_end = dt.datetime.fromisoformat(default["end"])
    assert before + dt.timedelta(minutes=59) <= default_start <= before + dt.timedelta(minutes=61)
    assert default_end - default_start == dt.timedelta(hours=1)
    aki = first.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert [(a.cert_id, a.key_identifier, a.serial) for a in ari_front.asked] == [(first_id, aki, first.serial_number)]

    # A window the test chose, for this serial only.
    start = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    end = start + dt.timedelta(hours=7)
    ari_front.set_window(first.serial_number, start, end, explanation_url="https://ari.example.test/why")
    resp = requests.get(f"{ari_front.renewal_info_url}/{first_id}", verify=verify, timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Retry-After"] == "1234"
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json() == {
        "suggestedWindow": {"start": "2030-01-02T03:04:05Z", "end": "2030-01-02T10:04:05Z"},
        "explanationURL": "https://ari.example.test/why",
    }

    # The `acme` library's own ARI lookup computes the same certID and lands inside the window.
    renew_at, _next_check = acme.renewal_time(first_pem.encode())
    assert renew_at is not None and start <= renew_at <= end
    assert len(ari_front.asked) == 3 and ari_front.asked[-1].cert_id == first_id

    # The renewal order says which certificate it replaces; Pebble 2.4 ignores the field and issues anyway.
    assert ari_front.replaces_seen == []
    second_pem = issue(acme, key, http01_tokens, name, replaces=first_id)
    second = x509.load_pem_x509_certificates(second_pem.encode())[0]
    assert second.serial_number != first.serial_number
    # One order each; a badNonce retry (Pebble rejects 5% of nonces) re-sends the same body through the front.
    assert ari_front.replaces_seen and set(ari_front.replaces_seen) == {first_id}
    assert [r for r, _ in itertools.groupby(o.get("replaces") for o in ari_front.new_orders)] == [None, first_id]
