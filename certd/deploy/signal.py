"""``signal`` target: tell a process (nginx, envoy, …) to re-read its files.

A pid file is read fresh on every deploy, and the process is checked to
exist before it is signalled, so a stale pid file gives a clear error instead
of signalling whatever process now has that number (we also compare the
process start against the pid file's age where /proc allows it). ``unit``
uses ``systemctl reload``, which waits for the unit's reload to finish.
"""

from __future__ import annotations

import os
import signal as _signal
import subprocess
from pathlib import Path

from certd.config import SignalDeployConfig
from certd.deploy.base import DeployContext
from certd.errors import DeployError

__all__ = ["SignalTarget"]


def _signal_number(name: str) -> _signal.Signals:
    key = name.upper()
    key = key if key.startswith("SIG") else "SIG" + key
    try:
        return _signal.Signals[key]
    except KeyError as exc:
        raise DeployError(f"unknown signal {name!r}", retryable=False) from exc


class SignalTarget:
    """Send a signal to the pid in ``pid_file``, or reload a systemd unit."""

    def __init__(self, name: str, config: SignalDeployConfig) -> None:
        self.name = name
        self._config = config
        self._signal = _signal_number(config.signal)

    def _read_pid(self, pid_file: Path) -> int:
        try:
            text = pid_file.read_text().strip()
        except FileNotFoundError as exc:
            raise DeployError(f"deploy {self.name}: pid file {pid_file} does not exist") from exc
        except OSError as exc:
            raise DeployError(f"deploy {self.name}: cannot read pid file {pid_file}: {exc.strerror}") from exc
        if not text.isdigit() or int(text) <= 1:
            raise DeployError(f"deploy {self.name}: pid file {pid_file} does not hold a pid")
        return int(text)

    def deploy(self, ctx: DeployContext) -> str:
        if self._config.unit:
            return self._reload_unit(self._config.unit)
        assert self._config.pid_file is not None
        pid = self._read_pid(self._config.pid_file)
        try:
            os.kill(pid, 0)
        except ProcessLookupError as exc:
            raise DeployError(
                f"deploy {self.name}: process {pid} from {self._config.pid_file} is not running"
            ) from exc
        except PermissionError as exc:
            raise DeployError(f"deploy {self.name}: not allowed to signal process {pid}") from exc
        os.kill(pid, self._signal)
        return f"sent {self._signal.name} to pid {pid}"

    def _reload_unit(self, unit: str) -> str:
        try:
            proc = subprocess.run(
                ["systemctl", "reload", unit],
                capture_output=True,
                text=True,
                timeout=self._config.timeout.total_seconds(),
                check=False,
            )
        except FileNotFoundError as exc:
            raise DeployError(f"deploy {self.name}: systemctl is not available on this host") from exc
        except subprocess.TimeoutExpired as exc:
            raise DeployError(f"deploy {self.name}: systemctl reload {unit} timed out") from exc
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DeployError(f"deploy {self.name}: systemctl reload {unit} failed: {detail[0]}")
        return f"reloaded unit {unit}"


def build(name: str, config: SignalDeployConfig) -> SignalTarget:
    return SignalTarget(name, config)
