"""Issue 19, class 8: messages that name the real cause.

Each case used to be refused with a message that sent the operator elsewhere: a read-only mount blamed on
modes, a SHA-1 signature reported as a chain path problem, an RSA-1024 key as "key type is unknown", a
parent that is a file as "File exists" (or a traceback). Real CLI, real local CA, real ``openssl``, a real
read-only tmpfs mount where the test runs as root.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from certd.deploy.publish import FILES, Publisher
from certd.errors import PublishError
from tests.cli import certd
from tests.conftest import WriteConfig

CONFIG = """
[issuers.local]
type = "local-ca"
dir = "{tmp}/ca"

[certificates.edge]
issuer = "local"
names = ["lb.example.test"]
output_dir = "%s"
key = "%s"
"""


def _config(write_config: WriteConfig, tmp_path: Path, output_dir: str = "{tmp}/out/edge",
            key: str = "ecdsa-p256", db: str | None = None) -> Path:
    return write_config(CONFIG % (output_dir, key), db_url=db or f"sqlite:///{tmp_path}/certd.db")


def test_an_rsa_1024_key_is_named_as_too_weak(write_config: WriteConfig, tmp_path: Path) -> None:
    key = rsa.generate_private_key(65537, 1024)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lb.example.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("lb.example.test")]), False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "weak.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    (tmp_path / "weak.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    config = _config(write_config, tmp_path, key="rsa-2048")
    proc = certd("import", "edge", "--cert", str(tmp_path / "weak.pem"), "--key", str(tmp_path / "weak.key"),
                 config=config)
    assert proc.returncode != 0
    assert "key type is rsa-1024 (too weak: CAs and TLS clients refuse RSA keys under 2048 bits)" in proc.stderr
    assert "unknown" not in proc.stderr


def test_a_sha1_signed_leaf_is_named_as_such_not_as_a_chain_problem(write_config: WriteConfig,
                                                                   tmp_path: Path) -> None:
    """A leaf the local CA's own intermediate signed with SHA-1 (by openssl): the chain is right, the hash not."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    config = _config(write_config, tmp_path)
    assert certd("renew", "edge", config=config).returncode == 0  # the local CA exists now
    ca = tmp_path / "ca"
    key, csr, ext, leaf = (tmp_path / n for n in ("leaf.key", "leaf.csr", "ext.cnf", "leaf.pem"))
    ext.write_text("subjectAltName=DNS:lb.example.test\nextendedKeyUsage=serverAuth\n")
    for argv in (["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)],
                 ["openssl", "req", "-new", "-key", str(key), "-subj", "/CN=lb.example.test", "-out", str(csr)],
                 ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca / "intermediate.pem"), "-CAkey",
                  str(ca / "intermediate.key"), "-sha1", "-days", "30", "-extfile", str(ext), "-out", str(leaf)]):
        subprocess.run(argv, check=True, capture_output=True)
    proc = certd("import", "edge", "--cert", str(leaf), "--key", str(key), config=config)
    assert proc.returncode != 0
    assert "the certificate is signed with SHA-1, which CAs stopped using and TLS clients refuse" in proc.stderr
    assert "validation failed" not in proc.stderr


def test_a_parent_that_is_a_file_is_named(write_config: WriteConfig, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a directory\n")
    config = _config(write_config, tmp_path, output_dir="{tmp}/afile/edge")
    proc = certd("check-config", config=config)
    assert proc.returncode == 2
    assert f"{tmp_path / 'afile'} is a file, so {tmp_path / 'afile/edge'} cannot be made under it" in proc.stderr
    assert "Traceback" not in proc.stderr
    with pytest.raises(PublishError, match=r"afile is a file, so .*afile/edge cannot be made"):
        Publisher(tmp_path / "afile" / "edge").publish("s", {name: b"x" for name in FILES})


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs holding ``out/`` and ``db/``, remounted read-only (root only)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (mount / "out").mkdir()
        (mount / "db").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_read_only_mount_is_named_not_blamed_on_modes(write_config: WriteConfig, tmp_path: Path,
                                                        read_only: Path) -> None:
    config = _config(write_config, tmp_path, output_dir=str(read_only / "out/edge"))
    proc = certd("check-config", config=config)
    assert proc.returncode == 2
    assert f"certificates.edge.output_dir: {read_only / 'out'} is on a read-only file system" in proc.stderr
    config = _config(write_config, tmp_path, db=f"sqlite:///{read_only}/db/certd.db")
    proc = certd("renew", "edge", config=config)
    assert proc.returncode != 0
    assert f"{read_only / 'db'} is on a read-only file system" in proc.stderr
    assert "mode" not in proc.stderr


def test_a_local_ca_missing_a_file_is_not_replaced_by_a_new_one(write_config: WriteConfig, tmp_path: Path) -> None:
    """Deleting intermediate.key made certd create a new root over the old one, silently (attacker round)."""
    config = _config(write_config, tmp_path)
    assert certd("renew", "edge", config=config).returncode == 0
    root = (tmp_path / "ca/root.pem").read_bytes()
    (tmp_path / "ca/intermediate.key").unlink()
    proc = certd("renew", "edge", "--force", config=config)
    assert proc.returncode != 0
    assert f"the local CA in {tmp_path / 'ca'} is incomplete: intermediate.key missing" in proc.stdout + proc.stderr
    assert (tmp_path / "ca/root.pem").read_bytes() == root
    assert not (tmp_path / "ca/intermediate.key").exists()


@pytest.mark.parametrize("where", ["output_dir", "database"])
def test_a_path_too_long_for_the_kernel_is_refused_at_load(write_config: WriteConfig, tmp_path: Path,
                                                          where: str) -> None:
    """ENAMETOOLONG met as a traceback (exit 1, which Nagios reads as WARNING) in check-config and check."""
    long = f"{tmp_path}/{'x' * 300}/edge"
    config = (_config(write_config, tmp_path, output_dir=long) if where == "output_dir"
              else _config(write_config, tmp_path, db=f"sqlite:///{long}.db"))
    key = "certificates.edge.output_dir" if where == "output_dir" else "database.url"
    for command, code in ((("check-config",), 2), (("check",), 3)):
        proc = certd(*command, config=config)
        assert proc.returncode == code, proc.stdout + proc.stderr
        assert f"{key}: " in proc.stdout + proc.stderr and "one of its names is 300 bytes long; at most 255" in \
            proc.stdout + proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr
