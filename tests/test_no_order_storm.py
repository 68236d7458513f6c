"""A load balancer down for a long time costs one order, not one per retry (issue 18, case 4).

A renewal whose deploy fails (the load balancer down) rolls back to the old certificate; the old one is
past its renewal time, so every retry used to place a new order. Now the version already issued is
rolled out again while it has its files and its life ahead of it. The daemon's scheduler on a fake clock,
the real local CA counting its orders, a real command hook that fails while the load balancer is "down".
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from certd.config.load import load_config
from certd.config.model import LocalCAIssuerConfig
from certd.deploy.publish import published_serial
from certd.engine.app import App
from certd.engine.scheduler import Scheduler
from certd.issuers.local_ca import LocalCA
from tests.conftest import FakeClock, WriteConfig
from tests.test_failures_recorded import CountingCA

CONFIG = """
[database]
url = "sqlite:///{tmp}/certd.db"

[issuers.local]
type = "local-ca"
dir = "{tmp}/local-ca"

[deploy.lb]
type = "command"
argv = ["sh", "-c", "test ! -e {tmp}/lb-down || { echo 'connection refused' >&2; exit 1; }"]

[certificates.web]
issuer = "local"
names = ["web.example.test"]
lifetime = "72h"
output_dir = "{tmp}/out/web"
deploy = ["lb"]
rollback = true
"""


def test_the_load_balancer_down_for_hours_costs_one_order(write_config: WriteConfig, tmp_path: Path) -> None:
    config = load_config(write_config(CONFIG))
    clock = FakeClock(datetime.now(UTC))
    issuer_cfg = config.issuers["local"]
    assert isinstance(issuer_cfg, LocalCAIssuerConfig)
    ca = CountingCA(LocalCA("local", issuer_cfg, clock=clock))
    app = App.open(config, clock=clock, prober=None, issuers={"local": ca})  # type: ignore[dict-item]
    scheduler = Scheduler(lambda: app, clock, workers=1, inline=True)
    out = tmp_path / "out/web"
    try:
        first = app.pipeline.renew("web")
        assert (first.outcome, first.state) == ("renewed", "deployed") and ca.orders == 1
        (tmp_path / "lb-down").touch()
        clock.advance(timedelta(hours=49))  # past the renewal time (2/3 of 72 h)
        assert scheduler.scan() == ["web"]
        assert ca.orders == 2  # the renewal's one order
        assert published_serial(out) == first.serial  # rolled back: the old certificate is served
        issued = app.inventory.versions("web")[0]
        assert issued.state == "failed" and issued.failed_step == "deploy"

        # Hours of retries while the load balancer stays down: each rolls the issued version out again.
        retries = 0
        until = clock.now() + timedelta(hours=4)
        while clock.now() < until:
            row = app.inventory.certificate("web")
            assert row is not None and row.next_attempt_at is not None
            clock.current = row.next_attempt_at + timedelta(seconds=1)
            retries += len(scheduler.scan())
            assert published_serial(out) == first.serial
        assert retries >= 3 and ca.orders == 2, (retries, ca.orders)
        row = app.inventory.certificate("web")
        assert row is not None and row.failed_step == "deploy" and row.failures >= retries

        (tmp_path / "lb-down").unlink()  # the load balancer is back
        assert row.next_attempt_at is not None
        clock.current = row.next_attempt_at + timedelta(seconds=1)
        assert scheduler.scan() == ["web"]
        assert ca.orders == 2  # still the one order: the version issued hours ago is what is served now
        current = app.inventory.current_version("web")
        assert current is not None and current.serial == issued.serial and current.state == "deployed"
        assert published_serial(out) == issued.serial
        row = app.inventory.certificate("web")
        assert row is not None and (row.failures, row.last_error, row.next_attempt_at) == (0, None, None)
        succeeded = [e for e in app.inventory.events("web") if e.kind == "renewal.succeeded"]
        assert "rolled out again: no new order" in succeeded[0].message
    finally:
        scheduler.shutdown()
        app.close()


def test_a_forced_renewal_still_orders(write_config: WriteConfig, tmp_path: Path) -> None:
    """--force asks for a new certificate (a key the operator distrusts): it is never answered with an old one."""
    config = load_config(write_config(CONFIG))
    issuer_cfg = config.issuers["local"]
    assert isinstance(issuer_cfg, LocalCAIssuerConfig)
    ca = CountingCA(LocalCA("local", issuer_cfg))
    app = App.open(config, prober=None, issuers={"local": ca})  # type: ignore[dict-item]
    try:
        assert app.pipeline.renew("web").outcome == "renewed"
        (tmp_path / "lb-down").touch()
        assert app.pipeline.renew("web", force=True).outcome == "failed"
        assert app.pipeline.renew("web", force=True).outcome == "failed"
        assert ca.orders == 3
    finally:
        app.close()
