"""The HTTP API served by ``certd run``.

Reads (list, show, jobs, health, readiness, metrics) need no credentials: the API binds
to loopback by default and never exposes key material. Writes need the
bearer token, or a body signed with it (``X-Certd-Timestamp`` +
``X-Certd-Signature: sha256=<hex HMAC-SHA256(token, timestamp + "." + body)>``,
±5 minutes, each signature accepted once). Authentication is checked before
anything else, so an unauthenticated caller learns nothing, not even whether
a certificate name exists. Renew and deploy go through the scheduler's job
table and therefore through the same pipeline as the CLI and the daemon.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse

from certd import __version__
from certd.metrics import Metrics
from certd.monitor import readyz_doc
from certd.pipeline import Pipeline
from certd.scheduler import Scheduler
from certd.views import certificate_doc, list_doc

__all__ = ["ApiState", "create_api", "sign_body"]

log = logging.getLogger("certd.api")

MAX_BODY = 64 * 1024
SIGNATURE_WINDOW = 300


def sign_body(token: str, timestamp: int, body: bytes) -> str:
    """The ``X-Certd-Signature`` value for a body (also used by the webhook target's receivers)."""
    mac = hmac.new(token.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


@dataclass
class ApiState:
    """What the API reads; the daemon swaps ``pipeline`` on a config reload."""

    pipeline: Callable[[], Pipeline]
    scheduler: Scheduler
    metrics: Metrics
    token: Callable[[], str | None]
    health: Callable[[], dict[str, Any]]
    _seen: dict[str, float] = field(default_factory=dict)
    _seen_lock: threading.Lock = field(default_factory=threading.Lock)

    def replayed(self, signature: str, now: float) -> bool:
        """Remember a signature for the window; True if it was already used."""
        with self._seen_lock:
            for sig, at in list(self._seen.items()):
                if now - at > 2 * SIGNATURE_WINDOW:
                    del self._seen[sig]
            if signature in self._seen:
                return True
            self._seen[signature] = now
            return False


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


async def _authenticate(state: ApiState, request: Request) -> None:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise HTTPException(status_code=413, detail=f"body larger than {MAX_BODY} bytes")
    body = await request.body()
    if len(body) > MAX_BODY:
        raise HTTPException(status_code=413, detail=f"body larger than {MAX_BODY} bytes")
    token = state.token()
    if not token:
        raise _unauthorized("writes are disabled: no [daemon] api_token_file configured")
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        if hmac.compare_digest(auth[7:].strip().encode(), token.encode()):
            return
        raise _unauthorized("invalid credentials")
    stamp = request.headers.get("x-certd-timestamp", "")
    signature = request.headers.get("x-certd-signature", "")
    if not stamp or not signature:
        raise _unauthorized("missing credentials")
    now = time.time()
    if not stamp.isdigit() or abs(now - int(stamp)) > SIGNATURE_WINDOW:
        raise _unauthorized("invalid credentials")
    if not hmac.compare_digest(signature.encode(), sign_body(token, int(stamp), body).encode()):
        raise _unauthorized("invalid credentials")
    if state.replayed(signature, now):
        raise _unauthorized("invalid credentials")


def create_api(state: ApiState) -> FastAPI:
    """Build the ASGI app; ``/openapi.json`` documents it."""
    app = FastAPI(title="certd", version=__version__, docs_url=None, redoc_url=None)

    @app.get("/healthz", summary="Scheduler alive and database reachable")
    def healthz() -> JSONResponse:
        doc = state.health()
        return JSONResponse(doc, status_code=200 if doc.get("status") == "ok" else 503)

    @app.get("/readyz", summary="The estate: 503 naming every expired or critical certificate, else 200")
    def readyz() -> JSONResponse:
        # The estate, not the process (that is /healthz): an unreadable inventory means "cannot say", so 503.
        try:
            doc = readyz_doc(state.pipeline())
        except Exception:
            log.exception("/readyz: cannot read the inventory")
            return JSONResponse({"status": "unknown", "error": "cannot read the inventory", "certificates": []},
                                status_code=503)
        return JSONResponse(doc, status_code=200 if doc["status"] == "ok" else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/certificates", summary="Every certificate (same document as `certd list --json`)")
    def certificates() -> dict[str, Any]:
        return list_doc(state.pipeline())

    @app.get("/v1/certificates/{name}", summary="One certificate")
    def certificate(name: str) -> dict[str, Any]:
        pipeline = state.pipeline()
        if name not in pipeline.config.certificates:
            raise HTTPException(status_code=404, detail=f"no certificate named {name}")
        inv = pipeline.inventory
        return certificate_doc(pipeline, name, inv.certificate(name), inv.current_version(name))

    def _submit(name: str, kind: str, force: bool) -> JSONResponse:
        if name not in state.pipeline().config.certificates:
            raise HTTPException(status_code=404, detail=f"no certificate named {name}")
        job = state.scheduler.submit(name, kind="deploy" if kind == "deploy" else "renew", force=force)
        return JSONResponse({"job": job.id, "state": "running" if job.state == "running" else "queued"},
                            status_code=202)

    @app.post("/v1/certificates/{name}/renew", status_code=202, summary="Renew now (like `certd renew --force`)")
    async def renew(name: str, request: Request, if_due: bool = Query(False)) -> JSONResponse:
        await _authenticate(state, request)
        return _submit(name, "renew", force=not if_due)

    @app.post("/v1/certificates/{name}/deploy", status_code=202, summary="Re-run deploy + verify")
    async def deploy(name: str, request: Request) -> JSONResponse:
        await _authenticate(state, request)
        return _submit(name, "deploy", force=False)

    @app.get("/v1/jobs/{job_id}", summary="A renew or deploy job and its result")
    def job(job_id: str) -> dict[str, Any]:
        found = state.scheduler.jobs.get(job_id)
        if found is None:
            raise HTTPException(status_code=404, detail="no such job")
        return found.as_json()

    return app
