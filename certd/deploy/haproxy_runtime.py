"""HAProxy's runtime API (the ``stats socket``): one command per connection, the whole answer back.

Shared by the ``haproxy`` deploy target (``set/commit ssl cert``, ``set/commit
ssl ca-file``) and the load balancer's own health-check verify
(``show stat``), so both speak to the socket the same way and report its
failures the same way. HAProxy's non-interactive mode answers one command
and closes, so EOF ends each answer. A socket that does not exist or refuses
the connection is ``TargetAbsent``: HAProxy is not running (yet).
"""

from __future__ import annotations

import re
import socket

from certd.errors import DeployError, TargetAbsent

__all__ = ["RuntimeApi"]


class RuntimeApi:
    """One HAProxy runtime socket: ``/path``, ``unix@/path``, ``HOST:PORT`` or ``ipv4@``/``ipv6@HOST:PORT``."""

    def __init__(self, where: str, timeout: float, label: str) -> None:
        self.where = where
        self._timeout = timeout
        self._label = label  # "deploy lb", "verify edge": what errors are about

    def _connect(self) -> socket.socket:
        where = self.where
        if where.startswith("unix@"):
            where = where[len("unix@"):]
        if where.startswith(("ipv4@", "ipv6@")):
            host, _, port = where[5:].rpartition(":")
        elif "/" in where or not re.fullmatch(r".+:\d+", where):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self._timeout)
            try:
                sock.connect(where)
            except BaseException:
                sock.close()
                raise
            return sock
        else:
            host, _, port = where.rpartition(":")
        return socket.create_connection((host.strip("[]"), int(port)), timeout=self._timeout)

    def command(self, command: str) -> str:
        """Send one command and read HAProxy's whole answer (it closes the connection after answering)."""
        where, label = self.where, self._label
        try:
            with self._connect() as sock:
                sock.sendall(command.encode("ascii"))
                chunks: list[bytes] = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except FileNotFoundError as exc:  # not started yet: it loads the published file when it starts
            raise TargetAbsent(f"{label}: HAProxy runtime socket {where} does not exist "
                               "(HAProxy not running yet?)") from exc
        except ConnectionRefusedError as exc:
            raise TargetAbsent(f"{label}: HAProxy runtime socket {where} refused the connection "
                               "(is HAProxy running with 'stats socket ... level admin'?)") from exc
        except PermissionError as exc:
            raise DeployError(f"{label}: not allowed to open HAProxy runtime socket {where}") from exc
        except TimeoutError as exc:
            raise DeployError(f"{label}: HAProxy runtime socket {where} did not answer within {self._timeout:g}s"
                              ) from exc
        except OSError as exc:
            raise DeployError(f"{label}: HAProxy runtime socket {where}: {exc.strerror or exc}") from exc
        return b"".join(chunks).decode("utf-8", errors="replace")
