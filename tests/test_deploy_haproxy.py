"""The ``haproxy`` deploy target against a real HAProxy: rotation over the runtime API with no reload.

Every test first renews once with a deploy-less config (HAProxy needs certd's combined.pem to exist before it
starts), then starts HAProxy on that published combined.pem and reopens certd with the target configured, the
way an operator adds a load balancer to a certificate that is already published.
"""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from certd.config.load import load_config
from certd.config.model import HaproxyDeployConfig
from certd.deploy.base import DeployContext, PublishedPaths
from certd.deploy.haproxy import HaproxyTarget
from certd.engine.app import App
from certd.errors import DeployError
from certd.pki.certs import load_pem_certs, serial_hex
from tests.conftest import WriteConfig
from tests.servers.haproxy import HaproxyServer
from tests.servers.ports import ServerProcess, free_port, make_workdir, tcp_open
from tests.servers.tlsutil import issue_server_cert, make_ca, write_server_files

NAME = "lb.example.test"

BASE = """
[database]
url = "sqlite:///{tmp}/certd.db"

[issuers.local]
type = "local-ca"
dir = "{tmp}/local-ca"

[certificates.edge]
issuer = "local"
names = ["lb.example.test", "www.example.test"]
output_dir = "{tmp}/out/edge"
"""


