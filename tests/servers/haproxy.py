"""HAProxy terminating TLS with a combined PEM, with the admin runtime socket certd rotates certificates through.

Runs in the foreground (`-db`, no master), so `pid` is the very process serving: a test can assert that a
rotation over the runtime API did not restart it.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Sequence
from pathlib import Path

from tests.servers.ports import HOST, ServerProcess, free_port, make_workdir, tcp_open

_CONFIG = """\
global
    stats socket {sock} mode 600 level admin expose-fd listeners
    stats timeout 30s
    log stderr format raw local0 info

defaults
    mode http
    log global
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend fe_tls
    bind {host}:{port} ssl crt {crt}
{frontend_action}
"""

_BACKEND = """\
backend be_upstream
    server upstream {server} ssl verify required ca-file {ca_file} sni str({sni}){options}
"""


class HaproxyServer:
    def __init__(
        self,
        combined_pem: Path,
        *,
        backend_server: str | None = None,
        backend_ca_file: Path | None = None,
        backend_sni: str = "localhost",
        backend_options: str = "",
        workdir: Path | None = None,
        port: int | None = None,
        more_crts: Sequence[Path] = (),
    ) -> None:
        """backend_server ("host:port") switches the frontend from answering "ok" itself to re-encrypting to it.

        ``workdir`` and ``port`` of a stopped one start it again as the same server (same socket, same port).
        ``more_crts``: more certificates on the same listener, chosen by SNI (the first is the default).
        """
        self.workdir = workdir or make_workdir("haproxy")
        self._own_workdir = workdir is None
        self.combined_pem = Path(combined_pem)
        self.port = port or free_port()
        self.socket = self.workdir / "admin.sock"
        if backend_server is None:
            action = "    http-request return status 200 content-type text/plain string ok\n"
        else:
            if backend_ca_file is None:
                raise ValueError("backend_ca_file is required to verify the backend")
            action = "    default_backend be_upstream\n\n" + _BACKEND.format(
                server=backend_server, ca_file=backend_ca_file, sni=backend_sni,
                options=f" {backend_options}" if backend_options else "",
            )
        self.config = self.workdir / "haproxy.cfg"
        self.config.write_text(
            _CONFIG.format(sock=self.socket, host=HOST, port=self.port, frontend_action=action,
                           crt=" crt ".join(str(p) for p in (self.combined_pem, *more_crts)))
        )
        self._proc = ServerProcess(
            "haproxy", ["haproxy", "-db", "-f", str(self.config)], self.workdir / "haproxy.log", cwd=self.workdir
        )
        self.pid = self._proc.pid
        try:
            self._proc.wait_until(
                lambda: tcp_open(self.port) and "Name: HAProxy" in self.runtime("show info"),
                f"TLS port {self.port} and runtime socket",
            )
        except BaseException:
            self.stop()
            raise

    def upstream_stat(self) -> dict[str, str]:
        """``show stat`` for the re-encrypting backend's server: status, check_status, chkfail, ..."""
        answer = self.runtime("show stat")
        header = answer.splitlines()[0][2:].split(",")
        for line in answer.splitlines()[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "be_upstream" and row.get("svname") == "upstream":
                return row
        raise AssertionError(f"no be_upstream/upstream in show stat: {answer}")

    def runtime(self, cmd: str, timeout: float = 10.0) -> str:
        """One command per connection (non-interactive mode): HAProxy answers, then closes, so EOF ends the reply.

        A `<<` payload command (e.g. `set ssl cert <path> <<\\n<PEM>`) must end with an empty line; it is added
        here if missing, since forgetting it makes HAProxy wait for more payload until the timeout.
        """
        if not cmd.endswith("\n"):
            cmd += "\n"
        if "<<" in cmd.split("\n", 1)[0] and not cmd.endswith("\n\n"):
            cmd += "\n"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.socket))
            s.sendall(cmd.encode())
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def stop(self) -> None:
        self._proc.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
