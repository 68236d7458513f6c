"""A TCP proxy in front of a real server that misbehaves on demand: the server behind it stays real.

Modes (``proxy.mode``), applied to new connections and to the ones already open (a kept-alive connection
hangs too, and a reset cuts every open one):

- ``forward``: bytes both ways, as if the proxy were not there;
- ``hang``: accept, read what the client sends, never answer (a server stopped with SIGSTOP, a dead peer
  behind a load balancer) until the mode changes or the test ends;
- ``reset``: accept, then reset the connection (RST) at once;
- ``slow``: forward, but hold each chunk from the server for ``delay`` seconds.

TLS passes through untouched (the client's handshake is with the real server), so a client verifies the real
server's certificate. Bounded: every connection ends when the proxy closes.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

from tests.servers.ports import HOST, free_port

MODES = ("forward", "hang", "reset", "slow")


class FaultProxy:
    def __init__(self, upstream_port: int, *, upstream_host: str = HOST, mode: str = "forward",
                 delay: float = 1.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._mode = mode
        self.delay = delay
        self.port = free_port()
        self.connections = 0
        self._closed = threading.Event()
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server = socket.create_server((HOST, self.port))
        self._thread = threading.Thread(target=self._serve, name="fault-proxy", daemon=True)
        self._thread.start()

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self._mode = mode
        if mode == "reset":
            with self._lock:
                open_now, self._open = self._open, []
            for sock in open_now:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.append(sock)

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            self._track(conn)
            threading.Thread(target=self._handle, args=(conn, self.mode), daemon=True).start()

    def _handle(self, conn: socket.socket, mode: str) -> None:
        if mode == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            return
        if mode == "hang":
            conn.settimeout(0.5)
            while not self._closed.is_set() and self.mode == "hang":
                try:
                    if not conn.recv(65536):
                        break
                except TimeoutError:
                    continue
                except OSError:
                    break
            if self._closed.is_set() or self.mode == "hang":
                with contextlib.suppress(OSError):
                    conn.close()
                return
            mode = self.mode  # the fault ended while this client waited: it now gets what others get
        try:
            up = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            conn.close()
            return
        self._track(up)
        threading.Thread(target=self._pipe, args=(conn, up, 0.0), daemon=True).start()
        self._pipe(up, conn, self.delay if mode == "slow" else 0.0)

    def _pipe(self, src: socket.socket, dst: socket.socket, delay: float) -> None:
        try:
            while chunk := src.recv(65536):
                while self._mode == "hang" and not self._closed.is_set():
                    time.sleep(0.05)  # held, not lost: a server that stopped answering mid-stream
                if delay or self._mode == "slow":
                    time.sleep(delay or self.delay)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        with self._lock:
            for s in self._open:
                with contextlib.suppress(OSError):
                    s.close()