class HandshakeLoop:
    """A client doing full TLS handshakes back to back, verifying against the pinned root, in its own thread.

    It records the serial of every certificate it was served and every failure, and stops by itself after
    ``max_handshakes`` or ``max_seconds``, whichever comes first, so a hung server cannot hang the test.
    """

    def __init__(self, port: int, sni: str, root_pem: Path, *, max_handshakes: int = 3000,
                 max_seconds: float = 90.0) -> None:
        self.port = port
        self.sni = sni
        self.ctx = ssl.create_default_context(cafile=str(root_pem))
        self.max_handshakes = max_handshakes
        self.max_seconds = max_seconds
        self.serials: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="handshake-loop", daemon=True)

    def _one(self) -> str:
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw,
            self.ctx.wrap_socket(raw, server_hostname=self.sni) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return serial_hex(x509.load_der_x509_certificate(der))

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and len(self.serials) + len(self.failures) < self.max_handshakes:
            if time.monotonic() > deadline:
                break
            try:
                serial = self._one()
            except (OSError, ssl.SSLError, AssertionError) as exc:
                with self._lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            with self._lock:
                self.serials.append(serial)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.serials) + len(self.failures)

    def seen(self, serial: str) -> bool:
        with self._lock:
            return serial in self.serials

    def wait_for(self, done: Callable[[], bool], limit: float = 30.0) -> None:
        """Wait (bounded) until ``done()`` or the loop ended on its own."""
        deadline = time.monotonic() + limit
        while not done() and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)

    def __enter__(self) -> HandshakeLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def served_serial(port: int, sni: str = NAME) -> str:
    """What the endpoint serves right now (no verification: we want to see it even if it is wrong)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return serial_hex(x509.load_der_x509_certificate(der))


def disk_serial(out: Path) -> str:
    return serial_hex(load_pem_certs((out / "cert.pem").read_bytes())[0])


def open_transactions(server: HaproxyServer) -> list[str]:
    """Uncommitted `set ssl cert` transactions: `show ssl cert` lists them with a leading `*`."""
    return [line for line in server.runtime("show ssl cert").splitlines() if line.startswith("*")]


def with_target(body: str, target: str, *, verify: str = "", extra: str = "") -> str:
    """BASE plus deploy/verify keys on the certificate and the [deploy.lb] table."""
    return body.replace(
        'output_dir = "{tmp}/out/edge"\n',
        f'output_dir = "{{tmp}}/out/edge"\ndeploy = ["lb"]\n{verify}{extra}\n',
    ) + target


@pytest.fixture
def bootstrapped(write_config: WriteConfig, tmp_path: Path) -> Iterator[str]:
    """Renew once without deploy targets; yields the first serial (files are in {tmp}/out/edge)."""
    app = App.open(load_config(write_config(BASE, name="bootstrap.toml")))
    try:
        first = app.pipeline.renew("edge")
        assert first.outcome == "renewed", first
        assert first.serial is not None
        yield first.serial
    finally:
        app.close()


def haproxy_target(socket_path: Path | str, cert: Path | str, timeout: str = "10s") -> str:
    return f'\n[deploy.lb]\ntype = "haproxy"\nsocket = "{socket_path}"\ncert = "{cert}"\ntimeout = "{timeout}"\n'


def verify_line(port: int, root: Path, sni: str = NAME) -> str:
    return f'verify = [{{ endpoint = "127.0.0.1:{port}", sni = "{sni}", ca_bundle = "{root}" }}]\n'


def open_app(write_config: WriteConfig, body: str) -> App:
    return App.open(load_config(write_config(body, name="certd.toml")))


def test_rotation_over_runtime_api_drops_no_handshake(
    bootstrapped: str, haproxy_factory: Any, write_config: WriteConfig, tmp_path: Path
) -> None:
    out = tmp_path / "out/edge"
    root = tmp_path / "local-ca/root.pem"
    server: HaproxyServer = haproxy_factory(out / "combined.pem")
    pid = server.pid
    body = with_target(BASE, haproxy_target(server.socket, out / "combined.pem"),
                       verify=verify_line(server.port, root), extra='verify_timeout = "20s"\n')
    app = open_app(write_config, body)
    try:
        with HandshakeLoop(server.port, NAME, root) as loop:
            loop.wait_for(lambda: loop.count >= 100)
            assert loop.seen(bootstrapped), loop.failures[:3]
            result = app.pipeline.renew("edge", force=True)
            assert (result.outcome, result.state) == ("renewed", "served"), result
            assert result.serial is not None and result.serial != bootstrapped
            before = loop.count
            loop.wait_for(lambda: loop.count >= max(before + 100, 300))
        assert loop.failures == []
        assert loop.count >= 300
        assert loop.seen(result.serial)
        # Once the new serial appeared, the old one never came back: commit is a switch, not a blend.
        first_new = loop.serials.index(result.serial)
        assert bootstrapped not in loop.serials[first_new:]

        assert server.pid == pid and server._proc.proc.poll() is None  # no restart, no reload
        assert served_serial(server.port) == result.serial
        assert disk_serial(out) == result.serial  # certd published the file too: a restart loads the same
        shown = server.runtime(f"show ssl cert {out / 'combined.pem'}")
        loaded = re.search(r"^Serial: ([0-9A-F]+)$", shown, re.MULTILINE)
        assert loaded is not None and int(loaded.group(1), 16) == int(result.serial, 16)
        assert open_transactions(server) == []

        versions = {v.serial: v.state for v in app.inventory.versions("edge")}
        assert versions[result.serial] == "served"
        messages = [e.message for e in app.inventory.events("edge") if e.kind == "deploy.done"]
        assert any(f"committed serial {result.serial}" in m and str(server.socket) in m for m in messages)
    finally:
        app.close()


def test_missing_socket_fails_the_deploy_step_and_the_old_cert_stays(
    bootstrapped: str, haproxy_factory: Any, write_config: WriteConfig, tmp_path: Path
) -> None:
    out = tmp_path / "out/edge"
    server: HaproxyServer = haproxy_factory(out / "combined.pem")
    missing = tmp_path / "no-such-dir" / "admin.sock"
    root = tmp_path / "local-ca" / "root.pem"
    body = with_target(BASE, haproxy_target(missing, out / "combined.pem"), verify=verify_line(server.port, root))
    app = open_app(write_config, body)
    try:  # HAProxy answers on the verify endpoint, so the missing socket is a mistake, not a first start
        result = app.pipeline.renew("edge", force=True)
        assert (result.outcome, result.state, result.failed_step) == ("failed", "failed", "deploy"), result
        assert f"deploy lb: HAProxy runtime socket {missing} does not exist" in (result.error or "")
        assert result.reason == "TargetAbsent"
        assert served_serial(server.port) == bootstrapped
        versions = {v.serial: v for v in app.inventory.versions("edge")}
        assert versions[result.serial or ""].failed_step == "deploy"
    finally:
        app.close()


def test_unknown_cert_path_is_a_clear_error_and_leaves_no_transaction(
    bootstrapped: str, haproxy_factory: Any, write_config: WriteConfig, tmp_path: Path
) -> None:
    out = tmp_path / "out/edge"
    server: HaproxyServer = haproxy_factory(out / "combined.pem")
    # A real file with the right content, but not the name HAProxy loaded it by: HAProxy must refuse it.
    stranger = tmp_path / "elsewhere.pem"
    shutil.copyfile(out / "combined.pem", stranger)
    app = open_app(write_config, with_target(BASE, haproxy_target(server.socket, stranger)))
    try:
        result = app.pipeline.renew("edge", force=True)
        assert (result.outcome, result.failed_step) == ("failed", "deploy"), result
        error = result.error or ""
        assert f"HAProxy does not know a certificate named {stranger}" in error
        assert "not referenced by the configuration" in error  # HAProxy's own words, quoted
        assert "PRIVATE KEY" not in error and "BEGIN" not in error
        assert open_transactions(server) == []
        assert served_serial(server.port) == bootstrapped
        events = " ".join(e.message for e in app.inventory.events("edge"))
        assert "PRIVATE KEY" not in events
    finally:
        app.close()


def test_failed_verify_with_rollback_pushes_the_previous_cert_back(
    bootstrapped: str, haproxy_factory: Any, write_config: WriteConfig, tmp_path: Path
) -> None:
    """Two load balancers verify, certd deploys to one only: the other keeps the old certificate, verify fails,
    and rollback must push the previous certificate back into the first HAProxy over the runtime API."""
    out = tmp_path / "out/edge"
    root = tmp_path / "local-ca/root.pem"
    lb = haproxy_factory(out / "combined.pem")
    frozen_copy = tmp_path / "frozen" / "combined.pem"
    frozen_copy.parent.mkdir()
    shutil.copyfile(out / "combined.pem", frozen_copy)
    forgotten = haproxy_factory(frozen_copy)  # an LB nobody told certd about: never gets the new certificate
    verify = (f'verify = [{{ endpoint = "127.0.0.1:{lb.port}", sni = "{NAME}", ca_bundle = "{root}" }}, '
              f'{{ endpoint = "127.0.0.1:{forgotten.port}", sni = "{NAME}", ca_bundle = "{root}" }}]\n')
    body = with_target(BASE, haproxy_target(lb.socket, out / "combined.pem"), verify=verify,
                       extra='verify_timeout = "3s"\nrollback = true\n')
    app = open_app(write_config, body)
    try:
        result = app.pipeline.renew("edge", force=True)
        assert (result.outcome, result.failed_step) == ("failed", "verify"), result
        assert f"serves serial {bootstrapped}, expected {result.serial}" in (result.error or "")
        assert served_serial(lb.port) == bootstrapped  # pushed back over the runtime API
        assert disk_serial(out) == bootstrapped  # and the previous generation is the published one again
        assert open_transactions(lb) == []
        states = {v.serial: v.state for v in app.inventory.versions("edge")}
        assert states == {bootstrapped: "served", result.serial: "failed"}
        kinds = [e.kind for e in app.inventory.events("edge")]
        assert "rollback.done" in kinds and "rollback.failed" not in kinds
        deploys = [e.message for e in app.inventory.events("edge") if e.kind == "deploy.done"]
        assert any(f"committed serial {bootstrapped}" in m for m in deploys)
        assert any(f"committed serial {result.serial}" in m for m in deploys)
    finally:
        app.close()


def test_crt_list_reference_is_confirmed(bootstrapped: str, write_config: WriteConfig, tmp_path: Path) -> None:
    """HAProxy loading the certificate through a crt-list: the target confirms the crt-list uses the path.

    This HAProxy also has a TCP stats socket ("host:port"), which the first rotation goes through."""
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy not installed (scripts/install-system-deps.sh test installs haproxy)")
    out = tmp_path / "out/edge"
    root = tmp_path / "local-ca/root.pem"
    work = make_workdir("haproxy-crtlist")
    crt_list = work / "certs.lst"
    crt_list.write_text(f"{out / 'combined.pem'} [alpn h2,http/1.1] {NAME}\n")
    port = free_port()
    sock = work / "admin.sock"
    tcp_admin = free_port()
    (work / "haproxy.cfg").write_text(
        f"global\n    stats socket {sock} mode 600 level admin\n"
        f"    stats socket ipv4@127.0.0.1:{tcp_admin} level admin\n"
        "defaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n"
        f"frontend fe\n    bind 127.0.0.1:{port} ssl crt-list {crt_list}\n"
        "    http-request return status 200 content-type text/plain string ok\n"
    )
    proc = ServerProcess("haproxy", ["haproxy", "-db", "-f", str(work / "haproxy.cfg")], work / "haproxy.log",
                         cwd=work)
    app: App | None = None
    try:
        proc.wait_until(lambda: tcp_open(port) and sock.exists() and tcp_open(tcp_admin), "crt-list HAProxy")
        target = haproxy_target(f"127.0.0.1:{tcp_admin}", out / "combined.pem") + f'crt_list = "{crt_list}"\n'
        app = open_app(write_config, with_target(BASE, target, verify=verify_line(port, root)))
        result = app.pipeline.renew("edge", force=True)
        assert (result.outcome, result.state) == ("renewed", "served"), result
        deploys = [e.message for e in app.inventory.events("edge") if e.kind == "deploy.done"]
        assert any(f"(used by crt-list {crt_list}) via 127.0.0.1:{tcp_admin}" in m for m in deploys), deploys

        # A crt-list that HAProxy has loaded but that does not name the path: refused before anything changes.
        other = tmp_path / "other.pem"
        shutil.copyfile(out / "combined.pem", other)
        app.close()
        target = haproxy_target(sock, other) + f'crt_list = "{crt_list}"\n'
        app = open_app(write_config, with_target(BASE, target))
        bad = app.pipeline.renew("edge", force=True)
        assert (bad.outcome, bad.failed_step) == ("failed", "deploy"), bad
        assert f"crt-list {crt_list} does not reference {other}" in (bad.error or "")
        assert served_serial(port) == result.serial
    finally:
        if app is not None:
            app.close()
        proc.stop()
        shutil.rmtree(work, ignore_errors=True)



def test_foreign_open_transaction_is_left_alone(
    bootstrapped: str, haproxy_factory: Any, write_config: WriteConfig, tmp_path: Path
) -> None:
    """An operator is mid-rotation on another certificate: HAProxy 2.6 would put our payload into *their*
    transaction, so certd must wait, give up after its timeout, and not touch it."""
    out = tmp_path / "out/edge"
    server: HaproxyServer = haproxy_factory(out / "combined.pem")
    theirs = tmp_path / "operator.pem"
    assert "New empty certificate store" in server.runtime(f"new ssl cert {theirs}")
    payload = (out / "combined.pem").read_text()
    assert "Transaction created" in server.runtime(f"set ssl cert {theirs} <<\n{payload}")
    app = open_app(write_config, with_target(BASE, haproxy_target(server.socket, out / "combined.pem", "1s")))
    try:
        result = app.pipeline.renew("edge", force=True)
        assert (result.outcome, result.failed_step) == ("failed", "deploy"), result
        assert f"open runtime-API transaction on {theirs}" in (result.error or "")
        assert open_transactions(server) == [f"*{theirs}"]  # still theirs, untouched
        assert served_serial(server.port) == bootstrapped

        assert "aborted" in server.runtime(f"abort ssl cert {theirs}").lower()
        again = app.pipeline.renew("edge", force=True)
        assert (again.outcome, again.state) == ("renewed", "deployed"), again
        assert served_serial(server.port) == again.serial
    finally:
        app.close()


def test_refused_commit_is_aborted_and_quoted_without_key_material(haproxy_factory: Any, tmp_path: Path) -> None:
    """A key that does not match the certificate: HAProxy accepts the `set` but refuses the `commit`; the target
    must abort (HAProxy has one transaction slot) and quote HAProxy, never the payload."""
    ca = make_ca()
    files = write_server_files(tmp_path, issue_server_cert(ca), ca)
    server: HaproxyServer = haproxy_factory(files["combined"])
    new, stranger = issue_server_cert(ca), issue_server_cert(ca)
    ctx = DeployContext(
        certificate="edge", serial=serial_hex(new.cert), names=("localhost",), leaf=new.cert, chain=(),
        roots=(ca.cert,), key_pem=stranger.key_pem, fullchain_pem=new.cert_pem,
        combined_pem=stranger.key_pem + new.cert_pem, paths=PublishedPaths.under(tmp_path),
    )
    config = HaproxyDeployConfig(type="haproxy", socket=str(server.socket), cert=files["combined"],
                                 timeout=timedelta(seconds=5))
    with pytest.raises(DeployError) as info:
        HaproxyTarget("lb", config).deploy(ctx)
    message = str(info.value)
    assert message.startswith(f"deploy lb: HAProxy refused commit ssl cert {files['combined']}: ")
    assert "inconsistencies between private key and certificate" in message
    assert "PRIVATE KEY" not in message and "BEGIN" not in message
    assert open_transactions(server) == []
    assert served_serial(server.port, "localhost") == serial_hex(load_pem_certs(files["cert"].read_bytes())[0])


def test_first_start_publishes_then_deploy_completes_once_haproxy_runs(
    haproxy_factory: Any, write_config: WriteConfig, tmp_path: Path
) -> None:
    """An estate's first start: no HAProxy yet. The files are published, nothing is failed; deploy completes it."""
    out = tmp_path / "out/edge"
    sock = tmp_path / "run" / "admin.sock"
    body = with_target(BASE, haproxy_target(sock, out / "combined.pem"))
    app = open_app(write_config, body)
    try:
        first = app.pipeline.renew("edge")
        assert (first.outcome, first.state, first.reason) == ("renewed", "published", "DeployPending"), first
        row = app.inventory.certificate("edge")
        assert row is not None and (row.failures, row.last_error, row.next_attempt_at) == (0, None, None)
        assert [v.state for v in app.inventory.versions("edge")] == ["published"]
        assert "deploy.pending" in [e.kind for e in app.inventory.events("edge")]

        sock.parent.mkdir()
        server: HaproxyServer = haproxy_factory(out / "combined.pem", workdir=sock.parent)
        done = app.pipeline.deploy("edge")
        assert (done.outcome, done.state) == ("deployed", "deployed"), done
        assert served_serial(server.port) == first.serial
    finally:
        app.close()


