"""The trust bundle keeps the CA of what servers may still present while a rollout is in progress.

Seen as a flaky CA-rotation test: a second certificate's renewal finished while the first one's new version
was already current but not yet deployed; its bundle refresh computed the bundle from current versions only,
dropped the old CA and pushed that to HAProxy, and HAProxy refused the backend still serving under the old
CA ("tlsv1 alert unknown ca"). Here a deploy hook asks `certd bundle` in the middle of a rollout to a new CA.
"""

from __future__ import annotations

import sys
from pathlib import Path

from certd.config.load import load_config
from certd.engine.app import App
from certd.pki.certs import fingerprint, load_pem_certs
from tests.conftest import WriteConfig

CONFIG = """
[database]
url = "sqlite:///{tmp}/certd.db"

[issuers.local]
type = "local-ca"
dir = "{tmp}/CA_DIR"

[deploy.hook]
type = "command"
argv = ["PYTHON", "-m", "certd", "-c", "{tmp}/certd.toml", "bundle", "backend", "--out", "{tmp}/mid-rollout.pem"]
timeout = "60s"

[certificates.backend]
issuer = "local"
names = ["backend.example.test"]
output_dir = "{tmp}/out/backend"
deploy = ["hook"]
"""


def _prints(path: Path) -> set[str]:
    return {fingerprint(c) for c in load_pem_certs(path.read_bytes())}


def test_the_old_ca_stays_in_the_bundle_until_the_new_certificate_is_deployed(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    body = CONFIG.replace("PYTHON", sys.executable)
    app = App.open(load_config(write_config(body.replace("CA_DIR", "ca1"))))
    try:
        assert app.pipeline.renew("backend").outcome == "renewed"
    finally:
        app.close()
    # The old intermediate travels with the old version's chain; its root is known to an issuer that rotates
    # (certd ca rotate keeps it until unpin), not to this one, whose directory was simply replaced.
    old_cas = _prints(tmp_path / "ca1/intermediate.pem")

    app = App.open(load_config(write_config(body.replace("CA_DIR", "ca2"))))  # the issuer moved to a new CA
    try:
        renewed = app.pipeline.renew("backend", force=True)
        assert (renewed.outcome, renewed.state) == ("renewed", "deployed"), renewed
        new_cas = _prints(tmp_path / "ca2/root.pem") | _prints(tmp_path / "ca2/intermediate.pem")
        during = _prints(tmp_path / "mid-rollout.pem")
        assert old_cas <= during and new_cas <= during  # mid-rollout: servers may present either
        after = {fingerprint(c) for c in app.pipeline.trust_bundle("backend")}
        assert new_cas <= after and not (old_cas & after)  # deployed: the old CA is no longer needed
    finally:
        app.close()
