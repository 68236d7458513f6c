"""``keep`` counts good generations only: failed rollouts never push the last good certificate off disk.

Issue 18, case 5: with ``keep = 3``, three failed attempts used to delete the
generation being served, and the next rollback failed ("previous generation …
is no longer on disk"). Real local CA, a real command hook that fails on demand.
"""

from __future__ import annotations

from pathlib import Path

from certd.config.load import load_config
from certd.core.kinds import EventKind
from certd.deploy.publish import current_generation, list_generations
from certd.engine.app import App
from certd.pki.certs import load_pem_certs, serial_hex
from tests.conftest import LOCAL_CA_CONFIG, WriteConfig


def _config(keep: int, rollback: bool) -> str:
    return LOCAL_CA_CONFIG.replace(
        'output_dir = "{tmp}/out/edge"',
        f'output_dir = "{{tmp}}/out/edge"\ndeploy = ["hook"]\nrollback = {str(rollback).lower()}\nkeep = {keep}',
    ) + (  # while {tmp}/only holds a serial, every other serial fails to deploy (a backend refusing it)
        '\n[deploy.hook]\ntype = "command"\nargv = ["sh", "-c", "test ! -e {tmp}/only || '
        'test \\"$CERTD_SERIAL\\" = \\"$(cat {tmp}/only)\\" || { echo broken >&2; exit 3; }"]\n'
    )


def _served(tmp_path: Path) -> str:
    return serial_hex(load_pem_certs((tmp_path / "out/edge/cert.pem").read_bytes())[0])


def test_failed_rollouts_never_push_the_good_generation_off_disk(
    write_config: WriteConfig, sqlite_url: str, tmp_path: Path
) -> None:
    app = App.open(load_config(write_config(_config(keep=1, rollback=True), db_url=sqlite_url)))
    try:
        good = app.pipeline.renew("edge")
        assert (good.outcome, good.state) == ("renewed", "deployed")
        (tmp_path / "only").write_text(str(good.serial))
        for attempt in range(4):  # more failures than keep allows generations
            failed = app.pipeline.renew("edge", force=True)
            assert (failed.outcome, failed.failed_step) == ("failed", "deploy"), (attempt, failed)
            assert _served(tmp_path) == good.serial
        kinds = [e.kind for e in app.inventory.events("edge")]
        assert kinds.count(EventKind.ROLLBACK_DONE) == 4 and EventKind.ROLLBACK_FAILED not in kinds
        gens = list_generations(tmp_path / "out/edge")
        current = current_generation(tmp_path / "out/edge")
        assert current is not None and not current.failed
        # the good one (current) and at most the last failed one, which the next publish removes
        assert sum(1 for g in gens if g.failed) <= 1, [g.name for g in gens]

        (tmp_path / "only").unlink()
        fixed = app.pipeline.renew("edge", force=True)
        assert (fixed.outcome, fixed.state) == ("renewed", "deployed")
        gens = list_generations(tmp_path / "out/edge")
        assert [g.failed for g in gens] == [False, False]  # keep = 1: the new one and the previous good one
        assert good.serial in {serial_hex(load_pem_certs(g.read("cert.pem"))[0]) for g in gens}
    finally:
        app.close()


def test_a_failed_generation_left_current_is_kept_and_redeployed(
    write_config: WriteConfig, sqlite_url: str, tmp_path: Path
) -> None:
    """Without rollback the failed version stays current (its files are served): never removed, good once it deploys."""
    app = App.open(load_config(write_config(_config(keep=1, rollback=False), db_url=sqlite_url)))
    try:
        first = app.pipeline.renew("edge")
        assert first.outcome == "renewed"
        (tmp_path / "only").write_text(str(first.serial))
        failed = app.pipeline.renew("edge", force=True)
        assert failed.outcome == "failed"
        current = current_generation(tmp_path / "out/edge")
        assert current is not None and current.failed and _served(tmp_path) == failed.serial
        (tmp_path / "only").unlink()
        redeployed = app.pipeline.deploy("edge")
        assert (redeployed.outcome, redeployed.serial) == ("deployed", failed.serial)
        current = current_generation(tmp_path / "out/edge")
        assert current is not None and not current.failed
    finally:
        app.close()
