"""Runtime-API sequences that crash HAProxy, refused before they are sent.

Measured on HAProxy 2.6.12 (Debian 12), reproduced without certd: ``commit ssl ca-file`` for a ca-file that
``server`` lines pin, then ``commit ssl cert`` for the client certificate (``crt``) on those lines, then another
``commit ssl ca-file`` makes HAProxy segfault (every connection through it dies). Upstream this is haproxy#3165
("Crash because of dangling ckch_store reference in a ckch instance", fixed by commit 7482b6e in October 2025
and marked for backport to the stable branches); a certificate on ``bind`` lines does not trigger it (five rounds
survived). A CA rotation is exactly that sequence when HAProxy's own client certificate is renewed while the
old CA is still pinned.

So certd remembers, per HAProxy process (runtime socket and pid: a reload or restart starts clean), that a
ca-file was committed and then a client certificate (one whose extended key usage is ``clientAuth``), and
refuses the next ca-file update with the fix: reload HAProxy, which loads the bundle certd already wrote to
disk. The memory is this certd process's (the daemon's); a one-shot CLI starts without it.
"""

from __future__ import annotations

import threading

__all__ = ["GUARD", "CrashGuard"]


class CrashGuard:
    """What this certd process committed to each running HAProxy; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ca_committed: set[tuple[str, int]] = set()
        self._hazard: set[tuple[str, int]] = set()

    def ca_committed(self, socket: str, pid: int) -> None:
        with self._lock:
            self._ca_committed.add((socket, pid))

    def client_cert_committed(self, socket: str, pid: int) -> None:
        with self._lock:
            if (socket, pid) in self._ca_committed:
                self._hazard.add((socket, pid))

    def ca_update_would_crash(self, socket: str, pid: int) -> bool:
        with self._lock:
            return (socket, pid) in self._hazard


GUARD = CrashGuard()
