"""``certd db``: inventory maintenance — schema upgrades and rotating the key that seals stored private keys.

Kept out of ``cli.py`` (which is past its size budget) and registered there
with ``cli.add_command``. It uses ``cli_base``'s console and exit-code helpers.

``rotate-key`` is the only supported way to change ``[database] key_file``:
pointing the config at another file is refused at start (``keycheck.py``),
because keys sealed with the old key would stop opening on every agent.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from certd.cli.base import State

__all__ = ["db_group"]


@click.group("db")
def db_group() -> None:
    """Database (inventory) maintenance."""


@db_group.command("upgrade")
@click.pass_obj
def db_upgrade(state: State) -> None:
    """Run Alembic migrations to the newest schema (SQLite or PostgreSQL) and sync the config."""
    from certd.cli.base import out
    from certd.inventory.faults import safe_url

    app = state.app()
    out.print(f"database at {safe_url(app.engine.url)} is up to date", markup=False)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@db_group.command("rotate-key")
@click.option("--new-key-file", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="File holding the new key: 32 random bytes as base64 (head -c 32 /dev/urandom | base64).")
@click.pass_obj
def db_rotate_key(state: State, new_key_file: Path) -> None:
    """Re-seal every private key stored in the inventory with a new key file, in one transaction.

    Afterwards only the new file opens the inventory: set [database] key_file to it on every host
    that shares the inventory and restart certd there (replicas still on the old key refuse to
    store keys until then).
    """
    from sqlalchemy.exc import SQLAlchemyError

    from certd.cli.base import EXIT_USAGE, die, err, exit_on_errors, out
    from certd.inventory.faults import inventory_error
    from certd.inventory.keycheck import rotate
    from certd.pki.keybox import KeyBox

    config = state.config
    if config.database.key_file is None:
        die(f"{config.path}: database.key_file is not set, so no stored key is sealed: set key_file to "
             f"{new_key_file} instead of rotating", EXIT_USAGE)
    new_path = new_key_file.absolute()
    with exit_on_errors():
        new = KeyBox.from_file(new_path, label="--new-key-file")
    app = state.app(sync=False)  # refuses a key_file that does not match the inventory
    old = app.inventory.keybox
    if new.check_value() == old.check_value():
        out.print(f"the inventory is already sealed with the key in {new_path}: nothing to do", markup=False)
        return
    mode = stat.S_IMODE(new_path.stat().st_mode)
    if mode & 0o077:
        err.print(f"warning: {new_path} is accessible to other users (mode {mode:04o}): chmod 0600 it",
                  markup=False)
    with exit_on_errors():
        try:
            done = rotate(app.inventory.sessions, old, new)
        except SQLAlchemyError as exc:
            raise inventory_error(app.engine.url, exc) from exc
    out.print(
        f"re-sealed {_plural(done.versions, 'certificate key')} and {_plural(done.accounts, 'ACME account key')} "
        f"with {new_path}\nnow set key_file = \"{new_path}\" in [database] of {config.path} and on every host "
        f"that shares this inventory, then restart certd there: {config.database.key_file} no longer opens it",
        markup=False,
    )
