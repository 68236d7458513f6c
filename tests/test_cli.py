"""The ``certd`` command as operators and scripts use it: exit codes, JSON shapes, and real processes where the
process is the point (concurrent processes, kill -9, a closed or full stdout, the real binary's exit codes)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from certd.deploy.publish import FILES, list_generations
from certd.inventory.db import create_db_engine, schema_is_current, upgrade
from certd.pki.certs import load_pem_certs, serial_hex
from certd.pki.keys import KeyType, generate_key, key_pem, load_key_pem
from tests.cli import REPO, certd
from tests.conftest import LOCAL_CA_CONFIG, WriteConfig


@pytest.fixture
def cfg(write_config: WriteConfig, db_url: str) -> Path:
    return write_config(LOCAL_CA_CONFIG, db_url=db_url)


def test_help_lists_every_command() -> None:
    text = certd("--help", check=True).stdout
    for cmd in ("check-config", "db", "list", "plan", "renew", "deploy", "revoke", "import", "history", "probe",
                "bundle", "check"):
        assert cmd in text


def test_check_config_on_the_example() -> None:
    proc = certd("check-config", config=REPO / "config.example.toml")
    assert proc.returncode == 0, proc.stderr
    assert "ok (3 certificates, 3 issuers, 2 deploy targets)" in proc.stdout
    strict = certd("check-config", "--strict", config=REPO / "config.example.toml")
    if strict.returncode != 0:  # on hosts without /etc/certd the referenced files are missing
        assert "does not exist" in strict.stderr


def test_renew_json_list_plan_history_bundle(cfg: Path, tmp_path: Path) -> None:
    proc = certd("renew", "edge", "--force", "--json", config=cfg, check=True)
    doc = json.loads(proc.stdout)
    (result,) = doc["results"]
    assert {"name", "outcome", "serial", "state", "failed_step", "error"} <= set(result)
    assert (result["outcome"], result["state"]) == ("renewed", "published")
    assert result["serial"] == result["serial"].lower() and ":" not in result["serial"]
    out = tmp_path / "out/edge"
    assert (out / "privkey.pem").resolve().stat().st_mode & 0o777 == 0o600
    assert (out / "combined.pem").resolve().stat().st_mode & 0o777 == 0o600

    listing = json.loads(certd("list", "--json", config=cfg, check=True).stdout)
    by_name = {c["name"]: c for c in listing["certificates"]}
    assert set(by_name["edge"]) >= {"name", "issuer", "names", "status", "serial", "not_before", "not_after",
                                    "renew_at", "last_error"}
    assert by_name["edge"]["status"] == "published" and by_name["backend"]["status"] == "pending"
    assert by_name["edge"]["not_after"].endswith("Z")

    plan = json.loads(certd("plan", "--json", config=cfg, check=True).stdout)["plan"]
    assert {p["name"]: (p["due"], p["reason"]) for p in plan} == {
        "edge": (False, "NotDue"), "backend": (True, "DoesNotExist")}

    history = json.loads(certd("history", "edge", "--json", config=cfg, check=True).stdout)
    assert history["versions"][0]["serial"] == result["serial"]
    assert {"at", "kind", "message", "renewal_id"} <= set(history["events"][0])

    bundle = certd("bundle", "edge", config=cfg, check=True).stdout.encode()
    certs = load_pem_certs(bundle)
    assert len(certs) == 2 and certs[-1].subject == certs[-1].issuer  # intermediate + pinned root

    table = certd("list", config=cfg, check=True).stdout
    assert "edge" in table and "lb.example.test" in table


def test_renew_all_exit_code_and_unknown_name(cfg: Path) -> None:
    """The real binary's exit codes (the other tests run the same command group in-process)."""
    assert certd("renew", "--all", config=cfg, process=True).returncode == 0
    unknown = certd("renew", "nope", config=cfg, process=True)
    assert unknown.returncode == 2 and "no certificate named nope" in unknown.stderr
    assert certd("renew", config=cfg, process=True).returncode == 2


def _versions(cfg: Path) -> list[dict[str, object]]:
    return json.loads(certd("history", "edge", "--json", config=cfg, check=True).stdout)["versions"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("body_change", "expected"),
    [
        (("issuer = \"local\"\nnames = [\"lb", "issuer = \"gone\"\nnames = [\"lb"), "certificates.edge.issuer"),
        (("lifetime = \"72h\"", "lifetime = \"72x\""), "certificates.backend.lifetime: invalid duration"),
    ],
)
def test_bad_config_changes_nothing(write_config: WriteConfig, sqlite_url: str, tmp_path: Path,
                                    body_change: tuple[str, str], expected: str) -> None:
    cfg = write_config(LOCAL_CA_CONFIG.replace(*body_change), db_url=sqlite_url)
    proc = certd("renew", "--all", "--force", config=cfg)
    assert proc.returncode == 2
    assert str(cfg) in proc.stderr and expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "certd.db").exists() and not (tmp_path / "out").exists()


