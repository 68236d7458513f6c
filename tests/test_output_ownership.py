"""Issue 19, class 5: where certd writes.

certd publishes only into an output directory it owns — one it created, an empty one, or one holding
nothing but its own layout — and records that with a mark file; a system directory or a user's home is
refused even when empty, and a directory holding another tool's files is refused by ``check-config`` and
every command before any CA is asked. Pruning never removes a directory it did not write. Real local CA,
the real CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from certd.deploy.publish import FILES, Publisher, list_generations
from certd.errors import PublishError
from certd.places import MARK
from tests.cli import certd
from tests.conftest import LOCAL_CA_CONFIG, WriteConfig

OTHER_TOOL = {"cert.pem": b"another tool's certificate\n", "privkey.pem": b"another tool's key\n"}


def _files(tag: bytes) -> dict[str, bytes]:
    return {name: tag + b":" + name.encode() for name in FILES}


def _config(write_config: WriteConfig, tmp_path: Path, output_dir: str) -> Path:
    body = LOCAL_CA_CONFIG.replace('output_dir = "{tmp}/out/edge"', f'output_dir = "{output_dir}"')
    return write_config(body, db_url=f"sqlite:///{tmp_path}/certd.db")


def _versions(tmp_path: Path) -> int:
    import sqlite3

    db = tmp_path / "certd.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return conn.execute("SELECT count(*) FROM versions").fetchone()[0] if "versions" in tables else 0


@pytest.mark.parametrize("where", ["/etc", "/root", "/", "/srv", "/etc/ssl/private"])
def test_a_system_directory_is_refused_before_anything_is_ordered(write_config: WriteConfig, tmp_path: Path,
                                                                  where: str) -> None:
    path = _config(write_config, tmp_path, where)
    for command in (("check-config",), ("renew", "edge")):
        proc = certd(*command, config=path)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"{path}: certificates.edge.output_dir: {where} is a " in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert _versions(tmp_path) == 0
    assert not (tmp_path / "local-ca").exists()  # the CA was never asked


def test_another_tools_directory_is_refused_and_left_untouched(write_config: WriteConfig, tmp_path: Path) -> None:
    foreign = tmp_path / "legacy"
    (foreign / "..gen-from-another-tool").mkdir(parents=True)
    (foreign / "..gen-from-another-tool" / "notes.txt").write_text("not certd's\n")
    for name, data in OTHER_TOOL.items():
        (foreign / name).write_bytes(data)
    before = sorted(p.name for p in foreign.rglob("*"))
    path = _config(write_config, tmp_path, str(foreign))
    for command in (("check-config",), ("renew", "edge")):
        proc = certd(*command, config=path)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert (f"{path}: certificates.edge.output_dir: {foreign} holds files certd did not make "
                "(..gen-from-another-tool, cert.pem, privkey.pem)") in proc.stderr, proc.stderr
    assert sorted(p.name for p in foreign.rglob("*")) == before
    assert all((foreign / n).read_bytes() == d for n, d in OTHER_TOOL.items())
    assert _versions(tmp_path) == 0


def test_an_empty_or_earlier_certd_directory_is_taken_and_marked(write_config: WriteConfig, tmp_path: Path) -> None:
    out = tmp_path / "out" / "edge"
    out.mkdir(parents=True)
    path = _config(write_config, tmp_path, str(out))
    assert certd("renew", "edge", config=path).returncode == 0
    assert (out / MARK).is_file()
    # A directory certd filled before it marked its directories holds only its own layout: still taken.
    (out / MARK).unlink()
    proc = certd("renew", "edge", "--force", "--json", config=path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"][0]["outcome"] == "renewed"
    assert (out / MARK).is_file()


def test_publishing_into_a_directory_that_became_foreign_is_refused(tmp_path: Path) -> None:
    """The rule holds at publish time too (a daemon loaded its config before the files appeared)."""
    out = tmp_path / "later"
    out.mkdir()
    (out / "haproxy.cfg").write_text("global\n")
    with pytest.raises(PublishError, match=r"holds files certd did not make \(haproxy.cfg\)"):
        Publisher(out).publish("s1", _files(b"1"))
    assert sorted(p.name for p in out.iterdir()) == ["haproxy.cfg"]


def test_pruning_never_removes_a_generation_certd_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "out"
    pub = Publisher(out, keep=1)
    pub.publish("s0", _files(b"x"))
    planted = out / "..gen-00000000T000000000000Z-planted"
    planted.mkdir()
    (planted / "backup.tar").write_bytes(b"someone's backup")
    for i in range(1, 4):
        pub.publish(f"s{i}", _files(b"x"))
    assert (planted / "backup.tar").read_bytes() == b"someone's backup"
    assert len([g for g in list_generations(out) if g.path != planted]) == 1 + 1


def test_someones_data_under_a_tmp_name_is_neither_taken_nor_swept(tmp_path: Path) -> None:
    """``..tmp-`` is certd's prefix for leftovers, but a directory of data under it is not certd's."""
    foreign = tmp_path / "foreign"
    (foreign / "..tmp-x").mkdir(parents=True)
    (foreign / "..tmp-x" / "data.txt").write_text("someone's\n")
    with pytest.raises(PublishError, match=r"holds files certd did not make \(\.\.tmp-x\)"):
        Publisher(foreign).publish("s1", _files(b"1"))
    out = tmp_path / "out"
    pub = Publisher(out)
    pub.publish("s0", _files(b"0"))
    (out / "..tmp-y").mkdir()
    (out / "..tmp-y" / "data.txt").write_text("someone's\n")
    (out / "..tmp-crashed").mkdir()
    (out / "..tmp-crashed" / "privkey.pem").write_bytes(b"half")
    pub.publish("s1", _files(b"1"))
    assert (out / "..tmp-y" / "data.txt").read_text() == "someone's\n"
    assert (foreign / "..tmp-x" / "data.txt").read_text() == "someone's\n"
    assert not (out / "..tmp-crashed").exists()  # certd's own leftover is swept


def test_bundle_out_never_replaces_a_file_that_is_not_a_bundle(write_config: WriteConfig, tmp_path: Path) -> None:
    """``certd bundle NAME --out /etc/passwd`` replaced it (found by the attacker round): a file that holds
    anything but certificates is refused and left as it was; a bundle certd wrote is replaced."""
    path = _config(write_config, tmp_path, "{tmp}/out/edge")
    assert certd("renew", "edge", config=path).returncode == 0
    victim = tmp_path / "passwd"
    victim.write_text("root:x:0:0:root:/root:/bin/bash\n")
    proc = certd("bundle", "edge", "--out", str(victim), config=path)
    assert proc.returncode != 0 and "holds something other than certificates" in proc.stderr, proc.stderr
    assert victim.read_text() == "root:x:0:0:root:/root:/bin/bash\n"
    bundle = tmp_path / "bundle.pem"
    for _ in range(2):
        assert certd("bundle", "edge", "--out", str(bundle), config=path).returncode == 0
    assert bundle.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")


def test_one_directory_under_two_paths_is_refused(write_config: WriteConfig, tmp_path: Path) -> None:
    """A bind mount of one certificate's output_dir at another's path: two certificates, one directory."""
    import subprocess

    a, b = tmp_path / "out/a", tmp_path / "out/b"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    if subprocess.run(["mount", "--bind", str(a), str(b)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here")
    try:
        body = LOCAL_CA_CONFIG.replace('output_dir = "{tmp}/out/edge"', f'output_dir = "{a}"').replace(
            'output_dir = "{tmp}/out/backend"', f'output_dir = "{b}"')
        path = write_config(body, db_url=f"sqlite:///{tmp_path}/certd.db")
        proc = certd("check-config", config=path)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"is the same directory as {a}, the output_dir of certificates.edge (a bind mount?)" in proc.stderr
    finally:
        subprocess.run(["umount", str(b)], capture_output=True)


def test_the_mark_being_written_is_not_taken_for_a_foreign_file(tmp_path: Path) -> None:
    """A config check that lists the directory while a first publish writes the mark (a reload beside a scan,
    seen in the suite) must not find the mark's temporary file foreign."""
    from certd.places import foreign_entries

    out = tmp_path / "out"
    out.mkdir()
    (out / f".{MARK}.50e8a981.tmp").write_bytes(b"")
    assert foreign_entries(out) == []