class _FakeRuntimeSocket:
    """A UNIX socket where HAProxy's should be: it accepts and stays silent, or answers ``reply`` to anything."""

    def __init__(self, path: Path, reply: bytes | None) -> None:
        self.path, self.reply = path, reply
        self.commands: list[bytes] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            if self.reply is None:
                self._held.append(conn)  # never answers, never closes
                continue
            with conn:
                conn.settimeout(2)
                try:
                    self.commands.append(conn.recv(65536))
                    conn.sendall(self.reply)
                except OSError:
                    pass

    def close(self) -> None:
        self._server.close()
        for conn in self._held:
            conn.close()


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        pytest.param(None, "HAProxy runtime socket {sock} did not answer within 1s", id="silent"),
        pytest.param(b"Unknown command. Please enter one of the following commands only :\n",
                     "HAProxy refused set ssl cert", id="not-haproxy"),
    ],
)
def test_a_runtime_socket_that_is_not_haproxy_fails_the_deploy_naming_it(
    bootstrapped: str, write_config: WriteConfig, tmp_path: Path, reply: bytes | None, expected: str
) -> None:
    out = tmp_path / "out/edge"
    sock = tmp_path / "fake.sock"
    fake = _FakeRuntimeSocket(sock, reply)
    app = open_app(write_config, with_target(BASE, haproxy_target(sock, out / "combined.pem", "1s")))
    try:
        started = time.monotonic()
        result = app.pipeline.renew("edge", force=True)
        assert time.monotonic() - started < 30
        assert (result.outcome, result.failed_step) == ("failed", "deploy"), result
        error = result.error or ""
        assert expected.format(sock=sock) in error, error
        assert "PRIVATE KEY" not in error and "BEGIN" not in error
        row = app.inventory.certificate("edge")
        assert row is not None and row.failures == 1 and (row.last_error or "").startswith("deploy: ")
    finally:
        app.close()
        fake.close()
