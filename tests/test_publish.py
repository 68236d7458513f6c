"""Atomic publishing: modes, stable links, generations, crash leftovers, and readers during rotation."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certd.config.model import Config
from certd.deploy.publish import FILES, Publisher, current_generation, list_generations
from certd.engine.app import App
from certd.pki.certs import load_pem_certs
from certd.pki.keys import load_key_pem


def _files(tag: bytes) -> dict[str, bytes]:
    return {f: tag + b":" + f.encode() for f in FILES}


def test_layout_modes_and_links(tmp_path: Path) -> None:
    out = tmp_path / "out"
    gen = Publisher(out, key_mode=0o640).publish("abc", _files(b"one"))
    assert current_generation(out) == gen
    for f in FILES:
        assert os.readlink(out / f) == f"..data/{f}"
        assert (out / f).read_bytes() == b"one:" + f.encode()
    assert (gen.path / "privkey.pem").stat().st_mode & 0o777 == 0o640
    assert (gen.path / "combined.pem").stat().st_mode & 0o777 == 0o640
    assert (gen.path / "cert.pem").stat().st_mode & 0o777 == 0o644


def test_keep_generations_and_switch_back(tmp_path: Path) -> None:
    out = tmp_path / "out"
    pub = Publisher(out, keep=2)
    gens = [pub.publish(f"s{i}", _files(str(i).encode())) for i in range(5)]
    assert [g.name for g in list_generations(out)] == [g.name for g in gens[-3:]]
    previous = list_generations(out)[-2]
    assert previous == gens[-2]
    pub.switch(previous)
    assert (out / "cert.pem").read_bytes() == b"3:cert.pem"


def test_the_rollback_target_takes_one_of_the_keep_places(tmp_path: Path) -> None:
    """Generations newer than the rollback target (published by processes killed before their inventory
    caught up) never grow the directory past the current one and ``keep``; the target itself stays."""
    out = tmp_path / "out"
    pub = Publisher(out, keep=2)
    target = pub.publish("s0", _files(b"0"))
    for i in range(1, 4):  # each switched to, then its process died: the inventory still names s0
        pub.publish(f"s{i}", _files(str(i).encode()), rollback_to=target.name)
    current = pub.publish("s9", _files(b"9"), rollback_to=target.name)
    names = [g.name for g in list_generations(out)]
    assert len(names) == 1 + 2
    assert target.name in names and current.name in names


def test_crash_leftovers_are_swept_and_replaced_links_restored(tmp_path: Path) -> None:
    out = tmp_path / "out"
    Publisher(out).publish("s0", _files(b"0"))  # the directory is certd's (marked) from here on
    (out / "..tmp-half-written").mkdir()
    (out / "..tmp-half-written" / "privkey.pem").write_bytes(b"partial")
    (out / "cert.pem").unlink()
    (out / "cert.pem").write_bytes(b"a copy a hook left in place of the link")
    Publisher(out).publish("s", _files(b"x"))
    assert not (out / "..tmp-half-written").exists()
    assert os.readlink(out / "cert.pem") == "..data/cert.pem"


def _matching(key_pem: bytes, cert_pem: bytes) -> bool:
    key = load_key_pem(key_pem)
    leaf: x509.Certificate = load_pem_certs(cert_pem)[0]
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*fmt) == leaf.public_key().public_bytes(*fmt)


def _reader(out: str, stop: mp.synchronize.Event, report: mp.Queue) -> None:  # type: ignore[type-arg]
    """Loop over the files like a server would, counting every violation."""
    base = Path(out)
    reads = violations = 0
    first: str | None = None
    while not stop.is_set():
        try:
            combined = (base / "combined.pem").read_bytes()
            if not _matching(combined, combined[combined.index(b"-----BEGIN CERTIFICATE-----"):]):
                violations += 1
                first = first or "combined.pem key does not match its certificate"
            generation = base / os.readlink(base / "..data")
            if not _matching((generation / "privkey.pem").read_bytes(), (generation / "cert.pem").read_bytes()):
                violations += 1
                first = first or "generation holds a mismatched key and certificate"
            for name in ("privkey.pem", "cert.pem", "fullchain.pem", "chain.pem"):
                if not (base / name).read_bytes():
                    violations += 1
                    first = first or f"{name} empty"
            reads += 1
        except Exception as exc:
            violations += 1
            first = first or f"{type(exc).__name__}: {exc}"
    report.put((reads, violations, first))


def test_200_forced_renewals_with_a_reader_looping(local_config: Config, local_app: App) -> None:
    out = local_config.certificates["edge"].output_dir
    assert local_app.pipeline.renew("edge").outcome == "renewed"
    ctx = mp.get_context("fork")
    stop, report = ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_reader, args=(str(out), stop, report))
    reader.start()
    try:
        serials = set()
        for _ in range(200):
            result = local_app.pipeline.renew("edge", force=True)
            assert result.outcome == "renewed", result
            serials.add(result.serial)
    finally:
        stop.set()
        reads, violations, first = report.get(timeout=30)
        reader.join(10)
    assert len(serials) == 200
    assert reads > 200
    assert violations == 0, first
    assert len(list_generations(out)) == 1 + local_config.certificates["edge"].keep
