"""Keys, CSRs and the ``check`` step, with certificates from the real local CA."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certd.config.model import LocalCAIssuerConfig
from certd.errors import CheckFailed, IssuerError
from certd.issuers.base import IssueRequest
from certd.issuers.local_ca import LocalCA
from certd.pki.certs import cert_names
from certd.pki.keys import KeyType, build_csr, generate_key, key_type_of
from certd.pki.x509check import CheckReason, Expectations, check_certificate
from tests.conftest import FakeClock

NAMES = ("a.example.test", "192.0.2.7")


def make_ca(path: Path, key: KeyType = KeyType.ECDSA_P256) -> LocalCA:
    return LocalCA("local", LocalCAIssuerConfig(type="local-ca", dir=path, key=key))


def issue(ca: LocalCA, key_type: KeyType = KeyType.ECDSA_P256, names: tuple[str, ...] = NAMES,
          lifetime: timedelta = timedelta(days=30)):  # type: ignore[no-untyped-def]
    key = generate_key(key_type)
    issued = ca.issue(IssueRequest("c", names, key_type, build_csr(key, names), lifetime))
    return key, issued


@pytest.mark.parametrize("key_type", list(KeyType))
def test_every_key_type_issues_and_checks(tmp_path: Path, key_type: KeyType) -> None:
    ca = make_ca(tmp_path / "ca")
    key, issued = issue(ca, key_type)
    assert key_type_of(key) is key_type
    assert cert_names(issued.leaf) == ["a.example.test", "192.0.2.7"]
    warnings = check_certificate(issued.leaf, issued.chain, key,
                                 Expectations(NAMES, key_type, tuple(ca.roots())), datetime.now(UTC))
    assert warnings == []


def test_local_ca_files_are_private_and_created_once(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    ca.roots()
    for name in ("root.key", "intermediate.key"):
        assert (tmp_path / "ca" / name).stat().st_mode & 0o777 == 0o600
    again = make_ca(tmp_path / "ca")
    assert again.roots()[0] == ca.roots()[0]


def _expect(ca: LocalCA, **kw: object) -> Expectations:
    base: dict[str, object] = dict(names=NAMES, key_type=KeyType.ECDSA_P256, roots=tuple(ca.roots()))
    base.update(kw)
    return Expectations(**base)  # type: ignore[arg-type]


def test_key_mismatch(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    _, issued = issue(ca)
    other = generate_key(KeyType.ECDSA_P256)
    with pytest.raises(CheckFailed) as info:
        check_certificate(issued.leaf, issued.chain, other, _expect(ca), datetime.now(UTC))
    assert info.value.reason == CheckReason.KEY_MISMATCH


def test_wrong_names(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    key, issued = issue(ca, names=("a.example.test",))
    with pytest.raises(CheckFailed, match=r"does not cover 192\.0\.2\.7") as info:
        check_certificate(issued.leaf, issued.chain, key, _expect(ca), datetime.now(UTC))
    assert info.value.reason == CheckReason.NAMES


def test_chain_must_verify_to_pinned_roots(tmp_path: Path) -> None:
    ca, stranger = make_ca(tmp_path / "ca"), make_ca(tmp_path / "other")
    key, issued = issue(ca)
    with pytest.raises(CheckFailed) as info:
        check_certificate(issued.leaf, issued.chain, key, _expect(ca, roots=tuple(stranger.roots())),
                          datetime.now(UTC))
    assert info.value.reason == CheckReason.CHAIN


def test_without_roots_link_by_link_with_warning(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    key, issued = issue(ca)
    warnings = check_certificate(issued.leaf, issued.chain, key, _expect(ca, roots=None), datetime.now(UTC))
    assert "no roots are pinned" in warnings[0]
    stranger = make_ca(tmp_path / "other")
    with pytest.raises(CheckFailed, match="chain is broken"):
        check_certificate(issued.leaf, tuple(stranger.ca_chain()[:1]), key, _expect(ca, roots=None),
                          datetime.now(UTC))


def test_too_little_validity(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    key, issued = issue(ca, lifetime=timedelta(days=2))
    with pytest.raises(CheckFailed, match="needs at least 30d") as info:
        check_certificate(issued.leaf, issued.chain, key, _expect(ca, min_remaining=timedelta(days=30)),
                          datetime.now(UTC))
    assert info.value.reason == CheckReason.VALIDITY


def test_key_type_as_asked(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    key, issued = issue(ca, KeyType.ECDSA_P384)
    with pytest.raises(CheckFailed) as info:
        check_certificate(issued.leaf, issued.chain, key, _expect(ca), datetime.now(UTC))
    assert info.value.reason == CheckReason.KEY_TYPE


def test_ip_names_compare_as_addresses(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    key, issued = issue(ca, names=("a.example.test", "2001:db8::1"))
    assert cert_names(issued.leaf) == ["a.example.test", "2001:db8::1"]
    expect = _expect(ca, names=("A.example.test", "2001:DB8::0001"))
    assert check_certificate(issued.leaf, issued.chain, key, expect, datetime.now(UTC)) == []


def test_local_ca_refuses_a_lifetime_past_its_intermediate(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    ca = LocalCA("local", LocalCAIssuerConfig(type="local-ca", dir=tmp_path / "ca"), clock=clock)
    ca.roots()  # created now: its intermediate is valid for 1825d
    clock.advance(timedelta(days=1500))
    _, issued = issue(ca, lifetime=timedelta(days=300))
    assert issued.leaf.not_valid_after_utc == clock.now() + timedelta(days=300)
    with pytest.raises(IssuerError, match=r"cannot sign for 400d: its intermediate expires 2030-12-31") as info:
        issue(ca, lifetime=timedelta(days=400))
    assert (info.value.reason, info.value.retryable) == ("LifetimeTooLong", False)
