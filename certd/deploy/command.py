"""``command`` target: run a program (no shell) after the switch.

The program learns what changed from its environment (``CERTD_NAME``,
``CERTD_SERIAL``, ``CERTD_OUTPUT_DIR`` and the stable file paths), never
from its command line, so nothing secret shows in ``ps``. Its output is
captured (bounded) into the event log; a hang is killed at ``timeout``.
"""

from __future__ import annotations

import os
import subprocess

from certd.config import CommandDeployConfig
from certd.deploy.base import DeployContext
from certd.errors import DeployError

__all__ = ["CommandTarget"]

_MAX_OUTPUT = 2000


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _MAX_OUTPUT else "…" + text[-_MAX_OUTPUT:]


class CommandTarget:
    """Run ``argv`` with the CERTD_* environment and a timeout."""

    def __init__(self, name: str, config: CommandDeployConfig) -> None:
        self.name = name
        self._config = config

    def deploy(self, ctx: DeployContext) -> str:
        env = dict(os.environ)
        env.update(self._config.env)
        env.update(
            {
                "CERTD_NAME": ctx.certificate,
                "CERTD_SERIAL": ctx.serial,
                "CERTD_NAMES": " ".join(ctx.names),
                "CERTD_OUTPUT_DIR": str(ctx.paths.output_dir),
                "CERTD_FULLCHAIN": str(ctx.paths.fullchain),
                "CERTD_PRIVKEY": str(ctx.paths.privkey),
                "CERTD_COMBINED": str(ctx.paths.combined),
            }
        )
        argv = self._config.argv
        try:
            proc = subprocess.run(
                argv,
                env=env,
                capture_output=True,
                text=True,
                timeout=self._config.timeout.total_seconds(),
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError as exc:
            raise DeployError(f"deploy {self.name}: command {argv[0]} not found", retryable=False) from exc
        except PermissionError as exc:
            raise DeployError(f"deploy {self.name}: command {argv[0]} is not executable", retryable=False) from exc
        except subprocess.TimeoutExpired as exc:
            raise DeployError(
                f"deploy {self.name}: command {argv[0]} timed out after {self._config.timeout.total_seconds():g}s"
            ) from exc
        output = _tail(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise DeployError(
                f"deploy {self.name}: command {argv[0]} exited {proc.returncode}" + (f": {output}" if output else "")
            )
        return f"command {argv[0]} exited 0" + (f": {output}" if output else "")


def build(name: str, config: CommandDeployConfig) -> CommandTarget:
    return CommandTarget(name, config)
