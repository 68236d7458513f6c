"""The ``webhook`` target against a real HTTPS receiver that checks signatures with certd's own verifier.

The receiver runs ``certd.signing.verify`` with the webhook label and the path it was called on (time window
and constant-time compare included) and remembers every signature it accepted, so a webhook certd sends is
provably accepted by the same code that guards certd's own API, and a retry that re-sent an already seen
signature would be refused as a replay. A delivery replayed against certd's API is refused (the label).
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from certd.config.load import load_config
from certd.config.model import WebhookDeployConfig
from certd.core.durations import rfc3339
from certd.core.signing import WEBHOOK_LABEL, BadSignature, verify
from certd.deploy.base import DeployContext, PublishedPaths
from certd.deploy.webhook import WebhookTarget
from certd.engine.app import App
from certd.errors import DeployError
from certd.pki.certs import fingerprint, serial_hex
from tests.conftest import WriteConfig
from tests.servers.ports import HOST
from tests.servers.tlsutil import CertKey, issue_server_cert, make_ca, write_pem

SECRET = "webhook-shared-secret-for-tests"


def certd_verifier(secret: str) -> Any:
    """A receiver's check as a plain function: (path, headers, body) -> HTTP status it would give."""
    seen: set[str] = set()
    lock = threading.Lock()

    def check(path: str, headers: dict[str, str], body: bytes) -> int:
        try:
            canonical, _ = verify(secret, WEBHOOK_LABEL, "POST", path, headers.get("X-Certd-Timestamp", ""),
                                  headers.get("X-Certd-Signature", ""), body, time.time())
        except BadSignature:
            return 401
        with lock:
            if canonical in seen:
                return 401
            seen.add(canonical)
        return 200

    return check


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    auth_status: int


