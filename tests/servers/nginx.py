"""nginx serving HTTPS from certd's fullchain.pem/privkey.pem, reloaded the way certd's signal deployer does it.

Runs in the foreground (`daemon off`) so the test owns the master; every path nginx would otherwise take
from its compiled-in defaults (/var/lib/nginx temp dirs, /var/log, /run/nginx.pid) is moved into the prefix.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from tests.servers.ports import HOST, STARTUP_TIMEOUT, ServerProcess, free_port, make_workdir, tcp_open

_CONFIG = """\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr info;
events {{ worker_connections 128; }}
http {{
    access_log {prefix}/logs/access.log;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server {{
        listen {host}:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ default_type text/plain; return 200 "ok\\n"; }}
    }}
}}
"""


def _children(pid: int) -> set[int]:
    """Worker pids, found via /proc because nginx has no API for them; a reload shows up as new children."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def _listen_inode(port: int) -> str:
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
            return fields[9]
    raise RuntimeError(f"nothing listens on port {port}")


def _holds_socket(pid: int, inode: str) -> bool:
    """False once a worker has closed its listener (or is gone), i.e. it can no longer accept new handshakes."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    target = f"socket:[{inode}]"
    for fd in fds:
        try:
            if os.readlink(fd) == target:
                return True
        except OSError:
            continue
    return False


class NginxServer:
    def __init__(self, cert_path: Path, key_path: Path, *, workdir: Path | None = None,
                 port: int | None = None) -> None:
        """``port`` (default: a free one) lets a test start the same server again where clients expect it."""
        self.prefix = workdir or make_workdir("nginx")
        self._own_workdir = workdir is None
        for sub in ("logs", "tmp"):
            (self.prefix / sub).mkdir(exist_ok=True)
        self.port = port or free_port()
        self.pid_file = self.prefix / "nginx.pid"
        self.log_path = self.prefix / "logs" / "nginx.log"
        self.config = self.prefix / "nginx.conf"
        self.config.write_text(
            _CONFIG.format(prefix=self.prefix, host=HOST, port=self.port, cert=cert_path, key=key_path)
        )
        argv = ["nginx", "-c", str(self.config), "-p", str(self.prefix), "-e", "stderr", "-g", "daemon off;"]
        # SIGQUIT is nginx's graceful shutdown; SIGTERM would drop in-flight connections.
        self._proc = ServerProcess("nginx", argv, self.log_path, stop_signal=signal.SIGQUIT)
        self.pid = self._proc.pid
        try:
            self._proc.wait_until(
                lambda: tcp_open(self.port) and self.pid_file.exists() and bool(self.workers()),
                f"HTTPS port {self.port}",
            )
        except BaseException:
            self.stop()
            raise

    def workers(self) -> set[int]:
        return _children(self.pid)

    def reload(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """SIGHUP the master, then wait until a new worker runs and no old worker still accepts connections.

        Returning as soon as a new worker exists is not enough: old workers keep accepting on the shared listen
        socket for a moment, so the next handshake could still get the old certificate. Old workers that merely
        finish in-flight requests are fine. A bad config or unreadable key makes nginx keep its old workers and
        only log "[emerg]": that is raised.
        """
        old = self.workers()
        inode = _listen_inode(self.port)
        log_offset = self.log_path.stat().st_size
        os.kill(self.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.proc.poll() is not None:
                raise self._proc.fail("master exited during reload")
            with self.log_path.open("rb") as f:
                f.seek(log_offset)
                if b"[emerg]" in f.read():
                    raise self._proc.fail("reload rejected")
            if self.workers() - old and not any(_holds_socket(pid, inode) for pid in old):
                return
            time.sleep(0.05)
        raise self._proc.fail(f"no new worker {timeout:.0f}s after SIGHUP")

    def stop(self) -> None:
        self._proc.stop()
        if self._own_workdir:
            shutil.rmtree(self.prefix, ignore_errors=True)
