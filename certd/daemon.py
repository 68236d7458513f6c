"""``certd run``: APScheduler wiring, the HTTP API, signals and systemd notification.

The pieces with decisions in them live elsewhere (policy in ``policy.py``,
scanning in ``scheduler.py``, renewal in ``pipeline.py``); this module only
connects them to time and to the operating system:

- an interval job runs the scan every ``check_interval``, and a one-off job is
  (re)placed at the earliest ``renew_at`` the scan saw, so renewals happen on
  time rather than up to one interval late;
- SIGHUP reloads the config; a config with errors is logged, reported in
  ``/healthz`` and ignored (the daemon keeps running on the old one);
- SIGTERM/SIGINT stop taking work, let running renewals finish and release
  their leases, then exit;
- with ``NOTIFY_SOCKET`` set (systemd ``Type=notify``) it reports READY and,
  with ``WATCHDOG_USEC``, pets the watchdog while the scheduler is alive.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import text

from certd.api.app import ApiState, create_api
from certd.api.auth import NoToken, read_token
from certd.api.limits import raise_fd_limit, server_config
from certd.config.load import load_config
from certd.config.model import Config
from certd.config.rules import check_secret_modes
from certd.core.durations import format_duration
from certd.core.kinds import EventKind, Step
from certd.engine.app import App
from certd.engine.scheduler import Scheduler
from certd.errors import CA_RATE_LIMIT_REASONS, CertdError, ConfigError
from certd.metrics import Metrics

__all__ = ["Daemon", "sd_notify"]

log = logging.getLogger("certd.daemon")


def sd_notify(message: str) -> bool:
    """Send one sd_notify datagram if systemd asked for them; False otherwise."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError:
            return False
    return True


