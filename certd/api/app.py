"""The HTTP API served by ``certd run``.

Renew and deploy go through the scheduler's job table and therefore
through the same pipeline as the CLI and the daemon. What guards the door
is in two middlewares that run before any route, in this order:

1. ``api_limits.BodyLimit``: header count, a body capped at 64 KiB while it
   is read (chunked too) and deadlines, so an unauthenticated client cannot
   spend memory or connection slots;
2. ``api_auth.Authenticate``: writes, and reads when ``[daemon]
   api_read_auth`` is set, need ``Authorization: Bearer <token>`` or a
   request signed with the token (``certd/signing.py``: ``X-Certd-Timestamp``
   + ``X-Certd-Signature: v1=<hex HMAC-SHA256>`` over ``certd-api-v1``,
   method, path with query, timestamp and body; ±5 minutes; each signature
   accepted once, remembered in the inventory across restarts and
   replicas). The older ``sha256=`` form is refused. An unauthenticated
   caller learns nothing, not even whether a certificate name exists.

Reads never expose key material. Whether the API may listen beyond
loopback at all is decided at config load (``DaemonConfig``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from certd import __version__
from certd.api.auth import AUTHENTICATED, Authenticate, ReadAuth
from certd.api.limits import MAX_BODY, BodyLimit
from certd.engine.app import App
from certd.engine.scheduler import Scheduler
from certd.inventory.signatures import SignatureLedger
from certd.metrics import Metrics
from certd.reports.monitor import readyz_doc
from certd.reports.views import certificate_doc, list_doc
from certd.scrub import public_message

__all__ = ["MAX_BODY", "ApiState", "create_api"]

log = logging.getLogger("certd.api")

# What /openapi.json declares beyond each route's success: every answer the API can give.
_DETAIL = {"application/json": {"schema": {"type": "object", "properties": {"detail": {"type": "string"}},
                                           "required": ["detail"]}}}
_REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Credentials missing or wrong (checked before routing)", "content": _DETAIL},
    408: {"description": "Body not received in time", "content": _DETAIL},
    413: {"description": "Body larger than 64 KiB", "content": _DETAIL},
    431: {"description": "Request line and header fields too large, or too many", "content": _DETAIL},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such certificate or job", "content": _DETAIL}}
_UNHEALTHY: dict[int | str, dict[str, Any]] = {503: {"description": "Degraded (the body says why)", "content": {
    "application/json": {"schema": {"type": "object", "required": ["status"]}}}}}
_ACCEPTED: dict[int | str, dict[str, Any]] = {202: {"content": {"application/json": {"schema": {
    "type": "object", "required": ["job", "state"],
    "properties": {"job": {"type": "string"}, "state": {"enum": ["queued", "running"]}}}}}}, **_NOT_FOUND}


@dataclass
class ApiState:
    """What the API reads; the daemon swaps ``app`` on a config reload."""

    app: Callable[[], App]
    scheduler: Scheduler
    metrics: Metrics
    token: Callable[[], str | None]  # may raise api_auth.NoToken with the reason
    health: Callable[[], dict[str, Any]]
    ledger: SignatureLedger = field(init=False)

    def __post_init__(self) -> None:
        # Used signatures live in the inventory of whichever config is current (a reload may move it).
        self.ledger = SignatureLedger(lambda: self.app().inventory.sessions)

    def read_auth(self) -> ReadAuth:
        """Read live, so a reload that turns read authentication on takes effect at once."""
        return self.app().config.daemon.api_read_auth


def _public(request: Request) -> bool:
    """No credentials were checked for this request: it gets no hook output (``scrub.public_message``)."""
    return not request.scope.get("state", {}).get(AUTHENTICATED, False)


def create_api(state: ApiState) -> FastAPI:
    """Build the ASGI app; ``/openapi.json`` documents it."""
    app = FastAPI(title="certd", version=__version__, docs_url=None, redoc_url=None, responses=_REFUSALS)

    @app.get("/healthz", summary="Scheduler alive and database reachable", responses=_UNHEALTHY)
    def healthz() -> JSONResponse:
        doc = state.health()
        return JSONResponse(doc, status_code=200 if doc.get("status") == "ok" else 503)

    @app.get("/readyz", summary="The estate: 503 naming every expired or critical certificate, else 200",
             responses=_UNHEALTHY)
    def readyz() -> JSONResponse:
        # The estate, not the process (that is /healthz): an unreadable inventory means "cannot say", so 503.
        try:
            doc = readyz_doc(state.app())
        except Exception:
            log.exception("/readyz: cannot read the inventory")
            return JSONResponse({"status": "unknown", "error": "cannot read the inventory", "certificates": []},
                                status_code=503)
        return JSONResponse(doc, status_code=200 if doc["status"] == "ok" else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    def metrics() -> Response:
        # The per-certificate gauges are computed now, from the inventory as it is: a certificate that expired
        # since the last scan (or while a renewal hangs) reads expired=1 on this very scrape.
        state.scheduler.refresh_metrics(list(state.app().config.certificates))
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/certificates", summary="Every certificate (same document as `certd list --json`)")
    def certificates(request: Request) -> dict[str, Any]:
        return list_doc(state.app(), public=_public(request))

    @app.get("/v1/certificates/{name}", summary="One certificate", responses=_NOT_FOUND)
    def certificate(name: str, request: Request) -> dict[str, Any]:
        app = state.app()
        if name not in app.config.certificates:
            raise HTTPException(status_code=404, detail=f"no certificate named {name}")
        inv = app.inventory
        return certificate_doc(app, name, inv.certificate(name), inv.current_version(name),
                               public=_public(request))

    def _submit(name: str, kind: str, force: bool) -> JSONResponse:
        if name not in state.app().config.certificates:
            raise HTTPException(status_code=404, detail=f"no certificate named {name}")
        job = state.scheduler.submit(name, kind="deploy" if kind == "deploy" else "renew", force=force)
        return JSONResponse({"job": job.id, "state": "running" if job.state == "running" else "queued"},
                            status_code=202)

    @app.post("/v1/certificates/{name}/renew", status_code=202, summary="Renew now (like `certd renew --force`)",
              responses=_ACCEPTED)
    def renew(name: str, if_due: bool = Query(False)) -> JSONResponse:
        return _submit(name, "renew", force=not if_due)

    @app.post("/v1/certificates/{name}/deploy", status_code=202, summary="Re-run deploy + verify",
              responses=_ACCEPTED)
    def deploy(name: str) -> JSONResponse:
        return _submit(name, "deploy", force=False)

    @app.get("/v1/jobs/{job_id}", summary="A renew or deploy job and its result", responses=_NOT_FOUND)
    def job(job_id: str, request: Request) -> dict[str, Any]:
        found = state.scheduler.jobs.get(job_id)
        if found is None:
            raise HTTPException(status_code=404, detail="no such job")
        doc = found.as_json()
        if _public(request) and isinstance(doc.get("result"), dict):
            doc["result"]["error"] = public_message(doc["result"].get("error"))
        return doc

    # Added last = runs first: limits, then authentication, then the routes.
    app.add_middleware(Authenticate, token=state.token, read_auth=state.read_auth, ledger=state.ledger)
    app.add_middleware(BodyLimit)
    return app
