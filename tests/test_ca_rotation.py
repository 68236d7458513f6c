"""CA rotation with a trust overlap (``certd ca rotate``) on real HAProxy re-encrypting to a real nginx backend.

HAProxy pins the local CA's ``bundle_file`` as its ``ca-file`` (pushed live,
no reload) and health-checks the backend over TLS every 200 ms with SNI and
``verifyhost``; a client thread sends HTTPS requests through HAProxy for the
whole rotation. The rotation stages a new root and intermediate, pins old and
new, promotes the new CA, re-issues the backend under it, then unpins the old
CA. Zero requests and zero health checks may fail at any point, HAProxy's pid
may not change, and afterwards the bundle and HAProxy's ca-file hold only the
new CA.

The failure path runs without servers: a trust sink that cannot take the
bundle stops the rotation before promotion (the old CA keeps signing), and
the same command resumes and finishes once the sink is back.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certd.pki.certs import fingerprint, load_pem_certs
from tests.conftest import WriteConfig
from tests.servers.haproxy import HaproxyServer
from tests.servers.nginx import NginxServer
from tests.servers.ports import make_workdir
from tests.servers.tlsutil import issue_server_cert, make_ca, write_server_files
from tests.test_cli import certd

NAME = "backend-1.internal"


def _body(work: Path, sock: Path, edge_pem: Path, nginx_pid: Path | None) -> str:
    deploy = f'\n[deploy.nginx]\ntype = "signal"\npid_file = "{nginx_pid}"\n' if nginx_pid else ""
    return f"""
[database]
url = "sqlite:///{work}/certd.db"

[issuers.local]
type = "local-ca"
dir = "{work}/ca"
bundle_file = "{work}/pinned/backend-ca.pem"

[deploy.lb]
type = "haproxy"
socket = "{sock}"
cert = "{edge_pem}"
ca_file = "{work}/pinned/backend-ca.pem"
{deploy}
[certificates.backend]
issuer = "local"
names = ["{NAME}"]
lifetime = "1h"
output_dir = "{work}/out/backend"
deploy = [{'"nginx"' if nginx_pid else ''}]
{f'lb_checks = [{{ socket = "{sock}", backend = "be_upstream", server = "upstream", interval = "200ms" }}]'
 if nginx_pid else ''}

