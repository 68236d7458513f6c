"""``certd import`` given what an attacker or an unlucky operator would give it, through the real CLI.

Endless or huge inputs are refused without reading them, each input is
blamed by its own option and file, and the published chain is the one that
signs the leaf, whatever else was in the bundle.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from certd.config.model import LocalCAIssuerConfig
from certd.issuers.base import Issued, IssueRequest
from certd.issuers.local_ca import LocalCA
from certd.pki.certs import certs_pem, load_pem_certs, serial_hex
from certd.pki.keys import KeyType, PrivateKey, build_csr, generate_key, key_pem
from tests.conftest import LOCAL_CA_CONFIG, WriteConfig
from tests.pki import make_ca
from tests.test_cli import certd

NAMES = ("lb.example.test", "www.example.test")


@pytest.fixture
def cfg(write_config: WriteConfig, sqlite_url: str) -> Path:
    return write_config(LOCAL_CA_CONFIG, db_url=sqlite_url)


@pytest.fixture
def issued(tmp_path: Path) -> tuple[Issued, PrivateKey]:
    """A certificate for ``edge`` from the config's own local CA (same directory), not yet imported."""
    ca = LocalCA("local", LocalCAIssuerConfig(type="local-ca", dir=tmp_path / "local-ca"))
    key = generate_key(KeyType.ECDSA_P256)
    return ca.issue(IssueRequest("edge", NAMES, KeyType.ECDSA_P256, build_csr(key, NAMES))), key


@pytest.fixture
def files(tmp_path: Path, issued: tuple[Issued, PrivateKey]) -> dict[str, Path]:
    leaf_and_chain, key = issued
    out = {"cert": tmp_path / "in/cert.pem", "chain": tmp_path / "in/chain.pem", "key": tmp_path / "in/key.pem"}
    out["cert"].parent.mkdir()
    out["cert"].write_bytes(certs_pem([leaf_and_chain.leaf]))
    out["chain"].write_bytes(certs_pem(leaf_and_chain.chain))
    out["key"].write_bytes(key_pem(key))
    return out


