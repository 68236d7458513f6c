"""Proof of the whole path: after a backend's rotation, the load balancer's own health check still passes.

certd's ``verify`` proves each hop by itself (a handshake from certd). That
misses what breaks an end-to-end encrypted load balancer: HAProxy verifying
the backend against *its* ``ca-file``, with *its* SNI and ``verifyhost``.
So after deploying a backend certificate, certd reads HAProxy's own view of
the servers that use it (``show stat``: ``status``, ``check_status``,
``chkfail``) and waits for two check intervals without a failed check. A
check that fails after the rotation is a failed ``verify``: with ``rollback``
the previous certificate goes back. Only a TLS check proves anything (L6OK or
L7OK); a plain TCP check (L4OK) is refused with a hint to add ``check-ssl``.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from datetime import timedelta

from certd.config.model import LbCheck
from certd.deploy.haproxy_runtime import RuntimeApi
from certd.errors import CertdError, TargetAbsent, VerifyError

__all__ = ["ServerStat", "baseline", "confirm_accepted", "server_stat"]

_TLS_OK = ("L6OK", "L7OK")


@dataclass(frozen=True)
class ServerStat:
    """One server as HAProxy sees it."""

    status: str  # "UP", "UP 1/3", "DOWN", "MAINT", "no check"
    check_status: str  # "L7OK", "L6OK", "L6RSP", "L4OK", ...
    chkfail: int  # failed checks so far
    last_chk: str  # HAProxy's text about the last check


def _api(check: LbCheck) -> RuntimeApi:
    return RuntimeApi(check.socket, 5.0, f"verify {check.backend}/{check.server}")


def server_stat(check: LbCheck) -> ServerStat:
    """``show stat`` for one server; ``VerifyError`` when HAProxy does not know it."""
    answer = _api(check).command("show stat\n")
    lines = [line for line in answer.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("# "):
        raise VerifyError(f"verify {check.backend}/{check.server}: unexpected answer to show stat from "
                          f"{check.socket}")
    for row in csv.DictReader([lines[0][2:], *lines[1:]]):
        if row.get("pxname") == check.backend and row.get("svname") == check.server:
            return ServerStat(row.get("status", ""), row.get("check_status", ""),
                              int(row.get("chkfail") or 0), row.get("last_chk", ""))
    raise VerifyError(f"verify {check.backend}/{check.server}: HAProxy at {check.socket} has no server "
                      f"{check.server} in backend {check.backend}", retryable=False)


def baseline(check: LbCheck) -> ServerStat | None:
    """The server's counters before the rotation (``None`` when HAProxy is not reachable yet)."""
    try:
        return server_stat(check)
    except CertdError:  # TargetAbsent included: HAProxy not up yet, nothing to compare with
        return None


def confirm_accepted(check: LbCheck, before: ServerStat | None, timeout: timedelta) -> str:
    """Wait for two check intervals with no failed check and a TLS check passing; else ``VerifyError``."""
    where = f"HAProxy {check.backend}/{check.server}"
    interval = check.interval.total_seconds()
    started = time.monotonic()
    settle = 2 * interval
    deadline = started + max(timeout.total_seconds(), settle + 2 * interval)
    while True:
        try:
            now = server_stat(check)
        except TargetAbsent as exc:
            raise VerifyError(str(exc)) from exc
        failed = before is not None and now.chkfail > before.chkfail
        if failed or now.status.startswith("DOWN"):
            raise VerifyError(f"verify {check.backend}/{check.server}: {where} rejects the backend after the "
                              f"rotation: check {now.check_status or '-'} ({now.last_chk or 'no detail'}), "
                              f"status {now.status}")
        if now.check_status.startswith("L4") and now.status.startswith("UP"):
            raise VerifyError(f"verify {check.backend}/{check.server}: {where} checks only TCP ({now.check_status}),"
                              " which proves nothing about the certificate: add check-ssl check-sni to the server",
                              retryable=False)
        elapsed = time.monotonic() - started
        if elapsed >= settle and now.status.startswith("UP") and now.check_status in _TLS_OK:
            return f"{where}: {now.check_status}, no failed check for {elapsed:.1f}s after the rotation"
        if time.monotonic() >= deadline:
            raise VerifyError(f"verify {check.backend}/{check.server}: {where} did not confirm the backend within "
                              f"{elapsed:.0f}s: status {now.status}, check {now.check_status or '-'}")
        time.sleep(max(interval / 4, 0.05))
