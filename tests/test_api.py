"""The HTTP API in-process (FastAPI's test client) over the real pipeline and scheduler."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from certd.api.app import ApiState, create_api
from certd.config.load import load_config
from certd.core.signing import API_LABEL, signed_headers
from certd.engine.app import App
from certd.engine.scheduler import Scheduler
from certd.issuers.local_ca import LocalCA
from certd.metrics import Metrics
from certd.reports.views import list_doc
from tests.conftest import LOCAL_CA_CONFIG, FakeClock, WriteConfig

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def api(write_config: WriteConfig, sqlite_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, App, Scheduler]]:
    app = App.open(load_config(write_config(LOCAL_CA_CONFIG, db_url=sqlite_url)), metrics=(metrics := Metrics()))
    scheduler = Scheduler(lambda: app, app.clock, workers=4, metrics=metrics)
    state = ApiState(app=lambda: app, scheduler=scheduler, metrics=metrics, token=lambda: TOKEN,
                     health=lambda: {"status": "ok"})
    with TestClient(create_api(state)) as client:
        yield client, app, scheduler
    scheduler.shutdown()
    app.close()


def _wait_job(client: TestClient, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        doc: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if doc["state"] in ("succeeded", "failed"):
            return doc
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def _signed(path: str, body: bytes = b"", *, method: str = "POST", token: str = TOKEN,
            at: int | None = None) -> dict[str, str]:
    return signed_headers(token, API_LABEL, method, path, body, time.time() if at is None else at)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"X-Certd-Timestamp": "1", "X-Certd-Signature": "sha256=00"},
        {"X-Certd-Timestamp": "\u00b2".encode(), "X-Certd-Signature": "v1=" + "0" * 64},  # "²": isdigit(), no number
    ],
    ids=["no-credentials", "wrong-bearer", "old-sha256-form", "superscript-timestamp"],
)
@pytest.mark.parametrize("name", ["edge", "does-not-exist"])
def test_unauthenticated_writes_learn_nothing_and_do_nothing(api: Any, headers: dict[str, Any], name: str) -> None:
    client, app, _ = api
    resp = client.post(f"/v1/certificates/{name}/renew", headers=headers)
    assert resp.status_code == 401
    assert name not in resp.text
    assert app.inventory.versions("edge") == []


def test_signed_request_accepted_once_and_within_five_minutes(api: Any) -> None:
    client, _, _ = api
    body = json.dumps({"reason": "ci"}).encode()
    path = "/v1/certificates/edge/renew"
    headers = _signed(path, body)
    first = client.post(path, content=body, headers=headers)
    assert first.status_code == 202
    assert _wait_job(client, first.json()["job"])["state"] == "succeeded"
    replay = client.post(path, content=body, headers=headers)
    assert replay.status_code == 401 and "already used" in replay.json()["detail"]
    shouting = dict(headers, **{"X-Certd-Signature": "v1=" + headers["X-Certd-Signature"][3:].upper()})
    assert client.post(path, content=body, headers=shouting).status_code == 401  # same MAC, other spelling
    stale = _signed(path, body, at=int(time.time()) - 301)
    assert client.post(path, content=body, headers=stale).status_code == 401
    wrong_key = _signed(path, body, token="other")
    assert client.post(path, content=body, headers=wrong_key).status_code == 401


def test_a_signature_is_bound_to_its_certificate_action_and_query(api: Any) -> None:
    client, app, _ = api
    signed = _signed("/v1/certificates/edge/renew?if_due=true")
    for target in ("/v1/certificates/backend/renew?if_due=true", "/v1/certificates/edge/deploy?if_due=true",
                   "/v1/certificates/edge/renew?if_due=false", "/v1/certificates/edge/renew"):
        resp = client.post(target, headers=signed)
        assert resp.status_code == 401, target
        assert "does not match" in resp.json()["detail"]
    assert app.inventory.versions("edge") == [] and app.inventory.versions("backend") == []
    assert client.post("/v1/certificates/edge/renew?if_due=true", headers=signed).status_code == 202


def test_old_sha256_form_and_unicode_digits_are_401_not_500(api: Any) -> None:
    client, _, _ = api
    stamp = str(int(time.time()))
    old = "sha256=" + hmac.new(TOKEN.encode(), f"{stamp}.".encode(), hashlib.sha256).hexdigest()
    resp = client.post("/v1/certificates/edge/renew", headers={"X-Certd-Timestamp": stamp, "X-Certd-Signature": old})
    assert resp.status_code == 401 and "sha256=" in resp.json()["detail"]
    for odd in ("\u00b2", "\u0661\u0662", "1e9", "0x10", " 12", "+12"):
        raw = [(b"x-certd-timestamp", odd.encode()), (b"x-certd-signature", b"v1=" + b"0" * 64)]
        assert client.post("/v1/certificates/edge/renew", headers=raw).status_code == 401, odd


def test_unauthenticated_cannot_tell_paths_apart(api: Any) -> None:
    """Authentication runs before routing: unknown paths, names and malformed queries all look the same."""
    client, _, _ = api
    answers = {client.post(p).status_code for p in (
        "/v1/certificates/edge/renew?if_due=banana", "/v1/nothing-here", "/v1/certificates/nope/deploy")}
    assert answers == {401}
    assert client.delete("/v1/certificates/edge").status_code == 401


def test_oversized_body_and_unknown_name(api: Any) -> None:
    client, _, _ = api
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/v1/certificates/edge/renew", content=b"x" * 70_000, headers=auth).status_code == 413
    big = client.post("/v1/certificates/edge/renew", content=b"x" * 70_000)  # before authentication
    assert big.status_code == 413 and big.headers["connection"] == "close"
    chunked = client.post("/v1/certificates/edge/renew", content=iter([b"x" * 40_000] * 3))  # no Content-Length
    assert chunked.status_code == 413
    assert client.request("GET", "/healthz", content=iter([b"x" * 40_000] * 3)).status_code == 413  # every route
    many = [(f"x-h{i}".encode(), b"1") for i in range(65)]
    assert client.get("/healthz", headers=many).status_code == 431
    assert client.post("/v1/certificates/edge/renew", content=b"x" * 65_536, headers=auth).status_code == 202
    missing = client.post("/v1/certificates/nope/renew", headers=auth)
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]


def test_renew_job_result_and_reads(api: Any) -> None:
    client, app, _ = api
    resp = client.post("/v1/certificates/backend/renew", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 202 and resp.json()["state"] in ("queued", "running")
    job = _wait_job(client, resp.json()["job"])
    assert job["name"] == "backend" and job["kind"] == "renew"
    assert job["result"]["outcome"] == "renewed" and job["result"]["state"] == "published"
    assert client.get("/v1/certificates").json() == json.loads(json.dumps(list_doc(app)))
    one = client.get("/v1/certificates/backend").json()
    assert one["serial"] == job["result"]["serial"]
    assert client.get("/v1/certificates/nope").status_code == 404
    assert "privkey" not in client.get("/v1/certificates/backend").text.lower()
    metrics = client.get("/metrics").text
    assert 'certd_renewals_total{issuer="local",name="backend",result="success"} 1.0' in metrics
    assert 'certd_certificate_ready_status{condition="ready",name="backend"} 1.0' in metrics
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/certificates/{name}/renew", "/v1/jobs/{job_id}", "/healthz", "/readyz", "/metrics"} <= set(paths)
    deploy = client.post("/v1/certificates/backend/deploy", headers={"Authorization": f"Bearer {TOKEN}"})
    assert _wait_job(client, deploy.json()["job"])["result"]["outcome"] == "deployed"


def test_if_due_renews_only_when_due(api: Any) -> None:
    client, app, _ = api
    auth = {"Authorization": f"Bearer {TOKEN}"}
    first = _wait_job(client, client.post("/v1/certificates/edge/renew?if_due=true", headers=auth).json()["job"])
    assert first["result"]["outcome"] == "renewed"
    second = _wait_job(client, client.post("/v1/certificates/edge/renew?if_due=true", headers=auth).json()["job"])
    assert second["result"]["outcome"] == "skipped"
    assert len(app.inventory.versions("edge")) == 1


def test_twenty_concurrent_posts_make_one_job_and_one_version(api: Any) -> None:
    client, app, _ = api
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: client.post("/v1/certificates/edge/renew", headers=auth), range(20)))
    assert all(r.status_code == 202 for r in responses)
    jobs = {r.json()["job"] for r in responses}
    for job_id in jobs:
        _wait_job(client, job_id)
    assert len(app.inventory.versions("edge")) == 1


READYZ_CONFIG = LOCAL_CA_CONFIG.replace(
    'lifetime = "72h"\noutput_dir = "{tmp}/out/backend"',
    'lifetime = "72h"\noutput_dir = "{tmp}/out/backend"\ndeploy = ["hook"]',
) + """
[deploy.hook]
type = "command"
argv = ["sh", "-c", "test -e {tmp}/hook-ok || { echo '[hook] backend pool refused the reload' >&2; exit 1; }"]
"""


def _flags(metrics: str, name: str) -> dict[str, float]:
    prefix = "certd_certificate_ready_status{condition=\""
    out = {}
    for line in metrics.splitlines():
        if line.startswith(prefix) and f'name="{name}"' in line:
            out[line[len(prefix):].split('"')[0]] = float(line.split()[-1])
    return out


def test_readyz_names_critical_and_expired_certificates_and_metrics_agree(
    write_config: WriteConfig, sqlite_url: str, tmp_path: Path
) -> None:
    """A renewal that keeps failing: failing (200), past the hard deadline (503, critical), past not_after (expired).

    Nothing refreshes the gauges between the clock moving and the scrape: /metrics computes them when read.
    """
    clock = FakeClock()
    config = load_config(write_config(READYZ_CONFIG, db_url=sqlite_url))
    metrics = Metrics()
    # The real local CA, on the same simulated clock as the rest of the pipeline (as in test_scheduler).
    app = App.open(config, clock=clock, metrics=metrics,
                   issuers={"local": LocalCA("local", config.issuers["local"], clock=clock)})  # type: ignore[arg-type]
    scheduler = Scheduler(lambda: app, clock, workers=1, metrics=metrics, inline=True)
    state = ApiState(app=lambda: app, scheduler=scheduler, metrics=metrics, token=lambda: TOKEN,
                     health=lambda: {"status": "ok"})
    try:
        with TestClient(create_api(state)) as client:
            assert "/readyz" in client.get("/openapi.json").json()["paths"]
            (tmp_path / "hook-ok").touch()
            assert app.pipeline.renew("backend", force=True).outcome == "renewed"
            ok = client.get("/readyz")
            assert ok.status_code == 200 and ok.json()["status"] == "ok" and ok.json()["certificates"] == []
            assert _flags(client.get("/metrics").text, "backend") == {
                "ready": 1, "renewing": 0, "failing": 0, "expiring": 0, "critical": 0, "expired": 0, "revoked": 0}

            (tmp_path / "hook-ok").unlink()
            clock.advance(timedelta(minutes=1))  # a request at the same instant would be answered by the last renewal
            failed = app.pipeline.renew("backend", force=True)
            assert failed.outcome == "failed" and failed.failed_step == "deploy"
            one = client.get("/v1/certificates/backend").json()
            assert (one["status"], one["severity"]) == ("failing", "warning")
            # An unauthenticated read: the failure, not what the hook said (that is in certd history)
            assert one["last_error"].startswith("deploy: deploy hook: command sh exited 1 (its output:"), one
            assert "pool refused" not in one["last_error"]
            stored = app.inventory.certificate("backend")
            assert stored is not None and (stored.last_error or "").endswith("[hook] backend pool refused the reload")
            assert client.get("/readyz").status_code == 200  # failing with time left is a warning, not unready
            flags = _flags(client.get("/metrics").text, "backend")
            assert (flags["failing"], flags["critical"], flags["expired"]) == (1, 0, 0)

            deadline = datetime.fromisoformat(one["hard_deadline"])
            clock.current = deadline + timedelta(seconds=1)
            resp = client.get("/readyz")
            assert resp.status_code == 503
            doc = resp.json()
            assert doc["status"] == "degraded"
            assert doc["certificates"] == [{"name": "backend", "status": "critical", "not_after": one["not_after"],
                                            "last_error": one["last_error"]}]
            flags = _flags(client.get("/metrics").text, "backend")
            assert (flags["failing"], flags["renewing"], flags["expiring"], flags["critical"], flags["expired"]) == (
                1, 1, 1, 1, 0)
            assert _flags(client.get("/metrics").text, "edge")["failing"] == 0  # edge was never tried: pending

            clock.current = datetime.fromisoformat(one["not_after"]) + timedelta(seconds=1)
            expired = client.get("/readyz").json()
            assert [(c["name"], c["status"]) for c in expired["certificates"]] == [("backend", "expired")]
            flags = _flags(client.get("/metrics").text, "backend")
            assert (flags["ready"], flags["failing"], flags["critical"], flags["expired"]) == (0, 1, 1, 1)
            listed = {c["name"]: c["status"] for c in client.get("/v1/certificates").json()["certificates"]}
            assert listed == {"edge": "pending", "backend": "expired"}
            assert "PRIVATE KEY" not in client.get("/readyz").text
    finally:
        scheduler.shutdown()
        app.close()


def _open_api(config_path: Path) -> tuple[TestClient, App, Scheduler]:
    app = App.open(load_config(config_path), metrics=(metrics := Metrics()))
    scheduler = Scheduler(lambda: app, app.clock, workers=2, metrics=metrics)
    token = (config_path.parent / "api.token").read_text().strip()
    state = ApiState(app=lambda: app, scheduler=scheduler, metrics=metrics, token=lambda: token,
                     health=lambda: {"status": "ok"})
    return TestClient(create_api(state)), app, scheduler


def _daemon_section(extra: str) -> str:
    return f'[daemon]\napi_token_file = "{{tmp}}/api.token"\n{extra}\n' + LOCAL_CA_CONFIG


def test_a_signature_used_on_one_instance_is_refused_by_another(
    write_config: WriteConfig, db_url: str, tmp_path: Path
) -> None:
    """Two API instances (replicas) on one inventory, SQLite and PostgreSQL: the database remembers."""
    (tmp_path / "api.token").write_text(TOKEN + "\n")
    path = write_config(_daemon_section(""), db_url=db_url)
    one, app_one, sched_one = _open_api(path)
    two, app_two, sched_two = _open_api(path)
    try:
        headers = _signed("/v1/certificates/edge/deploy")
        assert one.post("/v1/certificates/edge/deploy", headers=headers).status_code == 202
        resp = two.post("/v1/certificates/edge/deploy", headers=headers)
        assert resp.status_code == 401 and "already used" in resp.json()["detail"]
        fresh = _signed("/v1/certificates/edge/deploy", b"{}")
        assert two.post("/v1/certificates/edge/deploy", content=b"{}", headers=fresh).status_code == 202
    finally:
        for sched, app in ((sched_one, app_one), (sched_two, app_two)):
            sched.shutdown()
            app.close()


def test_expired_signatures_are_purged(write_config: WriteConfig, sqlite_url: str, tmp_path: Path) -> None:
    from sqlalchemy import func, select

    from certd.inventory.models import UsedSignature
    from certd.inventory.signatures import SignatureLedger

    app = App.open(load_config(write_config(LOCAL_CA_CONFIG, db_url=sqlite_url)))
    try:
        ledger = SignatureLedger(lambda: app.inventory.sessions)
        now = datetime.now(UTC)
        assert ledger.remember("v1=old", now - timedelta(seconds=1), now - timedelta(minutes=10))
        assert not ledger.remember("v1=old", now + timedelta(minutes=5), now - timedelta(minutes=10))
        assert ledger.remember("v1=new", now + timedelta(minutes=5), now)  # a minute later: purges
        with app.inventory.sessions() as s:
            assert s.execute(select(func.count()).select_from(UsedSignature)).scalar_one() == 1
            stored = s.execute(select(UsedSignature.digest)).scalar_one()
        assert stored == hashlib.sha256(b"v1=new").hexdigest()  # the digest, never the signature
    finally:
        app.close()


@pytest.mark.parametrize("mode", ["true", '"all"'])
def test_read_auth_needs_token_or_signature_for_reads(
    write_config: WriteConfig, sqlite_url: str, tmp_path: Path, mode: str
) -> None:
    (tmp_path / "api.token").write_text(TOKEN)
    client, app, scheduler = _open_api(write_config(_daemon_section(f"api_read_auth = {mode}"), db_url=sqlite_url))
    try:
        for path in ("/v1/certificates", "/v1/certificates/edge", "/v1/certificates/nope", "/v1/jobs/x",
                     "/openapi.json"):
            resp = client.get(path)
            assert resp.status_code == 401, path
            assert "edge" not in resp.text and "nope" not in resp.text
        bearer = client.get("/v1/certificates", headers={"Authorization": f"Bearer {TOKEN}"})
        assert bearer.status_code == 200 and bearer.json()["certificates"]
        signed = _signed("/v1/certificates/edge", method="GET")
        assert client.get("/v1/certificates/edge", headers=signed).status_code == 200
        assert client.get("/v1/certificates/edge", headers=signed).status_code == 401  # once only, reads too
        assert client.get("/v1/certificates/backend", headers=signed).status_code == 401  # bound to its path
        probes = {p: client.get(p).status_code for p in ("/healthz", "/readyz", "/metrics")}
        if mode == "true":
            assert probes == {"/healthz": 200, "/readyz": 200, "/metrics": 200}
        else:
            assert set(probes.values()) == {401}
            assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    finally:
        client.close()
        scheduler.shutdown()
        app.close()