class Daemon:
    """One ``certd run`` process."""

    def __init__(self, config_path: Path, config: Config, *, agent: bool = False) -> None:
        self.config_path = config_path
        self.agent = agent or config.daemon.role == "agent"
        if self.agent and config.database.key_file is None:
            raise ConfigError(f"{config_path}: database.key_file: the agent role installs keys from the inventory, "
                              "so every replica needs the same key_file")
        self.metrics = Metrics()
        self.app = App.open(config, metrics=self.metrics)
        self.config_error: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._scanning = threading.Lock()
        self.scheduler = Scheduler(self.current, self.app.clock, workers=config.daemon.workers,
                                   metrics=self.metrics, agent=self.agent)
        self._aps = BackgroundScheduler(timezone=UTC)
        self.scheduler.on_wakeup_changed = self._place_wakeup
        self._server: uvicorn.Server | None = None

    def current(self) -> App:
        """The App of the config in force (a reload swaps it)."""
        with self._lock:
            return self.app

    def _token(self) -> str:
        """Raises ``NoToken`` saying why there is none; the API answers 401 with that reason."""
        return read_token(self.current().config.daemon.api_token_file)

    def health(self) -> dict[str, Any]:
        database, database_error = True, None
        try:
            with self.app.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except CertdError as exc:  # the file deleted or replaced under the daemon: say which
            database, database_error = False, exc.message
        except Exception:
            database = False
        alive = self._aps.running and not self._stop.is_set()
        status = "ok" if alive and database and self.config_error is None else "degraded"
        last = self.scheduler.last_scan
        return {
            "status": status,
            "scheduler": alive,
            "database": database,
            "database_error": database_error,
            "config_error": self.config_error,
            "last_scan": last.isoformat() if last else None,
            "role": "agent" if self.agent else "all",
        }

    # -- scheduling ------------------------------------------------------------------
    def _scan(self) -> None:
        if self._stop.is_set():
            return
        with self._scanning:  # one scan at a time; a wake-up that comes during one runs right after it
            self._scan_once()

    def _scan_once(self) -> None:
        try:
            started = self.scheduler.scan()
            if started:
                log.info("scan started renewals: %s", ", ".join(started))
        except CertdError as exc:
            log.error("scan failed: %s", exc)
        except Exception:
            log.exception("scan failed")


    def _place_wakeup(self, wakeup: datetime | None) -> None:
        if wakeup is None or self._stop.is_set() or not self._aps.running:
            return
        # max_instances > 1: a wake-up placed while the previous one's scan still runs (each scan places the
        # next) would otherwise be skipped by APScheduler — and the retry waited for the next check_interval
        # (27-105 s late, seen in the issue 18 trial). The scans themselves are serialized by _scanning.
        self._aps.add_job(self._scan, "date", run_date=max(wakeup, datetime.now(UTC)), id="wakeup",
                          replace_existing=True, misfire_grace_time=None, max_instances=8)

    # -- signals -------------------------------------------------------------------
    def reload(self) -> None:
        """Re-read the config; keep the old one if the new one is invalid."""
        try:
            config = load_config(self.config_path)
            app = App.open(config, metrics=self.metrics)
        except CertdError as exc:
            self.config_error = str(exc)
            log.error("config reload failed, still running on the previous config: %s", exc)
            return
        with self._lock:
            old, self.app = self.app, app
        self.config_error = None
        log.info("config reloaded: %d certificates", len(config.certificates))
        # A reload is the operator saying "I changed something, try again": every held-back
        # certificate is re-evaluated now, except those the CA itself rate-limited.
        self._clear_backoffs(app, "config reloaded", ())
        old.close()
        self._reload_tls(config)
        self._scan()

    @staticmethod
    def _clear_backoffs(app: App, why: str, keep_steps: tuple[str, ...]) -> None:
        """End backoffs whose cause may be gone, except the CA's rate limits (and ``keep_steps``)."""
        for name in app.inventory.clear_backoffs(keep_reasons=CA_RATE_LIMIT_REASONS, keep_steps=keep_steps):
            app.services.recorder.event(name, EventKind.BACKOFF_CLEARED, f"{why}: backoff ended, re-evaluating now",
                                        None)

    def _reload_tls(self, config: Config) -> None:
        """A renewed API certificate takes effect on SIGHUP for new connections (the client CA needs a restart)."""
        server = self._server
        cert, key = config.daemon.api_tls_cert_file, config.daemon.api_tls_key_file
        context = server.config.ssl if server is not None else None
        if server is None or context is None or cert is None or not server.servers:
            return

        async def load() -> None:  # on the server's loop, so no handshake sees a half-loaded context
            context.load_cert_chain(cert, key)

        try:
            asyncio.run_coroutine_threadsafe(load(), server.servers[0].get_loop()).result(10)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            log.error("daemon.api_tls_cert_file: cannot reload, still serving the previous certificate: %s", exc)
        else:
            log.info("API certificate reloaded from %s", cert)

    def stop(self) -> None:
        self._stop.set()

    # -- main loop -------------------------------------------------------------------
    def run(self) -> int:
        """Block until SIGTERM/SIGINT; return the process exit status."""
        daemon_cfg = self.current().config.daemon
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=self.reload, daemon=True).start())
        try:
            self._token()
        except NoToken as exc:
            log.warning("%s; the HTTP API accepts reads only", exc)
        for line in check_secret_modes(self.current().config):
            log.warning(line)
        # A restart is what the docs prescribe after fixing a local cause (a rotated key_file, a user created
        # again, a directory cleaned): such backoffs end here as at a reload. A CA's refusals keep theirs, so
        # a daemon restarted in a loop never orders in a loop.
        if not self.agent:
            self._clear_backoffs(self.current(), "daemon started", (Step.ISSUE.value,))
        before, after = raise_fd_limit()
        if after != before:
            log.info("descriptor limit raised from %d to %d", before, after)
        state = ApiState(app=self.current, scheduler=self.scheduler, metrics=self.metrics,
                         token=self._token, health=self.health)
        try:
            server_cfg = server_config(create_api(state), daemon_cfg, self.config_path)
        except ConfigError as exc:
            log.error("%s", exc)
            self.scheduler.shutdown(wait=False)
            self.app.close()
            return 2
        self._server = uvicorn.Server(server_cfg)
        api_thread = threading.Thread(target=self._server.run, name="api", daemon=True)
        api_thread.start()
        self._aps.add_job(self._scan, "interval", seconds=daemon_cfg.check_interval.total_seconds(), id="scan",
                          next_run_time=datetime.now(UTC), max_instances=1, coalesce=True)
        self._aps.start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline and api_thread.is_alive():
            time.sleep(0.05)
        if not self._server.started:
            log.error("HTTP API did not start on %s", daemon_cfg.api_listen)
            self._aps.shutdown(wait=False)
            return 1
        log.info("certd running: api on %s, scanning every %s", daemon_cfg.api_listen,
                 format_duration(daemon_cfg.check_interval))
        sd_notify("READY=1\nSTATUS=scanning")
        watchdog = int(os.environ.get("WATCHDOG_USEC", "0")) / 1e6
        while not self._stop.wait(watchdog / 2 if watchdog else 1.0):
            if watchdog and self._aps.running:
                sd_notify("WATCHDOG=1")
        log.info("stopping: finishing running renewals")
        sd_notify("STOPPING=1")
        self._aps.shutdown(wait=False)
        self.scheduler.shutdown(wait=True)
        self._server.should_exit = True
        api_thread.join(10)
        self.app.close()
        return 0
