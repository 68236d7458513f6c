"""Assembly: build the services, the pipeline façade and their dependencies from a config.

The CLI, the daemon and the HTTP API each call ``App.open`` and then act
through ``app.pipeline`` and read ``app.config``/``app.inventory``; nothing
else constructs engines, issuers or deploy targets, so the three doors
cannot drift apart. Tests hand in their own issuers, clock, prober or fault
hook here, never by reaching into what was built.
It is also where every door checks, before doing anything, that the
database is usable and that ``[database] key_file`` is the key the inventory
is sealed with (``inventory/keycheck.py``).
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from certd.config.model import Config
from certd.core.clock import Clock, SystemClock
from certd.deploy import build_targets
from certd.engine.attempt import Fault
from certd.engine.pipeline import Pipeline
from certd.engine.rollout import Prober
from certd.engine.services import IssuerPool, Services
from certd.errors import ConfigError
from certd.inventory.db import create_db_engine, schema_is_current, session_factory, upgrade
from certd.inventory.faults import inventory_error
from certd.inventory.keycheck import verify_key
from certd.inventory.leases import LeaseManager
from certd.inventory.store import Inventory
from certd.issuers import build_issuer
from certd.issuers.base import Issuer
from certd.metrics import Metrics
from certd.pki.keybox import KeyBox

__all__ = ["App", "owner_id"]


def owner_id() -> str:
    """Who holds a lease: host, pid and a random suffix (pids are reused across restarts)."""
    return f"{socket.gethostname()}:{os.getpid()}:{random.SystemRandom().getrandbits(32):08x}"


@dataclass
class App:
    """Everything one process needs, built once."""

    config: Config
    engine: Engine
    inventory: Inventory
    services: Services
    pipeline: Pipeline
    clock: Clock

    @classmethod
    def open(
        cls,
        config: Config,
        *,
        clock: Clock | None = None,
        migrate: bool = True,
        sync: bool = True,
        lease_ttl: timedelta | None = None,
        prober: Prober | None = None,
        metrics: Metrics | None = None,
        issuers: Mapping[str, Issuer] | None = None,
        fault: Fault | None = None,
    ) -> App:
        """Open the inventory (migrating unless ``migrate=False``) and build everything on it.

        ``issuers`` replaces the issuers of those names (built from the config otherwise, on first use);
        ``fault`` is called as each step begins (tests inject faults there).
        """
        clock = clock or SystemClock()
        keybox = KeyBox.from_file(config.database.key_file)
        try:
            engine = create_db_engine(config.database.url, busy_timeout=config.database.busy_timeout)
        except ConfigError as exc:  # a bad database.url is the config file's fault: name it, like every key
            raise ConfigError(f"{config.path}: {exc}") from exc
        try:
            if migrate:
                upgrade(engine)
            sessions = session_factory(engine)
            # Without migrating (monitoring), a schema that is not current is the caller's to report.
            if migrate or schema_is_current(engine):
                try:
                    verify_key(sessions, keybox, config_path=config.path, record=migrate)
                except SQLAlchemyError as exc:
                    raise inventory_error(engine.url, exc) from exc
        except BaseException:
            engine.dispose()
            raise
        inventory = Inventory(engine, sessions, keybox)
        if sync:
            inventory.sync(config, clock.now())
        leases = LeaseManager(sessions, owner_id(), lease_ttl or config.daemon.lease_ttl)

        def issuer_factory(name: str) -> Issuer:
            return build_issuer(name, config.issuers[name], inventory)

        if prober is None:
            from certd.pki.probe import verify_served

            prober = verify_served
        services = Services.build(
            config, inventory, leases, issuers=IssuerPool(issuer_factory, issuers),
            targets=build_targets(config.deploy), keybox=keybox, clock=clock, prober=prober, metrics=metrics,
            fault=fault,
        )
        return cls(config=config, engine=engine, inventory=inventory, services=services, pipeline=Pipeline(services),
                   clock=clock)

    def close(self) -> None:
        self.engine.dispose()
