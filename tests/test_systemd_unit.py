"""The service as shipped: the systemd unit verifies, and its credentials are enough for the deploy targets.

certd runs as an unprivileged user in the unit, yet must SIGHUP a root nginx
(needs CAP_KILL in the *ambient* set, not only the bounding set) and talk to
HAProxy's admin socket (group access through SupplementaryGroups). This
runs certd's real deploy targets with the unit's own capabilities and groups
(read from the unit file, applied with ``setpriv``) against a real root nginx
and a real HAProxy socket. The unit's ``User=certd`` does not exist on test
machines, so ``nobody`` stands in for it; the capabilities and groups are the
unit's.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.servers.haproxy import HaproxyServer
from tests.servers.nginx import NginxServer
from tests.servers.ports import make_workdir

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "deploy/systemd/certd.service"


def _unit() -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            keys.setdefault(key.strip(), []).extend(value.split())
    return keys


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    unit = tmp_path / "certd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/certd", str(REPO / ".venv/bin/certd")))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "certd.service" not in proc.stderr, proc.stderr  # no warnings about our unit


def caps(names: list[str]) -> str:
    """``CAP_KILL CAP_NET_BIND_SERVICE`` as setpriv spells it: ``+kill,+net_bind_service``."""
    return ",".join("+" + n.lower().removeprefix("cap_") for n in names)


def _as_unit_user(workdir: Path, *args: str, ambient: list[str]) -> subprocess.CompletedProcess[str]:
    """Run certd as the unit would: its user (stand-in), supplementary groups and capability sets."""
    unit = _unit()
    groups = ",".join(str(grp.getgrnam(g).gr_gid) for g in unit.get("SupplementaryGroups", []))
    user = pwd.getpwnam("nobody")
    argv = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
            f"--groups={groups}" if groups else "--clear-groups",
            f"--inh-caps=-all{(',' + caps(ambient)) if ambient else ''}",
            f"--ambient-caps=-all{(',' + caps(ambient)) if ambient else ''}",
            f"--bounding-set=-all,{caps(unit['CapabilityBoundingSet'])}",
            "/usr/bin/python3", "-m", "certd", "-c", str(workdir / "certd.toml"), *args]
    site = sysconfig.get_paths()["purelib"]  # the venv's packages, for the system interpreter of the same version
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO}:{site}", "LANG": "C.UTF-8"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=workdir, env=env)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start root-owned servers and drop privileges")
def test_deploy_targets_work_with_the_units_credentials() -> None:
    if shutil.which("setpriv") is None or not Path("/usr/bin/python3").exists():
        pytest.skip("setpriv or /usr/bin/python3 missing")
    if f"{sys.version_info.major}.{sys.version_info.minor}" not in os.path.realpath("/usr/bin/python3"):
        pytest.skip("the system python is not the venv's version")
    unit = _unit()
    work = make_workdir("unit")
    os.chmod(work, 0o755)
    nobody = pwd.getpwnam("nobody")
    nginx_dir, lb_dir = work / "nginx", work / "lb"
    for d in (nginx_dir, lb_dir):
        d.mkdir(mode=0o755)
    (work / "certd.toml").write_text(f"""
[database]
url = "sqlite:///{work}/certd.db"

[issuers.local]
type = "local-ca"
dir = "{work}/ca"

[deploy.nginx]
type = "signal"
pid_file = "{nginx_dir}/nginx.pid"

[deploy.lb]
type = "haproxy"
socket = "{lb_dir}/admin.sock"
cert = "{work}/out/edge/combined.pem"

[certificates.backend]
issuer = "local"
names = ["backend-1.internal"]
output_dir = "{work}/out/backend"
deploy = ["nginx"]

[certificates.edge]
issuer = "local"
names = ["lb.example.test"]
output_dir = "{work}/out/edge"
deploy = ["lb"]
""")
    for path in (work, *work.rglob("*")):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    ambient = unit.get("AmbientCapabilities", [])
    nginx = haproxy = None
    try:
        first = _as_unit_user(work, "renew", "--all", "--json", ambient=ambient)
        assert first.returncode == 0, first.stderr  # first start: servers not up, deploys pending
        nginx = NginxServer(work / "out/backend/fullchain.pem", work / "out/backend/privkey.pem", workdir=nginx_dir)
        haproxy = HaproxyServer(work / "out/edge/combined.pem", workdir=lb_dir)
        haproxy_group = grp.getgrnam(unit["SupplementaryGroups"][0]).gr_gid
        os.chown(haproxy.socket, 0, haproxy_group)  # as `stats socket ... group haproxy mode 660` would
        os.chmod(haproxy.socket, 0o660)

        done = _as_unit_user(work, "renew", "--all", "--force", "--json", ambient=ambient)
        assert done.returncode == 0, done.stderr + done.stdout
        assert '"state": "deployed"' in done.stdout

        # The unit as it was (CAP_KILL only in the bounding set) cannot signal a root nginx: the test can fail.
        without = _as_unit_user(work, "renew", "backend", "--force", "--json",
                                ambient=[c for c in ambient if c != "CAP_KILL"])
        assert without.returncode == 1 and "not allowed to signal process" in without.stdout, without.stdout
    finally:
        for server in (nginx, haproxy):
            if server is not None:
                server.stop()
        shutil.rmtree(work, ignore_errors=True)