[certificates.spare]
issuer = "local"
names = ["spare.internal"]
lifetime = "1h"
output_dir = "{work}/out/spare"
"""


class _Traffic:
    """HTTPS requests through HAProxy, one after another, counting every failure."""

    def __init__(self, url: str, ca: Path) -> None:
        self.url, self.ca = url, ca
        self.sent = self.failed = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and self.sent < 20000:
            self.sent += 1
            try:
                resp = requests.get(self.url, verify=str(self.ca), timeout=5,
                                    headers={"Host": "lb.example.test", "Connection": "close"})
                if resp.status_code != 200:
                    raise RuntimeError(f"HTTP {resp.status_code}")
            except Exception as exc:  # every kind of failure counts
                self.failed += 1
                self.errors.append(str(exc)[:200])
            time.sleep(0.02)

    def __enter__(self) -> _Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _bundle_prints(path: Path) -> set[str]:
    return {fingerprint(c) for c in load_pem_certs(path.read_bytes())}


def _served_issuer(work: Path) -> x509.Name:
    return load_pem_certs((work / "out/backend/cert.pem").read_bytes())[0].issuer


def test_rotation_keeps_every_request_and_health_check_green(
    write_config: WriteConfig, tmp_path: Path, nginx_factory: Any, haproxy_factory: Any,
) -> None:
    work = make_workdir("carotate")
    nginx_dir, lb_dir = work / "nginx", work / "lb"
    nginx_dir.mkdir()
    lb_dir.mkdir()
    sock = lb_dir / "admin.sock"
    edge_ca = make_ca("edge test CA")
    (tmp_path / "edge").mkdir()
    edge = write_server_files(tmp_path / "edge", issue_server_cert(edge_ca, ["lb.example.test"]), edge_ca)
    config = write_config(_body(work, sock, edge["combined"], nginx_dir / "nginx.pid"))
    first = certd("renew", "--all", config=config)  # nginx and HAProxy are not running yet: deploy pending
    assert first.returncode == 0, first.stderr
    nginx: NginxServer = nginx_factory(work / "out/backend/fullchain.pem", work / "out/backend/privkey.pem",
                                       workdir=nginx_dir)
    bundle = work / "pinned/backend-ca.pem"
    haproxy: HaproxyServer = haproxy_factory(
        edge["combined"], backend_server=f"127.0.0.1:{nginx.port}", backend_ca_file=bundle,
        backend_sni=f'"{NAME}"', backend_options=f"verifyhost {NAME} check check-ssl check-sni {NAME} inter 200ms "
        f"crt {edge['combined']}",  # HAProxy applies a new ca-file live only to server lines with a client cert
        workdir=lb_dir,
    )
    assert certd("deploy", "backend", config=config).returncode == 0
    old_prints, old_issuer = _bundle_prints(bundle), _served_issuer(work)
    time.sleep(0.6)
    assert haproxy.upstream_stat()["status"].startswith("UP")
    checks_failed_before = int(haproxy.upstream_stat()["chkfail"] or 0)

    with _Traffic(f"https://127.0.0.1:{haproxy.port}/", edge["ca"]) as traffic:
        time.sleep(1)
        rotated = certd("ca", "rotate", "local", "--json", config=config, timeout=180)
        time.sleep(1)
    report = json.loads(rotated.stdout)
    assert rotated.returncode == 0 and report["ok"], rotated.stdout + rotated.stderr
    phases = [p["phase"] for p in report["phases"]]
    assert phases.index("pin") < phases.index("promote") < phases.index("reissue") < phases.index("unpin"), phases
    assert sorted(r["name"] for r in report["renewals"]) == ["backend", "spare"]
    assert all(r["outcome"] == "renewed" for r in report["renewals"]), report["renewals"]

    assert traffic.failed == 0 and traffic.sent > 20, (traffic.sent, traffic.errors[:5])
    stat = haproxy.upstream_stat()
    assert stat["status"].startswith("UP") and int(stat["chkfail"] or 0) == checks_failed_before, stat
    assert haproxy._proc.proc.poll() is None and haproxy.pid == haproxy._proc.pid  # no reload

    new_prints = _bundle_prints(bundle)
    assert len(new_prints) == 2 and not (new_prints & old_prints)  # the old CA is gone, only the new pair left
    shown = haproxy.runtime(f"show ssl ca-file {bundle}")
    assert shown.count("Certificate #") == 2, shown
    served = load_pem_certs((work / "out/backend/cert.pem").read_bytes())[0]
    new_inter = next(c for c in load_pem_certs(bundle.read_bytes()) if c.subject != c.issuer)
    served.verify_directly_issued_by(new_inter)
    assert _served_issuer(work) == old_issuer  # same names, new keys: only the signature tells them apart

    again = certd("ca", "status", "local", "--json", config=config)
    status = json.loads(again.stdout)
    assert status["staged"] == [] and status["retired"] == [] and status["on_retired"] == []


def test_a_sink_that_cannot_take_the_bundle_stops_before_promotion(
    write_config: WriteConfig, tmp_path: Path, haproxy_factory: Any,
) -> None:
    work = make_workdir("carotate-stop")
    lb_dir = work / "lb"
    lb_dir.mkdir()
    sock = lb_dir / "admin.sock"
    edge_ca = make_ca("edge test CA")
    (tmp_path / "edge").mkdir()
    edge = write_server_files(tmp_path / "edge", issue_server_cert(edge_ca, ["lb.example.test"]), edge_ca)
    config = write_config(_body(work, sock, edge["combined"], None))
    assert certd("renew", "--all", config=config).returncode == 0
    served_before = (work / "out/backend/cert.pem").read_bytes()
    signing_before = (work / "ca/intermediate.pem").read_bytes()

    # HAProxy runs, but from a config that pins another copy of the bundle: `set ssl ca-file` is refused.
    bundle = work / "pinned/backend-ca.pem"
    copy = work / "pinned/copy.pem"
    copy.write_bytes(bundle.read_bytes())
    wrong: HaproxyServer = haproxy_factory(edge["combined"], backend_server="127.0.0.1:9", backend_ca_file=copy,
                                           backend_sni=f'"{NAME}"', backend_options=f"crt {edge['combined']}",
                                           workdir=lb_dir)
    stopped = certd("ca", "rotate", "local", config=config)
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert "refused: lb:" in stopped.stdout and "stopped before promoting" in stopped.stdout, stopped.stdout
    assert "Traceback" not in stopped.stderr
    assert (work / "ca/intermediate.pem").read_bytes() == signing_before  # the old CA still signs
    assert (work / "out/backend/cert.pem").read_bytes() == served_before
    status = json.loads(certd("ca", "status", "local", "--json", config=config).stdout)
    assert len(status["staged"]) == 2 and status["retired"] == []
    # Still signed by the old CA meanwhile; the certificate is published, but the bundle does not reach the
    # HAProxy that pins a stale copy: that is no success (recorded at the trust step), not a warning.
    renewed = certd("renew", "spare", "--force", "--json", config=config)
    assert renewed.returncode == 1, renewed.stderr
    (result,) = json.loads(renewed.stdout)["results"]
    assert result["failed_step"] == "trust" and "refused set ssl ca-file" in result["error"], result
    assert load_pem_certs((work / "out/spare/chain.pem").read_bytes())[0].fingerprint(
        hashes.SHA256()) == load_pem_certs(signing_before)[0].fingerprint(hashes.SHA256())

    wrong.stop()  # the operator fixes HAProxy's config
    haproxy: HaproxyServer = haproxy_factory(
        edge["combined"], backend_server="127.0.0.1:9", backend_ca_file=bundle, backend_sni=f'"{NAME}"',
        backend_options=f"crt {edge['combined']}", workdir=lb_dir,
    )
    resumed = certd("ca", "rotate", "local", config=config)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming: next CA" in resumed.stdout and "done" in resumed.stdout
    assert haproxy.runtime(f"show ssl ca-file {bundle}").count("Certificate #") == 2
    assert (work / "ca/intermediate.pem").read_bytes() != signing_before


def test_an_issuer_certd_does_not_run_is_refused(write_config: WriteConfig, tmp_path: Path) -> None:
    config = write_config(f"""
[issuers.acme]
type = "acme"
directory = "https://127.0.0.1:1/dir"
http01_listen = "127.0.0.1:1"

[certificates.edge]
issuer = "acme"
names = ["lb.example.test"]
output_dir = "{tmp_path}/out/edge"
""", db_url=f"sqlite:///{tmp_path}/certd.db")
    proc = certd("ca", "rotate", "acme", config=config)
    assert proc.returncode == 2 and "cannot be rotated by certd" in proc.stderr, proc.stderr
    proc = certd("ca", "rotate", "nope", config=config)
    assert proc.returncode == 2 and "no issuer named nope (known: acme)" in proc.stderr, proc.stderr
