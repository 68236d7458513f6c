"""Properties that must hold for any input, found by ``hypothesis`` rather than listed by hand.

Each parser that sees operator or attacker input (durations, certificate
names, PEM bundles, chains) promises one kind of failure and no other: a
``ValueError`` (or pydantic's ``ValidationError`` for the config), never an
``OverflowError``, ``IndexError`` or a traceback from deeper down.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from certd.config.model import CertificateConfig
from certd.core.durations import MAX_DURATION, format_duration, parse_duration
from certd.pki.certs import build_chain, certs_pem, load_pem_certs
from certd.pki.keys import load_key_pem
from tests.pki import Node, make_ca, make_leaf

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- durations ------------------------------------------------------------------------------------------------------


@SETTINGS
@given(st.integers(min_value=0, max_value=int(MAX_DURATION.total_seconds())))
def test_duration_round_trip(seconds: int) -> None:
    value = timedelta(seconds=seconds)
    text = format_duration(value)
    assert parse_duration(text) == value
    assert format_duration(parse_duration(text)) == text


@SETTINGS
@given(st.timedeltas(min_value=timedelta(0), max_value=MAX_DURATION))
def test_duration_format_is_whole_seconds_of_the_value(value: timedelta) -> None:
    assert parse_duration(format_duration(value)) == timedelta(seconds=int(value.total_seconds()))


@SETTINGS
@given(st.text())
def test_duration_garbage_is_a_value_error(text: str) -> None:
    try:
        value = parse_duration(text)
    except ValueError:
        return
    assert timedelta(0) <= value <= MAX_DURATION


@SETTINGS
@given(st.from_regex(r"\A\s*(\d{1,30}(\.\d{1,10})?(ms|s|m|h|d|w)){1,6}\s*\Z"))
def test_duration_well_formed_is_parsed_or_too_long(text: str) -> None:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        assert "too long" in str(exc)
        return
    assert timedelta(0) <= value <= MAX_DURATION


@SETTINGS
@given(st.integers(min_value=int(MAX_DURATION.total_seconds()) + 1, max_value=10**400),
       st.sampled_from(["s", "m", "h", "d", "w"]))
def test_duration_huge_is_a_value_error(n: int, unit: str) -> None:
    with pytest.raises(ValueError, match="too long"):
        parse_duration(f"{n}{unit}")


# -- certificate names in the config --------------------------------------------------------------------------------

_LABEL = st.from_regex(r"\A[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
_DNS = st.builds(lambda wild, labels: ("*." if wild else "") + ".".join(labels),
                 st.booleans(), st.lists(_LABEL, min_size=1, max_size=5)).filter(lambda n: len(n) <= 253)
# A last label of digits only is no DNS name (refused, see below) unless the whole spells an IPv4 address.
_ACCEPTED = _DNS.filter(lambda n: not n.rsplit(".", 1)[-1].isdigit() or _is_ip(n))


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _names(value: object) -> list[str]:
    cfg = CertificateConfig.model_validate({"issuer": "i", "names": [value], "output_dir": "/srv/out"})
    return cfg.names


@SETTINGS
@given(_ACCEPTED)
def test_dns_names_are_accepted_and_normalized_once(name: str) -> None:
    (normal,) = _names(name)
    try:
        expected = str(ipaddress.ip_address(name))  # digits-only labels can spell an IPv4 address
    except ValueError:
        expected = name.lower()
    assert normal == expected
    assert _names(normal) == [normal]


@SETTINGS
@given(_DNS.filter(lambda n: n.rsplit(".", 1)[-1].isdigit() and not _is_ip(n)))
def test_a_name_whose_last_label_is_all_digits_is_refused(name: str) -> None:
    """Issue 19: no top-level domain is all digits; 1.2.3 is an IPv4 address written short, not a host name."""
    with pytest.raises(ValueError, match="last label is all digits"):
        _names(name)


@SETTINGS
@given(st.ip_addresses(), st.sampled_from(["compressed", "exploded", "upper"]))
def test_ip_names_are_accepted_and_normalized_once(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                                                   spelling: str) -> None:
    text = {"compressed": str(address), "exploded": address.exploded, "upper": address.exploded.upper()}[spelling]
    (normal,) = _names(text)
    assert normal == str(address)
    assert _names(normal) == [normal]


@SETTINGS
@given(st.one_of(st.text(), st.text(alphabet="abcXYZ019-.*:%_ \n"), _DNS.map(lambda n: n + ".")))
def test_any_text_is_a_name_or_a_validation_error(text: str) -> None:
    try:
        (normal,) = _names(text)
    except ValidationError:
        return
    assert _names(normal) == [normal]


@settings(max_examples=20, deadline=None)
@given(st.ip_addresses(v=6), st.text(min_size=1).filter(lambda z: "%" not in z))
def test_ipv6_zone_ids_are_not_certificate_names(address: ipaddress.IPv6Address, zone: str) -> None:
    with pytest.raises(ValidationError):
        _names(f"{address}%{zone}")


# -- PEM parsing ----------------------------------------------------------------------------------------------------

ROOT = make_ca("prop root")
INTERMEDIATES: list[Node] = []
for _i in range(3):
    INTERMEDIATES.append(make_ca(f"prop intermediate {_i + 1}", INTERMEDIATES[-1] if INTERMEDIATES else ROOT))
# LEAVES[d] hangs below d intermediates (LEAVES[0] is signed by the root itself).
LEAVES = [make_leaf((f"leaf{d}.example.test",), INTERMEDIATES[d - 1] if d else ROOT) for d in range(4)]
OTHER_ROOT = make_ca("unrelated root")
STRANGERS = [
    OTHER_ROOT,
    make_ca("unrelated intermediate", OTHER_ROOT),
    # Decoys: a real CA's name (and issuer) with another key; only a signature check tells them apart.
    *(make_ca("", OTHER_ROOT, subject=n.cert.subject) for n in INTERMEDIATES),
    make_ca("", subject=ROOT.cert.subject),
    make_ca("", ROOT, subject=INTERMEDIATES[0].cert.subject),
]
REAL = [n.cert for n in (ROOT, *INTERMEDIATES, *LEAVES, *STRANGERS)]
_PEM = [c.public_bytes(serialization.Encoding.PEM) for c in REAL]
_DER = [c.public_bytes(serialization.Encoding.DER) for c in REAL]


def _parsed_or_value_error(data: bytes, *, strict: bool) -> list[x509.Certificate] | None:
    try:
        certs = load_pem_certs(data, strict=strict)
    except ValueError:
        return None
    assert certs and all(isinstance(c, x509.Certificate) for c in certs)
    return certs


@SETTINGS
@given(st.binary(max_size=4096), st.booleans())
def test_pem_arbitrary_bytes(data: bytes, strict: bool) -> None:
    _parsed_or_value_error(data, strict=strict)


_ARMOR = st.sampled_from([b"CERTIFICATE", b"X509 CERTIFICATE", b"PRIVATE KEY"])


@SETTINGS
@given(st.lists(st.tuples(_ARMOR, st.binary(max_size=600), st.binary(max_size=40)), min_size=1, max_size=4),
       st.booleans())
def test_pem_arbitrary_bytes_in_armor(blocks: list[tuple[bytes, bytes, bytes]], strict: bool) -> None:
    data = b"".join(b"-----BEGIN %s-----\n%s-----END %s-----\n%s" % (label, base64.encodebytes(body), label, junk)
                    for label, body, junk in blocks)
    _parsed_or_value_error(data, strict=strict)


@SETTINGS
@given(st.sampled_from(range(len(_DER))), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                   min_size=1, max_size=4))
@example(which=0, flips=[(12, 1)])  # version field 1 (v2): cryptography's InvalidVersion is not a ValueError
def test_pem_corrupted_der_in_valid_armor(which: int, flips: list[tuple[int, int]]) -> None:
    der = bytearray(_DER[which])
    for pos, byte in flips:
        der[pos % len(der)] = byte
    data = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bytes(der)) + b"-----END CERTIFICATE-----\n"
    certs = _parsed_or_value_error(data, strict=True)
    if certs is not None:  # strict: every field certd reads later parses now
        (cert,) = certs
        cert.public_key()
        _ = cert.extensions, cert.subject.rfc4514_string(), cert.issuer.rfc4514_string()


def test_pem_name_attribute_of_the_wrong_type_is_a_value_error() -> None:
    """The issuer's CN as a BIT STRING: cryptography raises TypeError when the name is read."""
    der = bytearray(LEAVES[0].cert.public_bytes(serialization.Encoding.DER))
    at = bytes(der).index(b"\x06\x03\x55\x04\x03\x0c")  # the issuer's CN comes first
    der[at + 5], der[at + 7] = 0x03, 0x00
    data = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bytes(der)) + b"-----END CERTIFICATE-----\n"
    with pytest.raises(ValueError, match="issuer cannot be parsed"):
        load_pem_certs(data, strict=True)


