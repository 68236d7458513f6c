"""The HTTP API in-process (FastAPI's test client) over the real pipeline and scheduler."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from certd.api import ApiState, create_api, sign_body
from certd.app import App
from certd.config import load_config
from certd.metrics import Metrics
from certd.scheduler import Scheduler
from certd.views import list_doc
from tests.conftest import LOCAL_CA_CONFIG, WriteConfig

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
    assert {"/v1/certificates/{name}/renew", "/v1/jobs/{job_id}", "/healthz", "/metrics"} <= set(paths)
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
