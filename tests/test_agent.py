"""Agent role: one replica issues, another host installs from the shared inventory."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

from certd.config.load import load_config
from certd.engine.app import App
from certd.engine.scheduler import Scheduler
from certd.pki.certs import load_pem_certs, serial_hex
from tests.conftest import LOCAL_CA_CONFIG, WriteConfig

REPO = Path(__file__).resolve().parent.parent


def _configs(write_config: WriteConfig, db_url: str, tmp_path: Path, *, key: bool = True) -> tuple[Path, Path]:
    (tmp_path / "db.key").write_text(base64.b64encode(os.urandom(32)).decode())
    database = f'[database]\nurl = "{db_url}"\n' + ('key_file = "{tmp}/db.key"\n' if key else "")
    issuer = write_config(database + LOCAL_CA_CONFIG, name="issuer.toml")
    agent = write_config(database + LOCAL_CA_CONFIG.replace("{tmp}/out/", "{tmp}/host-b/"), name="agent.toml")
    return issuer, agent


def test_agent_installs_what_the_issuer_recorded(write_config: WriteConfig, db_url: str, tmp_path: Path) -> None:
    issuer_cfg, agent_cfg = _configs(write_config, db_url, tmp_path)
    issuer = App.open(load_config(issuer_cfg))
    agent = App.open(load_config(agent_cfg))
    try:
        first = issuer.pipeline.renew("edge")
        scheduler = Scheduler(lambda: agent, agent.clock, workers=1, inline=True, agent=True)
        assert scheduler.scan() == ["edge"]
        installed = tmp_path / "host-b/edge"
        served = load_pem_certs((installed / "cert.pem").read_bytes())[0]
        assert serial_hex(served) == first.serial
        assert (installed / "privkey.pem").read_bytes() == (tmp_path / "out/edge/privkey.pem").read_bytes()
        assert (installed / "privkey.pem").resolve().stat().st_mode & 0o777 == 0o600
        assert scheduler.scan() == []  # up to date: nothing to do, nothing issued
        second = issuer.pipeline.renew("edge", force=True)
        assert scheduler.scan() == ["edge"]
        assert serial_hex(load_pem_certs((installed / "cert.pem").read_bytes())[0]) == second.serial
        assert len(issuer.inventory.versions("edge")) == 2  # the agent never ordered anything
        kinds = [e.kind for e in issuer.inventory.events("edge")]
        assert "agent.published" in kinds
    finally:
        issuer.close()
        agent.close()


def test_agent_without_stored_keys_says_why(write_config: WriteConfig, sqlite_url: str, tmp_path: Path) -> None:
    issuer_cfg, agent_cfg = _configs(write_config, sqlite_url, tmp_path, key=False)
    issuer = App.open(load_config(issuer_cfg))
    agent = App.open(load_config(agent_cfg))
    try:
        issuer.pipeline.renew("edge")
        result = agent.pipeline.install("edge")
        assert result.outcome == "failed" and "set [database] key_file" in (result.error or "")
        assert not (tmp_path / "host-b/edge/cert.pem").exists()
    finally:
        issuer.close()
        agent.close()
    proc = subprocess.run([sys.executable, "-m", "certd", "-c", str(agent_cfg), "run", "--agent"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2 and "database.key_file" in proc.stderr