def _import(cfg: Path, files: dict[str, Path], **override: str) -> tuple[int, str, str]:
    args = ["import", "edge"]
    for part in ("cert", "key", "chain"):
        value = override.get(part, str(files[part]))
        if value:
            args += [f"--{part}", value]
    proc = certd(*args, "--json", config=cfg, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout, proc.stderr


def _nothing_imported(cfg: Path, tmp_path: Path) -> None:
    history = json.loads(certd("history", "edge", "--json", config=cfg, check=True).stdout)
    assert history["versions"] == []
    assert not (tmp_path / "out/edge").exists()


@pytest.mark.parametrize("part", ["cert", "key", "chain"])
def test_dev_zero_is_refused_without_reading_it(cfg: Path, files: dict[str, Path], tmp_path: Path,
                                                part: str) -> None:
    code, _, stderr = _import(cfg, files, **{part: "/dev/zero"})
    assert code == 2
    assert f"--{part} /dev/zero: a character device, not a regular file" in stderr
    _nothing_imported(cfg, tmp_path)


@pytest.mark.parametrize("part", ["cert", "key"])
def test_a_fifo_nobody_writes_to_does_not_hang(cfg: Path, files: dict[str, Path], tmp_path: Path,
                                               part: str) -> None:
    fifo = tmp_path / "fifo.pem"
    os.mkfifo(fifo)
    code, _, stderr = _import(cfg, files, **{part: str(fifo)})  # certd() times out (fails) after 60s if it blocks
    assert code == 2 and f"--{part} {fifo}: a FIFO, not a regular file" in stderr


def test_a_directory_is_refused(cfg: Path, files: dict[str, Path], tmp_path: Path) -> None:
    code, _, stderr = _import(cfg, files, chain=str(tmp_path))
    assert code == 2 and "--chain" in stderr and str(tmp_path) in stderr


@pytest.mark.parametrize(("part", "size", "limit"), [("cert", 5 << 20, "1.0 MiB"), ("chain", 5 << 20, "1.0 MiB"),
                                                     ("key", 100 << 10, "64 KiB")])
def test_huge_files_are_refused(cfg: Path, files: dict[str, Path], tmp_path: Path, part: str, size: int,
                                limit: str) -> None:
    big = tmp_path / "big.pem"
    with open(big, "wb") as fh:  # a real PEM first: size, not content, is what refuses it
        fh.write(files[part].read_bytes())
        fh.write(b"\n" * (size - fh.tell()))
    code, _, stderr = _import(cfg, files, **{part: str(big)})
    assert code == 2 and f"--{part} {big}: too large" in stderr and f"at most {limit}" in stderr
    _nothing_imported(cfg, tmp_path)


def test_missing_file_is_named(cfg: Path, files: dict[str, Path], tmp_path: Path) -> None:
    code, _, stderr = _import(cfg, files, key=str(tmp_path / "nope.pem"))
    assert code == 2 and f"--key {tmp_path / 'nope.pem'}: cannot read: No such file or directory" in stderr


def _armored(der: bytes) -> bytes:
    return b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"


def _broken_public_key(pem: bytes) -> bytes:
    """Valid PEM, valid outer DER, a public key off its curve: parses lazily, fails when the key is read."""
    cert = load_pem_certs(pem)[0]
    der = bytearray(cert.public_bytes(serialization.Encoding.DER))
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    at = bytes(der).index(spki) + len(spki) - 1
    der[at] ^= 0x01
    return _armored(bytes(der))


@pytest.mark.parametrize("part", ["cert", "chain"])
@pytest.mark.parametrize("damage", ["public key", "truncated", "base64"])
def test_corrupt_der_in_valid_armor_is_blamed_on_its_own_option(cfg: Path, files: dict[str, Path], tmp_path: Path,
                                                                part: str, damage: str) -> None:
    pem = files[part].read_bytes()
    bad = tmp_path / f"bad-{part}.pem"
    if damage == "public key":
        bad.write_bytes(_broken_public_key(pem))
    elif damage == "truncated":
        bad.write_bytes(_armored(load_pem_certs(pem)[0].public_bytes(serialization.Encoding.DER)[:-40]))
    else:
        bad.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    code, _, stderr = _import(cfg, files, **{part: str(bad)})
    assert code == 2, stderr
    assert f"--{part} {bad}: malformed PEM certificate" in stderr
    assert "--key" not in stderr
    if damage == "public key":
        assert "public key cannot be parsed" in stderr
    _nothing_imported(cfg, tmp_path)


def test_a_key_that_is_not_a_key(cfg: Path, files: dict[str, Path], tmp_path: Path) -> None:
    code, _, stderr = _import(cfg, files, key=str(files["cert"]))
    assert code == 2 and f"--key {files['cert']}: holds a certificate, not a private key" in stderr
    junk = tmp_path / "junk.key"
    junk.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    code, _, stderr = _import(cfg, files, key=str(junk))
    assert code == 2 and f"--key {junk}: not a PEM private key" in stderr
    _nothing_imported(cfg, tmp_path)


def test_an_encrypted_key_says_so(cfg: Path, files: dict[str, Path], issued: tuple[Issued, PrivateKey],
                                  tmp_path: Path) -> None:
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        locked = tmp_path / "locked.key"
        locked.write_bytes(issued[1].private_bytes(serialization.Encoding.PEM, fmt,
                                                   serialization.BestAvailableEncryption(b"secret")))
        code, _, stderr = _import(cfg, files, key=str(locked))
        assert code == 2 and f"--key {locked}: the private key is encrypted: certd needs it unencrypted" in stderr


def test_a_key_of_another_certificate_is_a_key_mismatch(cfg: Path, files: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    other.write_bytes(key_pem(generate_key(KeyType.ECDSA_P256)))
    code, _, stderr = _import(cfg, files, key=str(other))
    assert code == 1 and "import edge: the certificate's public key does not match the private key" in stderr
    assert "--key" not in stderr
    _nothing_imported(cfg, tmp_path)


def test_unrelated_ca_ahead_of_the_intermediate_is_dropped_with_a_warning(
        cfg: Path, files: dict[str, Path], issued: tuple[Issued, PrivateKey], tmp_path: Path) -> None:
    leaf, (intermediate,) = issued[0].leaf, issued[0].chain
    root = LocalCA("local", LocalCAIssuerConfig(type="local-ca", dir=tmp_path / "local-ca")).roots()[0]
    unrelated = make_ca("Unrelated Root CA")
    decoy = make_ca("", unrelated, subject=intermediate.subject)  # the intermediate's name, another key
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(certs_pem([unrelated.cert, decoy.cert, intermediate, root]))

    code, stdout, stderr = _import(cfg, files, chain=str(bundle))

    assert code == 0, stderr
    assert json.loads(stdout)["results"][0]["outcome"] == "imported"
    out = tmp_path / "out/edge"
    assert load_pem_certs((out / "fullchain.pem").read_bytes()) == [leaf, intermediate]
    assert load_pem_certs((out / "chain.pem").read_bytes()) == [intermediate]
    warnings = [json.loads(line) for line in stderr.splitlines() if "import.warning" in line]
    assert {w["level"] for w in warnings} == {"warning"} and len(warnings) == 2
    text = " ".join(w["msg"] for w in warnings)
    assert f"CN=Unrelated Root CA (serial {serial_hex(unrelated.cert)})" in text
    assert f"{intermediate.subject.rfc4514_string()} (serial {serial_hex(decoy.cert)})" in text
    assert serial_hex(intermediate) not in text and serial_hex(root) not in text
    history = json.loads(certd("history", "edge", "--json", config=cfg, check=True).stdout)
    assert sum(e["kind"] == "import.warning" for e in history["events"]) == 2


def test_fullchain_given_as_cert_and_chain_publishes_each_certificate_once(
        cfg: Path, files: dict[str, Path], issued: tuple[Issued, PrivateKey], tmp_path: Path) -> None:
    full = tmp_path / "fullchain.pem"
    full.write_bytes(certs_pem([issued[0].leaf, *issued[0].chain]))
    code, _, stderr = _import(cfg, files, cert=str(full), chain=str(full))
    assert code == 0, stderr
    assert "import.warning" not in stderr
    assert load_pem_certs((tmp_path / "out/edge/fullchain.pem").read_bytes()) == [issued[0].leaf, *issued[0].chain]


def test_a_chain_without_the_leafs_issuer_is_chain_invalid(cfg: Path, files: dict[str, Path],
                                                           tmp_path: Path) -> None:
    stranger = tmp_path / "stranger.pem"
    unrelated = make_ca("Unrelated Root CA")
    stranger.write_bytes(certs_pem([make_ca("Unrelated Intermediate", unrelated).cert, unrelated.cert]))
    code, _, stderr = _import(cfg, files, chain=str(stranger))
    assert code == 1 and "import edge: chain does not verify to the pinned roots" in stderr
    assert "Unrelated Intermediate" in stderr  # the warning says what was dropped and why the chain is empty
    _nothing_imported(cfg, tmp_path)
