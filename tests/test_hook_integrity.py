"""Issue 19, class 4: what a hook does after certd published.

After every deploy target the published set is compared with what certd wrote — content byte for byte,
the links, the modes and owners it was configured with — and a difference fails the deploy, naming it.
``certd deploy`` puts back a whole set (a fresh generation from the recorded version) before any target
runs. Real local CA, real ``sh`` hooks; nothing inside certd is mocked.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from certd.config.load import load_config
from certd.core.kinds import EventKind
from certd.deploy.publish import FILES, current_generation, list_generations
from certd.engine.app import App
from certd.pki.certs import load_pem_certs, serial_hex
from certd.pki.keys import load_key_pem
from tests.conftest import LOCAL_CA_CONFIG, WriteConfig

BENIGN = "true"


def _config(rollback: bool) -> str:
    return '[database]\nurl = "sqlite:///{tmp}/certd.db"\n' + LOCAL_CA_CONFIG.replace(
        'output_dir = "{tmp}/out/edge"',
        f'output_dir = "{{tmp}}/out/edge"\ndeploy = ["t"]\nrollback = {str(rollback).lower()}',
    ) + f"\n[deploy.t]\ntype = \"command\"\nargv = [\"sh\", \"-c\", '{BENIGN}']\n"


def _set_hook(config: Path, script: str) -> None:
    text = config.read_text()
    start = text.index('argv = ["sh", "-c", ') + len('argv = ["sh", "-c", ')
    end = text.index("]\n", start)
    config.write_text(text[:start] + f"'{script}'" + text[end:])


def _whole(out: Path) -> str:
    """The set reached through the stable paths is whole and as certd publishes it; its serial."""
    files = {name: (out / name).read_bytes() for name in FILES}
    (leaf,) = load_pem_certs(files["cert.pem"])
    key = load_key_pem(files["privkey.pem"])
    assert key.public_key() == leaf.public_key()
    assert files["fullchain.pem"] == files["cert.pem"] + files["chain.pem"]
    assert files["combined.pem"] == files["privkey.pem"] + files["fullchain.pem"]
    for name in FILES:
        assert os.readlink(out / name) == f"..data/{name}"
        mode = stat.S_IMODE((out / name).stat().st_mode)
        assert mode == (0o600 if name in ("privkey.pem", "combined.pem") else 0o644), (name, oct(mode))
    return serial_hex(leaf)


CASES = [
    ('chmod 0644 "$CERTD_PRIVKEY"', "privkey.pem has mode 0644, certd published it 0600", True),
    ('cat "$CERTD_OUTPUT_DIR/chain.pem" > "$CERTD_OUTPUT_DIR/cert.pem"',
     "cert.pem no longer holds the published content", False),
    ('printf junk > "$CERTD_OUTPUT_DIR/chain.pem"', "chain.pem no longer holds the published content", False),
    ('cp --remove-destination "$CERTD_FULLCHAIN" "$CERTD_FULLCHAIN.x" && mv "$CERTD_FULLCHAIN.x" '
     '"$CERTD_FULLCHAIN"', "fullchain.pem was replaced by a file", False),
    ('cd "$CERTD_OUTPUT_DIR" && mkdir -p other && ln -sfn other ..data',
     "..data points at other, not at", False),
    # Once (its rollback run leaves the previous generation alone), so there is something to roll back to.
    ('cd "$CERTD_OUTPUT_DIR" && test ! -e ../outside && g=$(readlink ..data) && cp -rp "$g" ../outside && '
     'rm -rf "$g" && ln -s "$PWD/../outside" "$g" || true', "was replaced by a link to", False),
]


@pytest.mark.parametrize(("script", "problem", "exposed"), CASES, ids=[c[1].split()[0] for c in CASES])
def test_a_hook_that_changes_the_published_set_fails_the_deploy_and_certd_deploy_repairs_it(
    write_config: WriteConfig, tmp_path: Path, script: str, problem: str, exposed: bool
) -> None:
    config = write_config(_config(rollback=True))
    out = tmp_path / "out/edge"
    app = App.open(load_config(config))
    try:
        first = app.pipeline.renew("edge")
        assert first.outcome == "renewed", first
    finally:
        app.close()
    _set_hook(config, script)
    app = App.open(load_config(config))
    try:
        result = app.pipeline.renew("edge", force=True)
        assert (result.outcome, result.failed_step) == ("failed", "deploy"), result
        error = result.error or ""
        assert error.startswith("deploy t: after it ran, the published files changed: "), error
        assert problem in error, error
        assert ("the key was readable beyond its configured mode" in error) is exposed, error
        row = app.inventory.certificate("edge")
        assert row is not None and row.last_error is not None and problem in row.last_error
    finally:
        app.close()
    # The hook is fixed; `certd deploy` puts back a whole set before it runs, and the failure clears.
    _set_hook(config, BENIGN)
    app = App.open(load_config(config))
    try:
        done = app.pipeline.deploy("edge")
        assert done.outcome == "deployed", done
        current = app.inventory.current_version("edge")
        assert current is not None and _whole(out) == current.serial
        assert current.generation == (current_generation(out) or pytest.fail("no generation")).name
        repaired = [e.message for e in app.inventory.events("edge") if e.kind == EventKind.PUBLISH_REPAIRED]
        assert repaired or "test ! -e ../outside" in script, "the repair was not recorded"  # that one rolled back
        assert not (out / current.generation).is_symlink()
        row = app.inventory.certificate("edge")
        assert row is not None and row.last_error is None
        assert not any(g.failed for g in list_generations(out) if g.name != current.generation)
    finally:
        app.close()


def test_a_repaired_exposed_key_is_named_and_a_clean_set_is_left_alone(write_config: WriteConfig,
                                                                        tmp_path: Path) -> None:
    """A deploy of an untouched set publishes nothing new; one whose key a person chmod'ed says so."""
    config = write_config(_config(rollback=False))
    out = tmp_path / "out/edge"
    app = App.open(load_config(config))
    try:
        assert app.pipeline.renew("edge").outcome == "renewed"
        before = current_generation(out)
        assert app.pipeline.deploy("edge").outcome == "deployed"
        assert current_generation(out) == before  # nothing changed: no new generation
        os.chmod(out / "privkey.pem", 0o644)
        assert app.pipeline.deploy("edge").outcome == "deployed"
        assert current_generation(out) != before
        assert stat.S_IMODE((out / "privkey.pem").stat().st_mode) == 0o600
        (message,) = [e.message for e in app.inventory.events("edge") if e.kind == EventKind.PUBLISH_REPAIRED]
        assert "has mode 0644" in message and "`certd renew edge --force` replaces it" in message
    finally:
        app.close()


def test_a_key_rewritten_without_a_sealed_copy_is_not_guessed(write_config: WriteConfig, tmp_path: Path) -> None:
    """With no ``[database] key_file`` the inventory keeps no key: a replaced key is not put back from nowhere."""
    config = write_config(_config(rollback=False))
    out = tmp_path / "out/edge"
    app = App.open(load_config(config))
    try:
        assert app.pipeline.renew("edge").outcome == "renewed"
        gen = current_generation(out)
        assert gen is not None
        other = (tmp_path / "local-ca" / "intermediate.key")
        key = gen.path / "privkey.pem"
        key.write_bytes(other.read_bytes() if other.exists() else b"not a key\n")
        done = app.pipeline.deploy("edge")
        assert (done.outcome, done.failed_step) == ("failed", "deploy"), done
        assert "the key of serial" in (done.error or "") and "`certd renew edge --force`" in (done.error or "")
    finally:
        app.close()