@dataclass
class Receiver:
    """An HTTPS endpoint answering a scripted list of statuses (the last one repeats)."""

    url: str
    ca_pem: Path
    statuses: list[int]
    extra_headers: dict[str, str] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_status(self) -> int:
        with self.lock:
            index = min(len(self.received), len(self.statuses) - 1)
            return self.statuses[index]


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    ca = make_ca("webhook receiver CA")
    server_cert: CertKey = issue_server_cert(ca, dns_names=("localhost",), ips=(HOST,))
    cert_file = write_pem(tmp_path / "receiver.pem", server_cert.cert_pem)
    key_file = write_pem(tmp_path / "receiver.key", server_cert.key_pem)
    ca_file = write_pem(tmp_path / "receiver-ca.pem", ca.cert_pem)
    check = certd_verifier(SECRET)
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            rec = state["r"]
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k: v for k, v in self.headers.items()}
            auth = check(self.path, headers, body)
            status = rec.next_status() if auth == 200 else auth
            with rec.lock:
                rec.received.append(Received(headers, body, auth))
            self.send_response(status)
            for k, v in rec.extra_headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer((HOST, 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign] # failed handshakes
    port = httpd.server_address[1]
    rec = Receiver(url=f"https://{HOST}:{port}/hooks/certd?token=query-secret", ca_pem=ca_file, statuses=[200])
    state["r"] = rec
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "webhook.secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def ctx(tmp_path: Path) -> DeployContext:
    """A DeployContext as the pipeline builds it (key material included, which must never leave in a webhook)."""
    ca = make_ca("ctx CA")
    leaf = issue_server_cert(ca, dns_names=("app.example.test",), ips=())
    full = leaf.cert_pem
    return DeployContext(
        certificate="app", serial=serial_hex(leaf.cert), names=("app.example.test",), leaf=leaf.cert, chain=(),
        roots=(ca.cert,), key_pem=leaf.key_pem, fullchain_pem=full, combined_pem=leaf.key_pem + full,
        paths=PublishedPaths.under(tmp_path / "out"),
    )


def target(url: str, secret: Path, ca: Path | None, *, retries: int = 3) -> tuple[WebhookTarget, list[float]]:
    config = WebhookDeployConfig(type="webhook", url=url, secret_file=secret, ca_bundle=ca,
                                 timeout=timedelta(seconds=5), retries=retries)
    sleeps: list[float] = []
    return WebhookTarget("hook", config, sleep=sleeps.append), sleeps


def webhook_config(receiver: Receiver, secret: Path, *, ca: Path | None, retries: int = 2) -> str:
    ca_line = f'ca_bundle = "{ca}"\n' if ca is not None else ""
    return f"""
[database]
url = "sqlite:///{{tmp}}/certd.db"

[issuers.local]
type = "local-ca"
dir = "{{tmp}}/local-ca"

[certificates.edge]
issuer = "local"
names = ["lb.example.test", "www.example.test"]
output_dir = "{{tmp}}/out/edge"
deploy = ["hook"]

[deploy.hook]
type = "webhook"
url = "{receiver.url}"
secret_file = "{secret}"
{ca_line}timeout = "5s"
retries = {retries}
"""


def test_signed_event_is_accepted_by_certds_own_verifier(
    receiver: Receiver, secret_file: Path, write_config: WriteConfig
) -> None:
    app = App.open(load_config(write_config(webhook_config(receiver, secret_file, ca=receiver.ca_pem))))
    try:
        result = app.pipeline.renew("edge")
        assert (result.outcome, result.state) == ("renewed", "deployed"), result
        (got,) = receiver.received
        assert got.auth_status == 200  # certd.signing.verify accepted the signature for this receiver's path
        doc = json.loads(got.body)
        version = app.inventory.current_version("edge")
        assert version is not None
        assert doc["event"] == "certificate.deployed"
        assert doc["certificate"] == "edge"
        assert doc["serial"] == result.serial == version.serial
        assert doc["names"] == ["lb.example.test", "www.example.test"]
        assert doc["fingerprint"] == version.fingerprint
        assert doc["not_after"] == rfc3339(version.not_after)
        assert str(doc["timestamp"]) == got.headers["X-Certd-Timestamp"]
        assert got.headers["X-Certd-Signature"].startswith("v1=")
        assert got.headers["Content-Type"] == "application/json"
        assert b"PRIVATE KEY" not in got.body and b"BEGIN" not in got.body
        message = next(e.message for e in app.inventory.events("edge") if e.kind == "deploy.done")
        assert "answered 200" in message and "query-secret" not in message and "?" not in message
    finally:
        app.close()


def test_payload_has_public_facts_only(receiver: Receiver, secret_file: Path, ctx: DeployContext) -> None:
    hook, _ = target(receiver.url, secret_file, receiver.ca_pem)
    hook.deploy(ctx)
    (got,) = receiver.received
    doc = json.loads(got.body)
    assert set(doc) == {"event", "delivery", "attempt", "certificate", "serial", "names", "not_after",
                        "fingerprint", "timestamp"}
    assert doc["fingerprint"] == fingerprint(ctx.leaf)
    wire = got.body + json.dumps(got.headers).encode()
    assert b"PRIVATE KEY" not in wire
    assert ctx.key_pem.split(b"\n")[1] not in wire  # not even a line of the base64 key


def test_two_5xx_then_success_is_retried_with_fresh_signatures(
    receiver: Receiver, secret_file: Path, ctx: DeployContext
) -> None:
    receiver.statuses = [500, 503, 200]
    hook, sleeps = target(receiver.url, secret_file, receiver.ca_pem, retries=3)
    summary = hook.deploy(ctx)
    assert "answered 200 after 3 attempts" in summary
    assert [r.auth_status for r in receiver.received] == [200, 200, 200]  # no retry was refused as a replay
    assert len({r.headers["X-Certd-Signature"] for r in receiver.received}) == 3
    assert len({r.headers["X-Certd-Delivery"] for r in receiver.received}) == 1
    assert [json.loads(r.body)["attempt"] for r in receiver.received] == [1, 2, 3]
    # Exponential backoff with full jitter: each wait lies within its doubling cap.
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 0.5 and 0 <= sleeps[1] <= 1.0


def test_always_5xx_fails_the_deploy_step(
    receiver: Receiver, secret_file: Path, write_config: WriteConfig
) -> None:
    receiver.statuses = [500]
    app = App.open(load_config(write_config(webhook_config(receiver, secret_file, ca=receiver.ca_pem, retries=2))))
    try:
        result = app.pipeline.renew("edge")
        assert (result.outcome, result.state, result.failed_step) == ("failed", "failed", "deploy"), result
        error = result.error or ""
        url = receiver.url.split("?")[0]
        assert f"deploy hook: POST {url} answered 500 (after 3 attempts)" in error
        assert "query-secret" not in error
        assert len(receiver.received) == 3
    finally:
        app.close()


def test_always_5xx_raises_deploy_error(receiver: Receiver, secret_file: Path, ctx: DeployContext) -> None:
    receiver.statuses = [502]
    hook, sleeps = target(receiver.url, secret_file, receiver.ca_pem, retries=2)
    with pytest.raises(DeployError, match=r"answered 502 \(after 3 attempts\)") as info:
        hook.deploy(ctx)
    assert info.value.retryable
    assert len(receiver.received) == 3 and len(sleeps) == 2


def test_4xx_is_not_retried(receiver: Receiver, secret_file: Path, ctx: DeployContext) -> None:
    receiver.statuses = [400]
    hook, sleeps = target(receiver.url, secret_file, receiver.ca_pem, retries=5)
    with pytest.raises(DeployError, match="answered 400; not retried") as info:
        hook.deploy(ctx)
    assert not info.value.retryable
    assert len(receiver.received) == 1 and sleeps == []


def test_wrong_secret_is_refused_by_the_receiver_and_not_retried(
    receiver: Receiver, tmp_path: Path, ctx: DeployContext
) -> None:
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("not-the-shared-secret")
    hook, sleeps = target(receiver.url, wrong, receiver.ca_pem)
    with pytest.raises(DeployError, match="answered 401; not retried"):
        hook.deploy(ctx)
    assert [r.auth_status for r in receiver.received] == [401] and sleeps == []


def test_429_honours_retry_after(receiver: Receiver, secret_file: Path, ctx: DeployContext) -> None:
    receiver.statuses = [429, 200]
    receiver.extra_headers = {"Retry-After": "2"}
    hook, sleeps = target(receiver.url, secret_file, receiver.ca_pem)
    assert "after 2 attempts" in hook.deploy(ctx)
    assert sleeps == [2.0]


def test_429_retry_after_is_capped(receiver: Receiver, secret_file: Path, ctx: DeployContext) -> None:
    receiver.statuses = [429, 200]
    receiver.extra_headers = {"Retry-After": "86400"}
    hook, sleeps = target(receiver.url, secret_file, receiver.ca_pem)
    hook.deploy(ctx)
    assert sleeps == [60.0]


def test_tls_not_verifying_against_ca_bundle_is_a_clear_error(
    receiver: Receiver, secret_file: Path, ctx: DeployContext, tmp_path: Path
) -> None:
    other_ca = write_pem(tmp_path / "other-ca.pem", make_ca("some other CA").cert_pem)
    hook, sleeps = target(receiver.url, secret_file, other_ca)
    with pytest.raises(DeployError) as info:
        hook.deploy(ctx)
    message = str(info.value)
    url = receiver.url.split("?")[0]
    assert f"deploy hook: TLS to {url} does not verify against ca_bundle {other_ca}" in message
    assert "certificate verify failed" in message
    assert receiver.received == [] and sleeps == []


def test_connection_refused_is_retried_then_fails(secret_file: Path, ctx: DeployContext) -> None:
    from tests.servers.ports import free_port

    url = f"https://{HOST}:{free_port()}/hook"  # nothing listens there
    hook, sleeps = target(url, secret_file, None, retries=2)
    with pytest.raises(DeployError, match=r"connection failed \(after 3 attempts\)"):
        hook.deploy(ctx)
    assert len(sleeps) == 2


def test_missing_secret_file(receiver: Receiver, tmp_path: Path, ctx: DeployContext) -> None:
    hook, _ = target(receiver.url, tmp_path / "absent.secret", receiver.ca_pem)
    with pytest.raises(DeployError, match=r"secret_file .* does not exist"):
        hook.deploy(ctx)
    assert receiver.received == []


def test_a_delivery_replayed_against_certds_api_is_refused(
    receiver: Receiver, secret_file: Path, ctx: DeployContext, write_config: WriteConfig, sqlite_url: str
) -> None:
    """A receiver sharing certd's API token, at the very path of certd's renew endpoint, gains nothing."""
    from fastapi.testclient import TestClient

    from certd.api.app import ApiState, create_api
    from certd.core.signing import API_LABEL, signed_headers
    from certd.engine.scheduler import Scheduler
    from certd.metrics import Metrics
    from tests.conftest import LOCAL_CA_CONFIG

    api_path = "/v1/certificates/edge/renew"
    hook, _ = target(receiver.url.split("/hooks/")[0] + api_path, secret_file, receiver.ca_pem)
    hook.deploy(ctx)
    (got,) = receiver.received
    assert got.auth_status == 200
    app = App.open(load_config(write_config(LOCAL_CA_CONFIG, db_url=sqlite_url)), metrics=(metrics := Metrics()))
    scheduler = Scheduler(lambda: app, app.clock, workers=1, metrics=metrics)
    state = ApiState(app=lambda: app, scheduler=scheduler, metrics=metrics, token=lambda: SECRET,
                     health=lambda: {"status": "ok"})
    try:
        with TestClient(create_api(state)) as client:
            replayed = {k: got.headers[k] for k in ("X-Certd-Timestamp", "X-Certd-Signature", "Content-Type")}
            resp = client.post(api_path, content=got.body, headers=replayed)
            assert resp.status_code == 401 and "does not match" in resp.json()["detail"]
            assert app.inventory.versions("edge") == []
            # The same bytes signed for the API are accepted: the label alone refused the replay.
            own = signed_headers(SECRET, API_LABEL, "POST", api_path, got.body, time.time())
            assert client.post(api_path, content=got.body, headers=own).status_code == 202
    finally:
        scheduler.shutdown()
        app.close()


def _doc_block(doc: str, starts_with: str) -> str:
    text = (Path(__file__).resolve().parent.parent / "docs" / doc).read_text()
    for block in text.split("```")[1::2]:
        code = block.split("\n", 1)[1]
        if code.startswith(starts_with):
            return code
    raise AssertionError(f"no code block starting {starts_with!r} in docs/{doc}")


def test_the_receiver_snippet_in_the_docs_accepts_a_real_delivery_once(
    receiver: Receiver, secret_file: Path, ctx: DeployContext
) -> None:
    namespace: dict[str, Any] = {}
    exec(_doc_block("deploy.md", "import hashlib, hmac, re, time\n\nseen"), namespace)
    accept = namespace["accept"]
    hook, _ = target(receiver.url, secret_file, receiver.ca_pem)
    hook.deploy(ctx)
    (got,) = receiver.received
    path = receiver.url.split(str(HOST), 1)[1].split("/", 1)[1]
    assert accept(SECRET, "/" + path, got.headers, got.body)
    assert not accept(SECRET, "/" + path, got.headers, got.body)  # the second time is a replay
    assert not accept(SECRET, "/hooks/other", got.headers, got.body)
