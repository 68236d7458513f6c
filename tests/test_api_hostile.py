"""The HTTP API of a real ``certd run`` process under hostile input: huge and slow bodies, slow heads,
replayed signatures across a restart, and listen addresses that would expose it.

Sizes are those of the issue: a 300 MB chunked body must be cut at 64 KiB while the daemon's resident set
stays under 150 MB, also with ten such clients at once (``bench/api_body_flood.py`` runs fifty).
"""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from certd.api.limits import HEAD_TIMEOUT, MAX_BODY, MAX_CONNECTIONS
from certd.core.signing import API_LABEL, signed_headers
from tests.cli import certd
from tests.conftest import WriteConfig
from tests.servers.ports import free_port
from tests.test_daemon import REPO, Daemon

TOKEN = "hostile-test-token"
MB = 1024 * 1024
RSS_LIMIT_KB = 150 * 1024


def _config(listen: str, extra: str = "", *, token: bool = True) -> str:
    token_line = 'api_token_file = "{tmp}/api.token"\n' if token else ""
    return f"""
[daemon]
check_interval = "1h"
workers = 2
api_listen = "{listen}"
{token_line}{extra}

[issuers.local]
type = "local-ca"
dir = "{{tmp}}/ca"

[certificates.a]
issuer = "local"
names = ["a.example.test"]
output_dir = "{{tmp}}/out/a"

[certificates.b]
issuer = "local"
names = ["b.example.test"]
output_dir = "{{tmp}}/out/b"
"""


def _start(write_config: WriteConfig, tmp_path: Path, db_url: str, extra: str = "",
           listen_host: str = "127.0.0.1", name: str = "daemon") -> Daemon:
    (tmp_path / "api.token").write_text(TOKEN + "\n")
    port = free_port()
    config = write_config(_config(f"{listen_host}:{port}", extra), db_url=db_url)
    return Daemon(config, port, tmp_path / f"{name}.log")


@pytest.fixture
def daemon(write_config: WriteConfig, tmp_path: Path, sqlite_url: str) -> Iterator[Daemon]:
    d = _start(write_config, tmp_path, sqlite_url)
    yield d
    d.stop()


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


class _RssWatch:
    """Samples the daemon's VmRSS every 20 ms while a block runs; ``peak_kb`` also checks the kernel's VmHWM."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.samples.append(_status_kb(self.pid, "VmRSS"))

    def __enter__(self) -> _RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_kb(self) -> int:
        return max([*self.samples, _status_kb(self.pid, "VmHWM")])


def _stream(url: str, total: int, sent: list[int]) -> int:
    """POST ``total`` bytes of zeros, chunked (no Content-Length), counting what the server let us send."""
    chunk = bytes(64 * 1024)

    def body() -> Iterator[bytes]:
        for _ in range(total // len(chunk)):
            sent[0] += len(chunk)
            yield chunk

    try:
        return requests.post(url, data=body(), timeout=60).status_code
    except requests.ConnectionError:
        return -1  # reset before the answer could be read; counted by the caller


def test_a_streamed_300_mb_chunked_body_is_cut_at_the_cap(daemon: Daemon) -> None:
    pid = daemon.proc.pid
    before = _status_kb(pid, "VmRSS")
    sent = [0]
    with _RssWatch(pid) as watch:
        status = _stream(f"{daemon.url}/v1/certificates/a/renew", 300 * MB, sent)
    assert status == 413
    assert sent[0] < 16 * MB, f"the server read {sent[0]} bytes before refusing"  # cap + socket buffers
    assert watch.peak_kb < RSS_LIMIT_KB, (before, watch.peak_kb)
    assert daemon.get("/healthz").status_code == 200


def test_ten_clients_streaming_50_mb_each(daemon: Daemon) -> None:
    pid = daemon.proc.pid
    results: list[int] = []
    sent = [[0] for _ in range(10)]
    with _RssWatch(pid) as watch:
        threads = [threading.Thread(target=lambda i=i: results.append(
            _stream(f"{daemon.url}/v1/certificates/b/renew", 50 * MB, sent[i]))) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results.count(413) >= 9, results  # a reset racing the answer is a client-side artefact, not a read
    assert all(s[0] < 16 * MB for s in sent), sent
    assert watch.peak_kb < RSS_LIMIT_KB, watch.peak_kb
    assert daemon.get("/v1/certificates/a").status_code == 200


def _raw(port: int, data: bytes, *, timeout: float = 15) -> tuple[bytes, float]:
    """Send ``data`` and read until the server closes; (answer, seconds until closed)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return answer, time.monotonic() - started