def test_pem_duplicate_extension_is_a_value_error() -> None:
    """Two KeyUsage extensions (the SKI's OID rewritten): cryptography raises DuplicateExtension, not ValueError."""
    der = ROOT.cert.public_bytes(serialization.Encoding.DER).replace(b"\x06\x03\x55\x1d\x0e", b"\x06\x03\x55\x1d\x0f")
    data = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"
    with pytest.raises(ValueError, match="extensions cannot be parsed"):
        load_pem_certs(data, strict=True)


_JUNK = st.one_of(st.just(b""), st.text(alphabet=st.characters(codec="utf-8", exclude_characters="-")).map(str.encode),
                  st.binary().filter(lambda b: b"-----" not in b),
                  st.just(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
                  st.just(b"Bag Attributes\n    friendlyName: x\nsubject=/CN=x\n"))


@SETTINGS
@given(st.lists(st.sampled_from(range(len(_PEM))), min_size=1, max_size=6), st.data())
def test_pem_finds_every_certificate_between_junk(picks: list[int], data: st.DataObject) -> None:
    bundle = b"".join(data.draw(_JUNK) + _PEM[i] for i in picks) + data.draw(_JUNK)
    assert load_pem_certs(bundle, strict=True) == [REAL[i] for i in picks]


@SETTINGS
@given(st.one_of(st.binary(max_size=2048),
                 st.tuples(st.sampled_from([b"PRIVATE KEY", b"EC PRIVATE KEY", b"RSA PRIVATE KEY",
                                            b"ENCRYPTED PRIVATE KEY"]), st.binary(max_size=1200)).map(
                     lambda lb: b"-----BEGIN %s-----\n%s-----END %s-----\n" % (lb[0], base64.encodebytes(lb[1]),
                                                                             lb[0]))))
def test_key_parsing_arbitrary_bytes_is_a_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        load_key_pem(data)


# -- chain building -------------------------------------------------------------------------------------------------


@SETTINGS
@given(depth=st.integers(0, 3), present=st.sets(st.integers(0, 2)), with_root=st.booleans(),
       strangers=st.sets(st.sampled_from(range(len(STRANGERS)))), copies=st.booleans(), data=st.data())
def test_chain_is_the_leafs_intermediates_in_order(depth: int, present: set[int], with_root: bool,
                                                   strangers: set[int], copies: bool, data: st.DataObject) -> None:
    leaf = LEAVES[depth].cert
    given_certs = [INTERMEDIATES[i].cert for i in present]
    given_certs += [ROOT.cert] if with_root else []
    given_certs += [STRANGERS[i].cert for i in strangers]
    if copies:  # the leaf again and a duplicate (fullchain.pem given as --chain)
        given_certs += [leaf, *given_certs[:1]]
    shuffled = data.draw(st.permutations(given_certs))

    chain, dropped = build_chain(leaf, shuffled)

    expected = []
    for i in reversed(range(depth)):  # from the leaf's issuer upwards, as long as each link is there
        if i not in present:
            break
        expected.append(INTERMEDIATES[i].cert)
    assert list(chain) == expected
    assert set(dropped) == {STRANGERS[i].cert for i in strangers} | {
        INTERMEDIATES[i].cert for i in present if INTERMEDIATES[i].cert not in expected} | (
        {ROOT.cert} if with_root and len(expected) < depth else set())
    assert len(dropped) == len(set(dropped))
    assert ROOT.cert not in chain and leaf not in chain
    if len(expected) == depth:  # complete: exactly what chain.pem should hold
            assert certs_pem(chain) == b"".join(certs_pem([INTERMEDIATES[i].cert]) for i in reversed(range(depth)))
