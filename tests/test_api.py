"""The HTTP API in-process (FastAPI's test client) over the real pipeline and scheduler."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from certd.api import ApiState, create_api, sign_body
from certd.app import App
from certd.config import load_config
from certd.issuers.local_ca import LocalCA
from certd.metrics import Metrics
from certd.scheduler import Scheduler
from certd.views import list_doc
from tests.conftest import LOCAL_CA_CONFIG, FakeClock, WriteConfig

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def api(write_config: WriteConfig, sqlite_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, App, Scheduler]]:
    app = App.open(load_config(write_config(LOCAL_CA_CONFIG, db_url=sqlite_url)), metrics=(metrics := Metrics()))
    scheduler = Scheduler(lambda: app.pipeline, app.clock, workers=4, metrics=metrics)
    state = ApiState(pipeline=lambda: app.pipeline, scheduler=scheduler, metrics=metrics, token=lambda: TOKEN,
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


def _signed(body: bytes, *, token: str = TOKEN, at: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if at is None else at
    return {"X-Certd-Timestamp": str(stamp), "X-Certd-Signature": sign_body(token, stamp, body)}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"X-Certd-Timestamp": "1", "X-Certd-Signature": "sha256=00"},
    ],
)
@pytest.mark.parametrize("name", ["edge", "does-not-exist"])
def test_unauthenticated_writes_learn_nothing_and_do_nothing(api: Any, headers: dict[str, str], name: str) -> None:
    client, app, _ = api
    resp = client.post(f"/v1/certificates/{name}/renew", headers=headers)
    assert resp.status_code == 401
    assert name not in resp.text
    assert app.inventory.versions("edge") == []


def test_signed_body_accepted_once_and_within_five_minutes(api: Any) -> None:
    client, _, _ = api
    body = json.dumps({"reason": "ci"}).encode()
    headers = _signed(body)
    first = client.post("/v1/certificates/edge/renew", content=body, headers=headers)
    assert first.status_code == 202
    assert _wait_job(client, first.json()["job"])["state"] == "succeeded"
    assert client.post("/v1/certificates/edge/renew", content=body, headers=headers).status_code == 401  # replay
    stale = _signed(body, at=int(time.time()) - 301)
    assert client.post("/v1/certificates/edge/renew", content=body, headers=stale).status_code == 401
    wrong_key = _signed(body, token="other")
    assert client.post("/v1/certificates/edge/renew", content=body, headers=wrong_key).status_code == 401


def test_oversized_body_and_unknown_name(api: Any) -> None:
    client, _, _ = api
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/v1/certificates/edge/renew", content=b"x" * 70_000, headers=auth).status_code == 413
    missing = client.post("/v1/certificates/nope/renew", headers=auth)
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]


def test_renew_job_result_and_reads(api: Any) -> None:
    client, app, _ = api
    resp = client.post("/v1/certificates/backend/renew", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 202 and resp.json()["state"] in ("queued", "running")
    job = _wait_job(client, resp.json()["job"])
    assert job["name"] == "backend" and job["kind"] == "renew"
    assert job["result"]["outcome"] == "renewed" and job["result"]["state"] == "published"
    assert client.get("/v1/certificates").json() == json.loads(json.dumps(list_doc(app.pipeline)))
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
    """A renewal that keeps failing: failing (200), past the hard deadline (503, critical), past not_after (expired)."""
    clock = FakeClock()
    config = load_config(write_config(READYZ_CONFIG, db_url=sqlite_url))
    metrics = Metrics()
    app = App.open(config, clock=clock, metrics=metrics)
    # The real local CA, on the same simulated clock as the rest of the pipeline (as in test_scheduler).
    app.pipeline._issuers["local"] = LocalCA("local", config.issuers["local"], clock=clock)  # type: ignore[arg-type]
    scheduler = Scheduler(lambda: app.pipeline, clock, workers=1, metrics=metrics, inline=True)
    state = ApiState(pipeline=lambda: app.pipeline, scheduler=scheduler, metrics=metrics, token=lambda: TOKEN,
                     health=lambda: {"status": "ok"})
    names = list(config.certificates)
    try:
        with TestClient(create_api(state)) as client:
            assert "/readyz" in client.get("/openapi.json").json()["paths"]
            (tmp_path / "hook-ok").touch()
            assert app.pipeline.renew("backend", force=True).outcome == "renewed"
            scheduler.refresh_metrics(names)
            ok = client.get("/readyz")
            assert ok.status_code == 200 and ok.json()["status"] == "ok" and ok.json()["certificates"] == []
            assert _flags(client.get("/metrics").text, "backend") == {
                "ready": 1, "renewing": 0, "failing": 0, "expiring": 0, "critical": 0, "expired": 0, "revoked": 0}

            (tmp_path / "hook-ok").unlink()
            clock.advance(timedelta(minutes=1))  # a request at the same instant would be answered by the last renewal
            failed = app.pipeline.renew("backend", force=True)
            assert failed.outcome == "failed" and failed.failed_step == "deploy"
            scheduler.refresh_metrics(names)
            one = client.get("/v1/certificates/backend").json()
            assert (one["status"], one["severity"]) == ("failing", "warning")
            assert one["last_error"].endswith("[hook] backend pool refused the reload")  # as stored
            assert client.get("/readyz").status_code == 200  # failing with time left is a warning, not unready
            flags = _flags(client.get("/metrics").text, "backend")
            assert (flags["failing"], flags["critical"], flags["expired"]) == (1, 0, 0)

            deadline = datetime.fromisoformat(one["hard_deadline"])
            clock.current = deadline + timedelta(seconds=1)
            scheduler.refresh_metrics(names)
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
            scheduler.refresh_metrics(names)
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
