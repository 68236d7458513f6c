"""``certd check`` as Nagios and cron run it: real processes, a real inventory, real failures and real expiry."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import WriteConfig
from tests.test_cli import certd

CONFIG = """
[issuers.local]
type = "local-ca"
dir = "{tmp}/local-ca"

[certificates.steady]
issuer = "local"
names = ["steady.example.test"]
output_dir = "{tmp}/out/steady"

[certificates.short]
issuer = "local"
names = ["short.example.test"]
lifetime = "10s"
output_dir = "{tmp}/out/short"

[certificates.broken]
issuer = "local"
names = ["broken.example.test"]
output_dir = "{tmp}/out/broken"
deploy = ["refuses"]

[deploy.refuses]
type = "command"
argv = ["sh", "-c", "echo '[refuses] pool busy' >&2; exit 1"]
"""

ENTRY_KEYS = {"name", "status", "severity", "not_after", "renew_at", "hard_deadline", "last_error", "message"}


@pytest.fixture
def cfg(write_config: WriteConfig, sqlite_url: str) -> Path:
    return write_config(CONFIG, db_url=sqlite_url)


def _check(cfg: Path, *args: str) -> tuple[int, str, dict[str, Any]]:
    line = certd("check", *args, config=cfg)
    doc = certd("check", "--json", *args, config=cfg)
    assert line.returncode == doc.returncode, (line.stdout, doc.stdout)
    assert len(line.stdout.splitlines()) == 1, line.stdout
    return line.returncode, line.stdout.strip(), json.loads(doc.stdout)


def test_exit_codes_follow_the_worst_certificate(cfg: Path, tmp_path: Path) -> None:
    # No inventory yet: UNKNOWN, and check creates none (a monitor must not make an empty one and say OK).
    code, line, doc = _check(cfg)
    assert code == 3 and line.startswith("CERTD UNKNOWN - no inventory at") and doc["status"] == "unknown"
    assert not (tmp_path / "certd.db").exists()

    certd("db", "upgrade", config=cfg, check=True)
    code, line, doc = _check(cfg)
    assert (code, line) == (0, "CERTD OK - 3 certificates ok, 3 pending (steady, short, broken) "
                                "| ok=3 warning=0 critical=0")
    assert doc["status"] == "ok" and doc["counts"] == {"ok": 3, "warning": 0, "critical": 0}

    certd("renew", "steady", config=cfg, check=True)
    assert _check(cfg)[0] == 0
    code, line, _ = _check(cfg, "--warn-within", "100d")  # 90 days left: warn, although nothing failed
    assert (code, line) == (1, "CERTD WARNING - 1 within 100d of expiry (steady) | ok=2 warning=1 critical=0")

    assert certd("renew", "broken", config=cfg).returncode == 1  # its deploy command exits 1
    code, line, doc = _check(cfg)
    assert (code, line) == (1, "CERTD WARNING - 1 failing (broken) | ok=2 warning=1 critical=0")
    entries = {e["name"]: e for e in doc["certificates"]}
    assert entries["broken"]["severity"] == "warning"
    assert entries["broken"]["last_error"] == ("deploy: deploy refuses: command sh exited 1 | output: "
                                               "[refuses] pool busy")
    listing = certd("list", config=cfg, check=True).stdout
    assert "[refuses]" in listing  # shown as stored, not eaten as markup

    certd("renew", "short", config=cfg, check=True)
    listed = {c["name"]: c for c in json.loads(certd("list", "--json", config=cfg, check=True).stdout)["certificates"]}
    not_after = datetime.fromisoformat(listed["short"]["not_after"])
    time.sleep(max(0.0, (not_after - datetime.now(UTC)).total_seconds()) + 1.5)
    code, line, doc = _check(cfg)
    assert (code, line) == (2, "CERTD CRITICAL - 1 expired (short), 1 failing (broken) "
                               "| ok=1 warning=1 critical=1")
    assert doc["status"] == "critical" and doc["counts"] == {"ok": 1, "warning": 1, "critical": 1}
    assert [(e["name"], e["status"], e["severity"]) for e in doc["certificates"]] == [
        ("steady", "published", "ok"), ("short", "expired", "critical"), ("broken", "failing", "warning")]
    assert all(set(e) >= ENTRY_KEYS for e in doc["certificates"])
    # list, the API document and check agree, because they are one computation.
    listed = {c["name"]: c for c in json.loads(certd("list", "--json", config=cfg, check=True).stdout)["certificates"]}
    assert {n: c["status"] for n, c in listed.items()} == {"steady": "published", "short": "expired",
                                                           "broken": "failing"}
    assert listed["short"]["severity"] == "critical"


@pytest.mark.parametrize("args", [("check", "--bogus"), ("check", "--warn-within", "soon")])
def test_bad_usage_is_unknown_not_critical(cfg: Path, args: tuple[str, ...]) -> None:
    proc = certd(*args, config=cfg)
    assert proc.returncode == 3, proc.stderr


def test_a_broken_config_is_unknown(write_config: WriteConfig, sqlite_url: str) -> None:
    cfg = write_config(CONFIG.replace('issuer = "local"\nnames = ["short', 'issuer = "gone"\nnames = ["short'),
                       db_url=sqlite_url)
    proc = certd("check", config=cfg)
    assert proc.returncode == 3
    assert proc.stdout.startswith("CERTD UNKNOWN - ") and "certificates.short.issuer" in proc.stdout
    assert len(proc.stdout.splitlines()) == 1 and "Traceback" not in proc.stderr
    doc = json.loads(certd("check", "--json", config=cfg).stdout)
    assert doc["status"] == "unknown" and "certificates.short.issuer" in doc["error"]


def test_help_documents_the_exit_codes() -> None:
    text = certd("check", "--help", check=True).stdout
    for word in ("0 OK", "1 WARNING", "2 CRITICAL", "3 UNKNOWN"):
        assert word in text