def test_import_bad_input_changes_nothing(cfg: Path, tmp_path: Path) -> None:
    certd("renew", "edge", config=cfg, check=True)
    before = _versions(cfg)
    served = (tmp_path / "out/edge/combined.pem").read_bytes()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    key = tmp_path / "key.pem"
    key.write_bytes(key_pem(generate_key(KeyType.ECDSA_P256)))
    proc = certd("import", "edge", "--cert", str(garbage), "--key", str(key), config=cfg)
    assert proc.returncode == 2 and f"--cert {garbage}: malformed PEM certificate" in proc.stderr
    current_cert = tmp_path / "out/edge/cert.pem"
    proc = certd("import", "edge", "--cert", str(current_cert), "--key", str(key), config=cfg)
    assert proc.returncode == 1 and "does not match the private key" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert _versions(cfg) == before
    assert (tmp_path / "out/edge/combined.pem").read_bytes() == served
    good = certd("import", "edge", "--cert", str(current_cert), "--key", str(tmp_path / "out/edge/privkey.pem"),
                 "--chain", str(tmp_path / "out/edge/chain.pem"), "--json", config=cfg)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["results"][0]["outcome"] == "imported"


def test_parallel_processes_make_one_order(cfg: Path) -> None:
    certd("renew", "edge", config=cfg, check=True)
    procs = [subprocess.Popen([sys.executable, "-m", "certd", "-c", str(cfg), "renew", "edge", "--force", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for _ in range(8)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outputs]
    serials = {json.loads(o[0])["results"][0]["serial"] for o in outputs}
    assert len(serials) == 1
    assert len(_versions(cfg)) == 2


CRASH_CERTS = 6  # one worker per certificate, each killing its own renewals while the others run
CRASH_KILLS = 200
CRASH_CONFIG = '[daemon]\nlease_ttl = "1s"\n\n[issuers.local]\ntype = "local-ca"\ndir = "{tmp}/local-ca"\n' + "".join(
    f'\n[certificates.c{i}]\nissuer = "local"\nnames = ["c{i}.crash.example.test"]\noutput_dir = "{{tmp}}/out/c{i}"\n'
    for i in range(CRASH_CERTS))
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
_ALEMBIC = threading.Lock()  # Alembic keeps its migration context in module globals: one upgrade per process at once


def _whole_set(out: Path) -> str:
    """``out`` holds one matching set, whichever way a reader opens it; its serial."""
    generation = out / os.readlink(out / "..data")
    files = {name: (generation / name).read_bytes() for name in FILES}
    for name, data in files.items():
        assert os.readlink(out / name) == f"..data/{name}", name
        assert (out / name).read_bytes() == data, name  # the stable path shows the same generation
    key = load_key_pem(files["privkey.pem"])
    (leaf,) = load_pem_certs(files["cert.pem"])
    assert key.public_key().public_bytes(*_SPKI) == leaf.public_key().public_bytes(*_SPKI), "key does not match cert"
    assert files["fullchain.pem"].startswith(files["cert.pem"])
    assert files["fullchain.pem"] == files["cert.pem"] + files["chain.pem"]
    assert files["combined.pem"] == files["privkey.pem"] + files["fullchain.pem"]
    return serial_hex(leaf)


def _inventory_ok(url: str, name: str) -> set[str]:
    """The database opens, upgrades and passes SQLite's own check; the serials it knows for ``name``."""
    engine = create_db_engine(url)
    try:
        with _ALEMBIC:
            upgrade(engine)
            assert schema_is_current(engine)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA quick_check").scalar() == "ok"
            rows = conn.exec_driver_sql("SELECT serial FROM versions WHERE certificate = ?", (name,))
            return {row[0] for row in rows}
    finally:
        engine.dispose()


def _renew_process(cfg: Path, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "certd", "-c", str(cfg), "--log-level", "info", "renew", name,
                             "--force", "--wait", "1m"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _until_started(proc: subprocess.Popen[bytes]) -> bool:
    """Read its log until the renewal holds the lease (``renewal.started``); False if it ended first."""
    assert proc.stderr is not None
    return any(b'"renewal.started"' in line for line in iter(proc.stderr.readline, b""))


def _timed_renewal(cfg: Path, name: str) -> tuple[float, float]:
    """One whole renewal process: (seconds from start to exit, seconds from ``renewal.started`` to exit)."""
    started = time.monotonic()
    proc = _renew_process(cfg, name)
    assert _until_started(proc)
    holding = time.monotonic()
    assert proc.wait(60) == 0
    assert proc.stderr is not None
    proc.stderr.close()
    done = time.monotonic()
    return done - started, done - holding


@pytest.mark.slow
def test_kill_9_at_random_points_leaves_a_consistent_state(write_config: WriteConfig, sqlite_url: str,
                                                           tmp_path: Path) -> None:
    """200 SIGKILLs of ``certd renew`` at random points, six certificates at once on one SQLite inventory.

    Half the points fall anywhere in the process's life (startup, migrations, lease, renewal, exit), half
    inside the renewal itself (after it took the lease). Each delay is a seeded random fraction of the
    measured duration of that phase. After every kill: the output directory is one whole matching set of
    a version the inventory knows, and the database opens, upgrades and passes ``quick_check``. At the end
    a normal renewal of everything succeeds (the dead holders' leases are taken over) and nothing of the
    dead processes is left behind.
    """
    cfg = write_config(CRASH_CONFIG, db_url=sqlite_url)
    names = [f"c{i}" for i in range(CRASH_CERTS)]
    timings = sorted(_timed_renewal(cfg, name) for name in names)
    whole, renewal = timings[len(timings) // 2]  # the median process
    rng = random.Random(20261201)
    plans = [("anywhere" if (i // CRASH_CERTS) % 2 == 0 else "renewal", rng.random()) for i in range(CRASH_KILLS)]
    outcomes: dict[str, int] = {"in flight": 0, "already exited": 0}
    lock = threading.Lock()

    def worker(index: int) -> None:
        name = names[index]
        out = tmp_path / "out" / name
        for phase, fraction in plans[index::CRASH_CERTS]:
            proc = _renew_process(cfg, name)
            if phase == "anywhere":
                time.sleep(fraction * whole)
            elif _until_started(proc):
                time.sleep(fraction * renewal)
            running = proc.poll() is None
            proc.send_signal(signal.SIGKILL)
            proc.wait(60)
            assert proc.stderr is not None
            proc.stderr.close()
            with lock:
                outcomes["in flight" if running else "already exited"] += 1
            serial = _whole_set(out)
            assert serial in _inventory_ok(sqlite_url, name), f"{name}: files hold {serial}, unknown to the inventory"

    with ThreadPoolExecutor(CRASH_CERTS) as pool:
        for future in [pool.submit(worker, i) for i in range(CRASH_CERTS)]:
            future.result()
    assert sum(outcomes.values()) == CRASH_KILLS
    assert outcomes["in flight"] >= CRASH_KILLS * 3 // 4, outcomes  # the kills really interrupted work

    proc = certd("renew", "--all", "--force", "--wait", "1m", "--json", config=cfg)
    assert proc.returncode == 0, proc.stderr
    results = {r["name"]: r for r in json.loads(proc.stdout)["results"]}
    assert {n: r["outcome"] for n, r in results.items()} == dict.fromkeys(names, "renewed")
    for name in names:
        out = tmp_path / "out" / name
        assert _whole_set(out) == results[name]["serial"]
        assert results[name]["serial"] in _inventory_ok(sqlite_url, name)
        assert not any(p.name.startswith("..tmp-") for p in out.iterdir())
        assert len(list_generations(out)) <= 1 + 3  # the current one and `keep` (3) for rollback


def test_output_to_a_full_device_is_one_error_line(cfg: Path) -> None:
    """``certd list > /dev/full``: exit 1 and one line, no traceback."""
    certd("renew", "edge", config=cfg, check=True)
    for args in (("list",), ("list", "--json"), ("history", "edge")):
        with open("/dev/full", "w") as full:
            proc = subprocess.run([sys.executable, "-m", "certd", "-c", str(cfg), *args], cwd=REPO, stdout=full,
                                  stderr=subprocess.PIPE, text=True, timeout=60)
        assert proc.returncode == 1, (args, proc.stderr)
        assert proc.stderr == "error: cannot write the output: No space left on device\n", proc.stderr


def test_closed_stdout_is_quiet(cfg: Path) -> None:
    """``certd history NAME | head -1``: no traceback, no error text, the shell's SIGPIPE status (141)."""
    for _ in range(6):
        certd("renew", "edge", "--force", config=cfg, check=True)
    for args in (("history", "edge"), ("list",), ("history", "edge", "--json")):
        proc = subprocess.Popen([sys.executable, "-m", "certd", "-c", str(cfg), *args], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.read(1)
        proc.stdout.close()  # the reader goes away after one byte, before certd is done writing
        stderr = proc.stderr.read().decode()
        code = proc.wait(timeout=60)
        assert "Traceback" not in stderr and "Error" not in stderr, stderr
        assert code in (0, 141), (args, code, stderr)