def test_heads_and_header_counts_are_capped(daemon: Daemon) -> None:
    port = int(daemon.url.rsplit(":", 1)[1])
    whole, _ = _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
    assert whole.startswith(b"HTTP/1.1 431")  # arrived in one read: parsed, then refused by size
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # still arriving: never buffered
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 17_000)
        time.sleep(0.3)
        try:
            sock.sendall(b"a" * 3_000 + b"\r\n\r\n")
            partial = sock.recv(65536)
        except ConnectionResetError:
            partial = b"HTTP/1.1 400 (reset)"
    assert partial.startswith(b"HTTP/1.1 400"), partial
    many = b"".join(b"X-H%d: 1\r\n" % i for i in range(65))
    answer, _ = _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431")
    declared, _ = _raw(port, b"POST /v1/certificates/a/renew HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                       % (MAX_BODY + 1))
    assert declared.startswith(b"HTTP/1.1 413") and b"connection: close" in declared.lower()


@pytest.mark.slow
def test_slow_clients_are_cut_off(daemon: Daemon) -> None:
    """A silent connection, a head sent byte by byte, a body that stops: none holds a slot past its deadline."""
    port = int(daemon.url.rsplit(":", 1)[1])
    out: dict[str, tuple[bytes, float]] = {}

    def silent() -> None:
        out["silent"] = _raw(port, b"", timeout=HEAD_TIMEOUT + 10)

    def dribble() -> None:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=HEAD_TIMEOUT + 10) as sock:
            try:
                for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                    sock.sendall(bytes([byte]))
                    time.sleep(0.5)
            except OSError:
                pass
        out["dribble"] = (b"", time.monotonic() - started)

    def stalled_body() -> None:
        out["body"] = _raw(port, b"POST /v1/certificates/a/renew HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                           b"0123456789", timeout=HEAD_TIMEOUT + 10)

    threads = [threading.Thread(target=f) for f in (silent, dribble, stalled_body)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert HEAD_TIMEOUT - 1 < out["silent"][1] < HEAD_TIMEOUT + 3, out["silent"]
    assert out["dribble"][1] < HEAD_TIMEOUT + 3, out["dribble"]  # 110 bytes at 2/s would take 55 s
    assert out["body"][0].startswith(b"HTTP/1.1 408"), out["body"]
    assert daemon.get("/healthz").status_code == 200


def _closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False


def test_idle_connections_beyond_the_cap_make_room_for_a_request(daemon: Daemon) -> None:
    """Idle connections past the cap: the oldest are closed, and a client that asks at once is answered."""
    port = int(daemon.url.rsplit(":", 1)[1])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < MAX_CONNECTIONS + 400:
        pytest.skip(f"holding {MAX_CONNECTIONS + 100} connections needs more descriptors than {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, MAX_CONNECTIONS + 400), hard))
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_CONNECTIONS + 100)]
    try:
        time.sleep(0.5)
        assert daemon.get("/healthz").status_code == 200
        closed = [i for i, sock in enumerate(idle) if _closed(sock)]
        assert len(closed) >= 100, len(closed)  # the daemon's cap is MAX_CONNECTIONS: the rest made room
        assert set(range(100)) <= set(closed)  # the oldest went first
    finally:
        for sock in idle:
            sock.close()


def test_a_signature_used_before_a_restart_is_refused_after_it(
    write_config: WriteConfig, tmp_path: Path, db_url: str
) -> None:
    path = "/v1/certificates/a/renew?if_due=true"
    headers = signed_headers(TOKEN, API_LABEL, "POST", path, b"", time.time())
    first = _start(write_config, tmp_path, db_url, name="first")
    try:
        assert requests.post(first.url + path, headers=headers, timeout=10).status_code == 202
    finally:
        assert first.stop() == 0
    second = _start(write_config, tmp_path, db_url, name="second")
    try:
        replay = requests.post(second.url + path, headers=headers, timeout=10)
        assert replay.status_code == 401 and "already used" in replay.json()["detail"]
        for other in ("/v1/certificates/b/renew?if_due=true", "/v1/certificates/a/deploy",
                      "/v1/certificates/a/renew?if_due=false"):
            assert requests.post(second.url + other, headers=headers, timeout=10).status_code == 401, other
    finally:
        assert second.stop() == 0


def _run(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certd", "-c", str(config), "run"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def test_all_interfaces_without_a_token_is_a_config_error(write_config: WriteConfig, sqlite_url: str) -> None:
    config = write_config(_config(f"0.0.0.0:{free_port()}", token=False), db_url=sqlite_url)
    done = _run(config)
    assert done.returncode == 2, done.stderr
    assert f"{config}: daemon.api_listen: '0.0.0." in done.stderr and "api_token_file" in done.stderr
    (config.parent / "api.token").write_text(TOKEN)
    config.write_text(config.read_text().replace("[daemon]\n", '[daemon]\napi_token_file = "api.token"\n'))
    done = _run(config)  # a token, but reads neither authenticated nor declared public
    assert done.returncode == 2 and "daemon.api_listen" in done.stderr and "api_public_reads" in done.stderr
    check = certd("check-config", config=config)
    assert check.returncode == 2 and "daemon.api_listen" in (check.stdout + check.stderr)


def test_all_interfaces_with_token_and_public_reads_starts(
    write_config: WriteConfig, tmp_path: Path, sqlite_url: str
) -> None:
    d = _start(write_config, tmp_path, sqlite_url, extra="api_public_reads = true", listen_host="0.0.0.0")
    try:
        assert d.get("/v1/certificates").status_code == 200
        assert requests.post(d.url + "/v1/certificates/a/renew", timeout=5).status_code == 401
    finally:
        assert d.stop() == 0


def test_read_auth_refuses_unauthenticated_reads(write_config: WriteConfig, tmp_path: Path, sqlite_url: str) -> None:
    d = _start(write_config, tmp_path, sqlite_url, extra="api_read_auth = true", listen_host="0.0.0.0")
    try:
        resp = d.get("/v1/certificates")
        assert resp.status_code == 401 and "a.example" not in resp.text
        assert d.get("/v1/certificates", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert d.get("/healthz").status_code == 200 and d.get("/metrics").status_code == 200
    finally:
        assert d.stop() == 0


def test_a_superscript_timestamp_on_the_wire_is_401_not_500(daemon: Daemon) -> None:
    """``X-Certd-Timestamp: ²`` on the wire (UTF-8 bytes, as curl sends them) is a 401."""
    port = int(daemon.url.rsplit(":", 1)[1])
    answer, _ = _raw(port, "POST /v1/certificates/a/renew HTTP/1.1\r\nHost: x\r\nX-Certd-Timestamp: ²\r\n"
                     "X-Certd-Signature: v1={}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                     .format("0" * 64).encode())
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


def test_the_curl_example_in_the_docs_is_accepted(daemon: Daemon, tmp_path: Path) -> None:
    text = (REPO / "docs" / "daemon.md").read_text()
    (script,) = [b.split("\n", 1)[1] for b in text.split("```")[1::2] if b.startswith("sh\ntoken=")]
    script = (script.replace("/etc/certd/api.token", str(tmp_path / "api.token"))
              .replace("http://127.0.0.1:8787", daemon.url).replace("/edge/", "/a/"))
    done = subprocess.run(["bash", "-c", script.rstrip() + ' -s -o /dev/null -w "%{http_code}"'], capture_output=True,
                          text=True, timeout=30)
    assert done.stdout == "202", done


@pytest.mark.parametrize("problem", ["empty", "unreadable"])
def test_a_token_file_that_is_set_but_unusable_says_why(daemon: Daemon, tmp_path: Path, problem: str) -> None:
    """Not "not configured": the operator set api_token_file, and the log says what is wrong with it."""
    token_file = tmp_path / "api.token"
    if problem == "empty":
        token_file.write_text("\n")
        expected = f"daemon.api_token_file {token_file} is empty"
    else:
        token_file.unlink()
        expected = f"daemon.api_token_file {token_file} cannot be read (No such file or directory)"
    resp = requests.post(daemon.url + "/v1/certificates/a/renew", headers={"Authorization": f"Bearer {TOKEN}"},
                         timeout=5)
    assert resp.status_code == 401 and "the server has no usable API token" in resp.text, resp.text
    assert str(token_file) not in resp.text  # the path and what is wrong with it are for the log, not the caller
    assert expected in daemon.log.read_text()
    token_file.write_text(TOKEN)  # rotated back under the running daemon: accepted again, no restart
    resp = requests.post(daemon.url + "/v1/certificates/a/renew", headers={"Authorization": f"Bearer {TOKEN}"},
                         timeout=5)
    assert resp.status_code == 202, resp.text


def test_an_empty_token_file_is_named_at_start(write_config: WriteConfig, tmp_path: Path, sqlite_url: str) -> None:
    port = free_port()
    config = write_config(_config(f"127.0.0.1:{port}"), db_url=sqlite_url)
    token_file = tmp_path / "api.token"
    token_file.write_text("  \n")
    token_file.chmod(0o600)
    check = certd("check-config", config=config)
    assert check.returncode == 0 and f"daemon.api_token_file: {token_file} is empty" in check.stderr, check.stderr
    d = Daemon(config, port, tmp_path / "daemon.log")
    try:
        assert d.get("/healthz").status_code == 200
    finally:
        assert d.stop() == 0
    assert f"daemon.api_token_file {token_file} is empty: writes are refused; the HTTP API accepts reads only" in (
        tmp_path / "daemon.log").read_text()


def test_a_token_file_that_is_a_directory_or_unreadable_is_named_by_check_config(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    from tests.test_database_faults import _certd, _unprivileged

    (tmp_path / "dir.token").mkdir()
    cfg = write_config(f'[database]\nurl = "sqlite:///{tmp_path}/certd.db"\n\n[daemon]\n'
                       f'api_token_file = "{tmp_path}/dir.token"\n')
    proc = _certd("check-config", config=cfg)
    assert proc.returncode == 0 and f"daemon.api_token_file: {tmp_path}/dir.token is a directory" in proc.stderr
    assert "readable by" not in proc.stderr, proc.stderr
    unread = tmp_path / "unread.token"
    unread.write_text("tok\n")
    unread.chmod(0)
    cfg.write_text(cfg.read_text().replace("dir.token", "unread.token"))
    _unprivileged()  # skips where file modes cannot be made to bind
    proc = _certd("check-config", config=cfg, unprivileged=True)  # root without the capabilities that bypass modes
    assert proc.returncode == 0, proc.stderr
    assert f"daemon.api_token_file: {unread} cannot be read by this user (Permission denied)" in proc.stderr
