"""The renewal pipeline end to end on the local CA, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import update

from certd.config.load import load_config
from certd.config.model import Config
from certd.engine.app import App
from certd.inventory.models import Lease
from certd.issuers.base import Issued, IssueRequest
from certd.issuers.local_ca import LocalCA
from certd.pki.certs import certs_pem, load_pem_certs, serial_hex
from certd.pki.revocation import RevocationReason
from certd.pki.x509check import verify_chain
from tests.conftest import LOCAL_CA_CONFIG, WriteConfig


def test_first_renewal_writes_the_files_and_records_a_version(local_config: Config, local_app: App) -> None:
    result = local_app.pipeline.renew("backend")
    assert (result.outcome, result.state, result.reason) == ("renewed", "published", "DoesNotExist")
    out = local_config.certificates["backend"].output_dir
    for name, mode in (("privkey.pem", 0o600), ("combined.pem", 0o600), ("cert.pem", 0o644)):
        assert (out / name).resolve().stat().st_mode & 0o777 == mode
    leaf = load_pem_certs((out / "cert.pem").read_bytes())[0]
    chain = tuple(load_pem_certs((out / "chain.pem").read_bytes()))
    assert serial_hex(leaf) == result.serial
    assert len(chain) == 1 and chain[0].subject != chain[0].issuer  # intermediates only, no root
    root = load_pem_certs((local_config.issuers["local"].dir / "root.pem").read_bytes())  # type: ignore[union-attr]
    assert verify_chain(leaf, chain, tuple(root), ("backend-1.internal",), leaf.not_valid_before_utc) == []
    assert (out / "fullchain.pem").read_bytes() == (out / "cert.pem").read_bytes() + (out / "chain.pem").read_bytes()
    history = local_app.inventory.versions("backend")
    assert [v.state for v in history] == ["published"]
    kinds = [e.kind for e in local_app.inventory.events("backend")]
    assert kinds[:3] == ["renewal.succeeded", "publish.done", "renewal.started"]


def test_not_due_is_skipped_and_force_renews(local_app: App) -> None:
    first = local_app.pipeline.renew("edge")
    again = local_app.pipeline.renew("edge")
    assert (again.outcome, again.serial, again.reason) == ("skipped", first.serial, "NotDue")
    forced = local_app.pipeline.renew("edge", force=True)
    assert forced.outcome == "renewed" and forced.serial != first.serial
    states = [v.state for v in local_app.inventory.versions("edge")]
    assert states == ["published", "superseded"]


def test_twenty_concurrent_renewals_make_one_version(local_app: App) -> None:
    local_app.pipeline.renew("edge")
    barrier = threading.Barrier(20)
    results = []

    def go() -> None:
        barrier.wait()
        results.append(local_app.pipeline.renew("edge", force=True))

    threads = [threading.Thread(target=go) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(local_app.inventory.versions("edge")) == 2
    assert all(r.outcome == "renewed" for r in results), results
    assert len({r.serial for r in results}) == 1


class _WrongNames(LocalCA):
    """The real local CA, made to sign fewer names than asked (a CA mistake)."""

    def issue(self, request: IssueRequest) -> Issued:
        return super().issue(replace(request, names=request.names[:1]))


class _StealsLease(LocalCA):
    """The real local CA; while it issues, another holder takes the lease (a paused worker)."""

    app: App

    def issue(self, request: IssueRequest) -> Issued:
        with self.app.inventory.sessions.begin() as s:
            s.execute(update(Lease).values(token=Lease.token + 1, owner="someone-else"))
        return super().issue(request)


@contextmanager
def _app_with(config: Config, issuer: LocalCA) -> Iterator[App]:
    """Another App on the same inventory whose ``local`` issuer is ``issuer`` (as a second process would be)."""
    app = App.open(config, issuers={"local": issuer})
    try:
        yield app
    finally:
        app.close()


def test_failed_check_is_never_published(local_config: Config, local_app: App) -> None:
    good = local_app.pipeline.renew("edge")
    out = local_config.certificates["edge"].output_dir
    before = (out / "combined.pem").read_bytes()
    with _app_with(local_config, _WrongNames("local", local_config.issuers["local"])) as other:  # type: ignore[arg-type]
        bad = other.pipeline.renew("edge", force=True)
    assert (bad.outcome, bad.failed_step, bad.reason) == ("failed", "check", "NamesNotCovered")
    assert "www.example.test" in (bad.error or "")
    assert (out / "combined.pem").read_bytes() == before
    current = local_app.inventory.current_version("edge")
    assert current is not None and current.serial == good.serial
    row = local_app.inventory.certificate("edge")
    assert row is not None and row.failures == 1 and row.next_attempt_at is not None
    assert "check:" in (row.last_error or "")


def test_lease_lost_means_nothing_is_written(local_config: Config, local_app: App) -> None:
    stealer = _StealsLease("local", local_config.issuers["local"])  # type: ignore[arg-type]
    stealer.app = local_app
    with _app_with(local_config, stealer) as other:
        result = other.pipeline.renew("edge")
    assert (result.outcome, result.reason) == ("failed", "LeaseLost")
    assert local_app.inventory.versions("edge") == []
    assert not (local_config.certificates["edge"].output_dir / "combined.pem").exists()


def test_failed_deploy_rolls_back(write_config: WriteConfig, db_url: str, tmp_path: Path) -> None:
    flag = tmp_path / "fail"
    body = LOCAL_CA_CONFIG.replace(
        'output_dir = "{tmp}/out/edge"',
        'output_dir = "{tmp}/out/edge"\ndeploy = ["hook"]\nrollback = true',
    ) + (
        '\n[deploy.hook]\ntype = "command"\n'
        'argv = ["sh", "-c", "test ! -e {tmp}/fail || { rm {tmp}/fail; echo broken >&2; exit 3; }"]\n'
    )
    app = App.open(load_config(write_config(body, db_url=db_url)))
    try:
        first = app.pipeline.renew("edge")
        assert (first.outcome, first.state) == ("renewed", "deployed")
        flag.touch()
        second = app.pipeline.renew("edge", force=True)
        assert (second.outcome, second.failed_step) == ("failed", "deploy")
        assert "exited 3 | output: broken" in (second.error or "")
        served = load_pem_certs((tmp_path / "out/edge/cert.pem").read_bytes())[0]
        assert serial_hex(served) == first.serial
        current = app.inventory.current_version("edge")
        assert current is not None and current.serial == first.serial
        kinds = [e.kind for e in app.inventory.events("edge")]
        assert "rollback.done" in kinds
        states = {v.serial: v.state for v in app.inventory.versions("edge")}
        assert states == {first.serial: "deployed", second.serial: "failed"}
    finally:
        app.close()


def test_import_then_revoke_and_history(local_config: Config, local_app: App, tmp_path: Path) -> None:
    ca = LocalCA("x", local_config.issuers["local"])  # type: ignore[arg-type]
    from certd.pki.keys import KeyType, build_csr, generate_key, key_pem

    key = generate_key(KeyType.ECDSA_P256)
    names = ("lb.example.test", "www.example.test")
    issued = ca.issue(IssueRequest("edge", names, KeyType.ECDSA_P256, build_csr(key, names)))
    cert_pem, chain_pem = certs_pem([issued.leaf]), certs_pem(issued.chain)
    result = local_app.pipeline.import_certificate("edge", cert_pem, key_pem(key), chain_pem)
    assert (result.outcome, result.serial) == ("imported", serial_hex(issued.leaf))
    revoked = local_app.pipeline.revoke("edge", RevocationReason.KEY_COMPROMISE)
    assert revoked.state == "revoked"
    revoked_file = (local_config.issuers["local"].dir / "revoked.txt").read_text()  # type: ignore[union-attr]
    assert f"{result.serial} keyCompromise" in revoked_file
    renewed = local_app.pipeline.renew("edge")
    assert (renewed.outcome, renewed.reason) == ("renewed", "Revoked")
    from certd.reports.views import history_doc

    doc = json.loads(json.dumps(history_doc(local_app, "edge")))
    assert [v["state"] for v in doc["versions"]] == ["published", "revoked"]


def test_unknown_certificate_is_a_failed_result(local_app: App) -> None:
    result = local_app.pipeline.renew("nope")
    assert (result.outcome, result.failed_step) == ("failed", "plan")
    assert "not in the configuration" in (result.error or "")


def test_sync_retires_removed_certificates(write_config: WriteConfig, db_url: str) -> None:
    app = App.open(load_config(write_config(LOCAL_CA_CONFIG, db_url=db_url)))
    app.close()
    trimmed = LOCAL_CA_CONFIG[: LOCAL_CA_CONFIG.index("[certificates.backend]")]
    app = App.open(load_config(write_config(trimmed, db_url=db_url)))
    try:
        row = app.inventory.certificate("backend")
        assert row is not None and row.retired_at is not None
        from certd.reports.views import list_doc

        statuses = {c["name"]: c["status"] for c in list_doc(app)["certificates"]}
        assert statuses == {"edge": "pending", "backend": "retired"}
    finally:
        app.close()


@pytest.mark.parametrize("key_type", ["rsa-2048", "ed25519"])
def test_other_key_types_through_the_pipeline(write_config: WriteConfig, sqlite_url: str, key_type: str) -> None:
    body = LOCAL_CA_CONFIG.replace('key = "ecdsa-p384"', f'key = "{key_type}"')
    app = App.open(load_config(write_config(body, db_url=sqlite_url)))
    try:
        assert app.pipeline.renew("backend").state == "published"
    finally:
        app.close()


def test_history_has_millisecond_times_and_each_steps_duration(local_app: App) -> None:
    import re

    from certd.reports.views import history_doc

    result = local_app.pipeline.renew("edge")
    assert result.outcome == "renewed"
    doc = history_doc(local_app, "edge")
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["at"]) for e in doc["events"])
    done = next(e for e in doc["events"] if e["kind"] == "renewal.succeeded")
    for step in ("plan", "key", "issue", "record", "check", "publish"):
        assert re.search(rf"\b{step} \d+ ms\b", done["message"]), done["message"]
