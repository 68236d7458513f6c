"""The daemon's wake-ups are never lost (issue 18: retries ran 27-105 s after the announced ``next_attempt_at``).

Each scan places the next wake-up at the earliest renewal or retry time. APScheduler skips a run of a job
whose previous run has not finished, so a wake-up placed while a scan was still running (a slow scan: many
certificates, an ARI refresh against a slow CA) was dropped, and the retry waited for the next
``check_interval`` — five minutes by default. The daemon runs in-process here (``run()`` in the main thread,
its API on a free port, the test driving it from another) with a scan made slow; a wake-up placed during
a scan must still run right after it.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from certd.config.load import load_config
from certd.daemon import Daemon
from tests.conftest import WriteConfig
from tests.servers.ports import free_port

CONFIG = """
[database]
url = "sqlite:///{{tmp}}/certd.db"

[daemon]
check_interval = "1h"
api_listen = "127.0.0.1:{port}"

[issuers.local]
type = "local-ca"
dir = "{{tmp}}/ca"

[certificates.web]
issuer = "local"
names = ["web.example.test"]
output_dir = "{{tmp}}/out/web"
"""


def test_a_wakeup_placed_during_a_slow_scan_runs_right_after_it(write_config: WriteConfig, tmp_path: Path) -> None:
    path = write_config(CONFIG.format(port=free_port()))
    daemon = Daemon(path, load_config(path))
    scans: list[float] = []
    real_scan = daemon.scheduler.scan

    def slow_scan() -> list[str]:
        scans.append(time.monotonic())
        time.sleep(1.5)  # a slow scan, as with many certificates or a slow CA's renewal info
        return real_scan()

    daemon.scheduler.scan = slow_scan  # type: ignore[method-assign]
    placed: list[float] = []

    def drive() -> None:
        try:
            deadline = time.monotonic() + 20
            while len(scans) < 1 and time.monotonic() < deadline:  # the start-up scan
                time.sleep(0.05)
            time.sleep(2)  # it has finished, and issued the certificate
            wakeup = daemon.scheduler.on_wakeup_changed
            assert wakeup is not None
            wakeup(datetime.now(UTC) + timedelta(seconds=0.2))  # a scan starts in 0.2 s and runs 1.5 s
            time.sleep(0.6)
            placed.append(time.monotonic())
            wakeup(datetime.now(UTC) + timedelta(seconds=0.1))  # due while that scan still runs
            while time.monotonic() < placed[0] + 6 and not any(t > placed[0] for t in scans):
                time.sleep(0.05)
        finally:
            daemon.stop()

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    daemon.run()  # in the main thread: it installs signal handlers
    driver.join(30)
    after = [t - placed[0] for t in scans if placed and t > placed[0]]
    assert after and after[0] < 3, (after, scans)  # right after the running scan, not an hour later
