"""Each operation holds its own kind of lease: only a renewal may be answered by someone else's renewal.

A revoke, deploy or import that arrives while the daemon's renewal holds the
certificate's lease waits its turn and then does its own work (before this,
``revoke --reason keyCompromise`` racing a renewal reported the renewal's
result and never revoked).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from certd.config.load import load_config
from certd.engine.app import App
from certd.engine.result import Result
from certd.engine.scheduler import Scheduler
from certd.pki.revocation import RevocationReason
from tests.conftest import WriteConfig

CONFIG = """
[database]
url = "sqlite:///{tmp}/certd.db"

[issuers.local]
type = "local-ca"
dir = "{tmp}/local-ca"

[deploy.slow]
type = "command"
argv = ["sleep", "1.5"]

[certificates.web]
issuer = "local"
names = ["web.example.test"]
output_dir = "{tmp}/out/web"
deploy = ["slow"]
"""


@pytest.fixture
def app(write_config: WriteConfig) -> Iterator[App]:
    application = App.open(load_config(write_config(CONFIG)))
    yield application
    application.close()


def _race(app: App, operation: str, tmp_path: Path, first_rid: str | None) -> tuple[Result, Result]:
    """Start a daemon renewal, and while it holds the lease, run ``operation``; both results."""
    scheduler = Scheduler(lambda: app, app.clock, workers=2)
    try:
        job = scheduler.submit("web", force=True)
        deadline = time.monotonic() + 10
        while not any(e.kind == "renewal.started" and e.renewal_id != first_rid for e in app.inventory.events("web")):
            assert time.monotonic() < deadline, "the renewal never started"
            time.sleep(0.02)
        if operation == "revoke":
            other = app.pipeline.revoke("web", RevocationReason.KEY_COMPROMISE)
        elif operation == "deploy":
            other = app.pipeline.deploy("web")
        else:
            saved = tmp_path / "saved"
            other = app.pipeline.import_certificate("web", (saved / "cert.pem").read_bytes(),
                                                     (saved / "privkey.pem").read_bytes(),
                                                     (saved / "chain.pem").read_bytes())
        while job.result is None:
            time.sleep(0.02)
        return job.result, other
    finally:
        scheduler.shutdown()


@pytest.mark.parametrize("operation", ["revoke", "deploy", "import"])
def test_operation_racing_a_renewal_does_its_own_work(operation: str, app: App, tmp_path: Path) -> None:
    first = app.pipeline.renew("web")
    assert first.outcome == "renewed", first
    out = tmp_path / "out/web"
    saved = tmp_path / "saved"
    saved.mkdir()
    for name in ("cert.pem", "privkey.pem", "chain.pem"):
        shutil.copyfile(out / name, saved / name)

    renewal, other = _race(app, operation, tmp_path, first.renewal_id)
    assert renewal.outcome == "renewed", renewal
    assert other.renewal_id != renewal.renewal_id  # its own operation, not the renewal's answer
    if operation == "revoke":
        assert (other.outcome, other.serial) == ("revoked", renewal.serial), other
        states = {v.serial: v.state for v in app.inventory.versions("web")}
        assert states[renewal.serial or ""] == "revoked"
        assert any(e.kind == "revoke.done" and e.renewal_id == other.renewal_id for e in app.inventory.events("web"))
    elif operation == "deploy":
        assert (other.outcome, other.serial) == ("deployed", renewal.serial), other
        mine = [e for e in app.inventory.events("web") if e.kind == "deploy.done" and e.renewal_id == other.renewal_id]
        assert len(mine) == 1
    else:
        assert (other.outcome, other.serial) == ("imported", first.serial), other
        current = app.inventory.current_version("web")
        assert current is not None and current.renewal_id == other.renewal_id


def test_concurrent_renewals_still_join(app: App) -> None:
    """The join rule is kept for renewals: simultaneous renew --force calls make one order."""
    results: list[Result] = []
    lock = threading.Lock()

    def renew() -> None:
        r = app.pipeline.renew("web", force=True)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=renew) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.outcome == "renewed" for r in results), results
    assert len({r.serial for r in results}) == 1
    assert len(app.inventory.versions("web")) == 1
