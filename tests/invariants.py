"""The promise, checked continuously while faults run (issue 18): a poller that reads what an operator reads
(``/v1/certificates``, ``/readyz``, ``/metrics``, ``certd list --json``, ``certd check --json``) and compares it
with the truth on disk — the certificate actually published — at every sample.

The invariants, per certificate, whatever fault is running:

- **never "all is well" while it isn't**: when the served certificate is expired, every reader says
  ``expired`` (``/readyz`` names it, the ``expired`` gauge is 1, ``check`` exits 2); inside its hard deadline
  with no successor served, every reader says ``critical`` or ``expired``;
- **no expiry while a CA could issue** is the caller's to judge (it knows when its fault ends); the checker
  records each moment a served certificate was expired (``expired_at``) and every status each reader gave.

A sample is taken as: the truth read from disk, then the readers, then the truth again; if anything switched
the served certificate in between (a renewal, or a rollout and its rollback), the sample says nothing and is
dropped.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import requests
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

BAD = {"expired", "critical"}
MISMATCH_GRACE = 15.0  # seconds the API may name another serial than the files (a rollback between its steps)


@dataclass(frozen=True)
class Truth:
    serial: str
    not_before: datetime
    not_after: datetime
    # The inode of the ``..data`` link: every switch makes a new one, so a rollout and its rollback inside one
    # sample (old, new, old again) does not pass for an unchanged certificate.
    switch: int = 0

    @property
    def hard_deadline(self) -> datetime:
        return self.not_after - (self.not_after - self.not_before) / 10


def served(output_dir: Path) -> Truth | None:
    try:
        switch = os.lstat(output_dir / "..data").st_ino
        cert = x509.load_pem_x509_certificate((output_dir / "cert.pem").read_bytes())
    except (OSError, ValueError):
        return None
    return Truth(f"{cert.serial_number:x}", cert.not_valid_before_utc, cert.not_valid_after_utc, switch)


@dataclass
class Record:
    """What one certificate went through, for the caller's own assertions."""

    statuses: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, API status)
    serials: list[str] = field(default_factory=list)
    expired_at: list[float] = field(default_factory=list)  # monotonic moments the served one was expired
    renewed_at: float | None = None  # first moment a serial other than the first was served


class Checker:
    """Polls in a thread; ``violations`` lists every sample where a reader said less than the truth."""

    def __init__(self, api: str, outputs: dict[str, Path], *, cli: Callable[..., object] | None = None,
                 config: Path | None = None, every: float = 1.0, cli_every: float = 5.0) -> None:
        self.api, self.outputs, self.every, self.cli_every = api, outputs, every, cli_every
        self.cli, self.config = cli, config
        self.records: dict[str, Record] = defaultdict(Record)
        self.violations: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._mismatch: dict[str, float] = {}  # name -> when the API first named another serial than the disk
        self._mismatch_told: set[str] = set()
        self.cli_samples = 0
        # The CLI readers run in their own thread: a ``certd list`` that takes seconds on a busy machine must
        # not thin out the API samples (seen in CI: 46 samples in 4 minutes with both in one loop).
        self._threads = [threading.Thread(target=self._run, name="invariants", daemon=True)]
        if cli is not None:
            self._threads.append(threading.Thread(target=self._run_cli, name="invariants-cli", daemon=True))

    def start(self) -> Checker:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(60)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.sample()
            except requests.RequestException as exc:
                self.violations.append(f"the API did not answer: {exc}")

    def _run_cli(self) -> None:
        while not self._stop.wait(self.cli_every):
            self._sample_cli()

    def sample(self) -> None:
        before = {n: served(p) for n, p in self.outputs.items()}
        now = datetime.now(UTC)
        mono = time.monotonic()
        docs = {d["name"]: d for d in requests.get(f"{self.api}/v1/certificates", timeout=10).json()["certificates"]}
        ready = requests.get(f"{self.api}/readyz", timeout=10)
        gauges = _gauges(requests.get(f"{self.api}/metrics", timeout=10).text)
        after = {n: served(p) for n, p in self.outputs.items()}
        self.samples += 1
        for name, truth in before.items():
            if truth is None or after[name] != truth:
                continue  # nothing served yet, or a renewal landed mid-sample
            if docs[name]["serial"] != truth.serial:
                # Mid-switch: a rollback put the files back and has not yet made that version current. That
                # lasts a moment; an inventory that keeps naming another serial than the files is a lie.
                since = self._mismatch.setdefault(name, mono)
                if mono - since > MISMATCH_GRACE and name not in self._mismatch_told:
                    self._mismatch_told.add(name)
                    self.violations.append(f"{name}: {truth.serial} on disk, but the API named "
                                           f"{docs[name]['serial']} for {mono - since:.0f} s")
                continue
            self._mismatch.pop(name, None)
            record = self.records[name]
            status = docs[name]["status"]
            record.statuses.append((mono, status))
            if not record.serials or record.serials[-1] != truth.serial:
                record.serials.append(truth.serial)
                if len(record.serials) == 2:
                    record.renewed_at = mono
            if now >= truth.not_after:
                record.expired_at.append(mono)
                self._expect(name, "expired", status == "expired", f"the API said {status}")
                self._expect(name, "expired", gauges.get((name, "expired")) == 1.0, "the expired gauge was not 1")
                self._expect(name, "expired", ready.status_code == 503 and name in ready.text,
                             f"/readyz answered {ready.status_code} without it")
            elif now >= truth.hard_deadline:
                self._expect(name, "critical", status in BAD, f"the API said {status}")
                self._expect(name, "critical", gauges.get((name, "critical")) == 1.0 or
                             gauges.get((name, "expired")) == 1.0, "neither critical nor expired gauge was 1")
                self._expect(name, "critical", ready.status_code == 503 and name in ready.text,
                             f"/readyz answered {ready.status_code} without it")

    def _sample_cli(self) -> None:
        """``certd list --json`` and ``certd check --json``, the operator's other two readers."""
        assert self.cli is not None
        before = {n: served(p) for n, p in self.outputs.items()}
        now = datetime.now(UTC)
        listed = self.cli("list", "--json", config=self.config, process=True)
        check = self.cli("check", "--json", config=self.config, process=True)
        after = {n: served(p) for n, p in self.outputs.items()}
        docs = {d["name"]: d for d in json.loads(listed.stdout)["certificates"]}  # type: ignore[attr-defined]
        statuses = {name: doc["status"] for name, doc in docs.items()}
        self.cli_samples += 1
        for name, truth in before.items():
            if truth is None or after[name] != truth or now < truth.hard_deadline:
                continue
            if docs[name]["serial"] != truth.serial:
                continue  # mid-rollback, as in ``sample``: the files are back, the inventory not yet
            wanted = "expired" if now >= truth.not_after else "critical"
            self._expect(name, wanted, statuses[name] in BAD, f"certd list said {statuses[name]}")
            self._expect(name, wanted, check.returncode == 2, f"certd check exited {check.returncode}")  # type: ignore[attr-defined]

    def _expect(self, name: str, truth: str, held: bool, said: str) -> None:
        if not held:
            self.violations.append(f"{name}: {truth} on disk, but {said}")


def _gauges(text: str) -> dict[tuple[str, str], float]:
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "certd_certificate_ready_status":
            for sample in family.samples:
                found[(sample.labels["name"], sample.labels["condition"])] = sample.value
    return found
