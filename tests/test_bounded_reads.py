"""Every file certd reads goes through one bounded reader (issue 19, class 1: unbounded reads).

``/dev/zero`` as a token, key or bundle used to pass ``check-config`` and then kill every renewal with a
MemoryError (``certd bundle --out /dev/full`` reached 23.8 GB resident reading the target it compares with).
Now a configured file that is a device, a FIFO or larger than certd reads is refused when the config is
loaded, naming the key, before any CA is asked; an option naming one is refused naming the option; and a file
swapped for ``/dev/zero`` after the config was checked is refused where it is read, in bounded time.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import pytest

from certd.config.load import load_config
from certd.engine.app import App
from tests.cli import certd
from tests.conftest import WriteConfig

BASE = """
[database]
url = "sqlite:///{tmp}/certd.db"
{database}

[daemon]
{daemon}

[issuers.local]
type = "local-ca"
dir = "{tmp}/local-ca"
{issuer}

[certificates.web]
issuer = "local"
names = ["web.example.test"]
output_dir = "{tmp}/out/web"
{cert}
"""

CASES = {
    "database.key_file": {"database": 'key_file = "{bad}"'},
    "daemon.api_token_file": {"daemon": 'api_token_file = "{bad}"'},
    "issuers.local.bundle_file": {"issuer": 'bundle_file = "{bad}"'},
    "daemon.api_tls_cert_file": {"daemon": 'api_tls_cert_file = "{bad}"\napi_tls_key_file = "{{tmp}}/api.key"'},
    "daemon.api_client_ca_file": {"daemon": 'api_tls_cert_file = "{{tmp}}/api.pem"\napi_tls_key_file = '
                                            '"{{tmp}}/api.key"\napi_client_ca_file = "{bad}"'},
    "certificates.web.verify[0].ca_bundle": {
        "cert": 'verify = [{{ endpoint = "127.0.0.1:9", sni = "web.example.test", ca_bundle = "{bad}" }}]'},
}


def _config(write_config: WriteConfig, bad: Path | str, parts: dict[str, str]) -> Path:
    fields = {k: "" for k in ("database", "daemon", "issuer", "cert")}
    fields.update({k: v.format(bad=bad) for k, v in parts.items()})
    return write_config(BASE.replace("{database}", fields["database"]).replace("{daemon}", fields["daemon"])
                        .replace("{issuer}", fields["issuer"]).replace("{cert}", fields["cert"]))


@pytest.mark.parametrize("key", CASES)
@pytest.mark.parametrize("bad", ["/dev/zero", "fifo", "huge"])
def test_a_configured_file_that_is_a_device_a_fifo_or_huge_is_refused_naming_the_key(
    key: str, bad: str, write_config: WriteConfig, tmp_path: Path
) -> None:
    target: Path | str = bad
    if bad == "fifo":
        target = tmp_path / "fifo"
        os.mkfifo(target)
    elif bad == "huge":
        target = tmp_path / "huge.pem"
        with open(target, "wb") as fh:
            fh.truncate(64 * 1024 * 1024)  # sparse: 64 MiB that cost nothing on disk
    config = _config(write_config, target, CASES[key])
    started = time.monotonic()
    checked = certd("check-config", config=config, timeout=30)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert f"{key}: {target}" in checked.stderr, checked.stderr
    assert ("not a regular file" in checked.stderr) if bad != "huge" else ("at most" in checked.stderr)
    renewed = certd("renew", "web", config=config, timeout=30)  # refused before any CA is asked
    assert renewed.returncode == 2 and f"{key}: {target}" in renewed.stderr, renewed.stderr
    assert time.monotonic() - started < 20


def test_options_naming_a_device_are_refused_naming_the_option(write_config: WriteConfig, tmp_path: Path) -> None:
    config = _config(write_config, "", {})
    assert certd("renew", "web", config=config).returncode == 0
    probe = certd("probe", "127.0.0.1:9", "--ca-bundle", "/dev/zero", config=config, timeout=30)
    assert probe.returncode == 2 and "--ca-bundle /dev/zero" in probe.stderr, probe.stderr
    assert "not a regular file" in probe.stderr
    bundle = certd("bundle", "web", "--out", "/dev/full", config=config, timeout=30)
    assert bundle.returncode != 0 and "/dev/full" in bundle.stderr and "not a regular file" in bundle.stderr
    assert os.path.exists("/dev/full") and not Path("/dev/full").is_file()  # the device was not replaced
    rotate = certd("db", "rotate-key", "--new-key-file", "/dev/zero", config=config, timeout=30)
    assert rotate.returncode == 2 and "/dev/zero" in rotate.stderr, rotate.stderr


def test_a_file_swapped_for_dev_zero_after_the_check_is_refused_where_it_is_read(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    """The local CA's own intermediate, replaced by a link to /dev/zero under a running App: the renewal fails
    at once naming the file, memory stays flat, nothing is published."""
    app = App.open(load_config(_config(write_config, "", {})))
    try:
        first = app.pipeline.renew("web")
        assert first.outcome == "renewed", first
        inter = tmp_path / "local-ca/intermediate.pem"
        inter.unlink()
        inter.symlink_to("/dev/zero")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.monotonic()
        failed = app.pipeline.renew("web", force=True)
        assert time.monotonic() - started < 10
        grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    finally:
        app.close()
    assert failed.outcome == "failed" and "not a regular file" in (failed.error or ""), failed
    assert grown_kib < 50 * 1024, grown_kib  # not the gigabytes an unbounded read takes


@pytest.mark.parametrize("planted", ["fifo", "symlink"])
def test_the_local_cas_own_files_are_never_opened_through_a_link_or_a_fifo(
    write_config: WriteConfig, tmp_path: Path, planted: str
) -> None:
    """``revoked.txt`` as a FIFO hung ``certd revoke`` for ever; as a symlink, the revocation was appended to
    the file it named (attacker round). Now both fail at once naming the file, and nothing outside is touched."""
    config = _config(write_config, "", {})
    assert certd("renew", "web", config=config).returncode == 0
    revoked = tmp_path / "local-ca" / "revoked.txt"
    outside = tmp_path / "outside.txt"
    outside.write_text("someone's\n")
    if planted == "fifo":
        os.mkfifo(revoked)
    else:
        revoked.symlink_to(outside)
    started = time.monotonic()
    proc = certd("revoke", "web", "--no-replace", config=config, timeout=30)
    assert time.monotonic() - started < 20
    assert proc.returncode != 0, proc.stdout
    assert str(revoked) in proc.stdout + proc.stderr or "revoked.txt" in proc.stdout + proc.stderr
    assert outside.read_text() == "someone's\n"
