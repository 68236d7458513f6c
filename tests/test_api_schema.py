"""schemathesis against ``/openapi.json``: the real API app, a real pipeline and scheduler, the local CA.

Every operation the document lists is called with generated input, ``max_examples`` per operation:

- with the bearer token, every response passes schemathesis' checks: no 5xx, the status code, content
  type, headers and body are the ones the document declares;
- without credentials every write answers 401 (the reads stay as open as the config says), and with
  ``api_read_auth = "all"`` every operation does, without a word about what exists.

Path parameters are drawn from what the schema allows and also from names that exist (the configured
certificates, a real job id), so the write endpoints run the real pipeline, not only into 404s. The OpenAPI
document is the contract: a status or content type the API gives and the document does not declare fails.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from certd.api.app import ApiState, create_api
from certd.config.load import load_config
from certd.engine.app import App
from certd.engine.scheduler import Scheduler
from certd.metrics import Metrics
from tests.conftest import LOCAL_CA_CONFIG

TOKEN = "schema-test-token"
NAMES = ("edge", "backend")
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SETTINGS = settings(max_examples=50, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.function_scoped_fixture])


@dataclass
class Served:
    api: FastAPI
    app: App
    scheduler: Scheduler
    job_ids: list[str]


def _serve(tmp: Path, daemon: str = "") -> Iterator[Served]:
    """The API as ``certd run`` builds it, over the real pipeline and scheduler, without the socket."""
    token_file = tmp / "api.token"
    token_file.write_text(TOKEN + "\n")
    body = (f'[daemon]\napi_token_file = "{token_file}"\n{daemon}\n[database]\nurl = "sqlite:///{tmp}/certd.db"\n'
            + LOCAL_CA_CONFIG.replace("{tmp}", str(tmp)))
    (tmp / "certd.toml").write_text(body)
    app = App.open(load_config(tmp / "certd.toml"), metrics=(metrics := Metrics()))
    scheduler = Scheduler(lambda: app, app.clock, workers=2, metrics=metrics)

    def health() -> dict[str, Any]:
        return {"status": "ok", "scheduler": True, "database": True, "config_error": None, "last_scan": None,
                "role": "all"}

    state = ApiState(app=lambda: app, scheduler=scheduler, metrics=metrics,
                     token=lambda: token_file.read_text().strip() or None, health=health)
    job = scheduler.submit("edge", force=True)  # one real job id to look up
    try:
        yield Served(create_api(state), app, scheduler, [job.id])
    finally:
        scheduler.shutdown()
        app.close()


def _schema(served: Served) -> Any:
    schema = schemathesis.openapi.from_asgi("/openapi.json", served.api, headers=AUTH)

    @schema.hook
    def before_generate_path_parameters(context: Any, strategy: Any) -> Any:
        path = context.operation.path if context.operation is not None else ""
        known: Any
        if "{name}" in path:
            known = st.fixed_dictionaries({"name": st.sampled_from(NAMES)})
        elif "{job_id}" in path:
            known = st.fixed_dictionaries({"job_id": st.sampled_from(served.job_ids)})
        else:
            return strategy
        return st.one_of(strategy, known)

    return schema


@pytest.fixture(scope="module")
def open_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _serve(tmp_path_factory.mktemp("schema-open"))


@pytest.fixture(scope="module")
def locked_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _serve(tmp_path_factory.mktemp("schema-locked"), 'api_read_auth = "all"')


def _settle(served: Served) -> None:
    """Wait until no renew or deploy job is queued or running."""
    deadline = time.monotonic() + 60
    while any(served.scheduler.jobs.is_open(n, k) for n in NAMES for k in ("renew", "deploy")):
        assert time.monotonic() < deadline, "jobs did not finish"
        time.sleep(0.05)


OPERATIONS = [
    ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/v1/certificates"),
    ("GET", "/v1/certificates/{name}"), ("POST", "/v1/certificates/{name}/renew"),
    ("POST", "/v1/certificates/{name}/deploy"), ("GET", "/v1/jobs/{job_id}"),
]
IDS = [f"{m} {p}" for m, p in OPERATIONS]


def _cases(served: Served, method: str, path: str, call: Callable[[Any], Any]) -> Counter[int]:
    """Run ``call`` on generated cases (valid and invalid input) of one operation; the status codes seen."""
    operation = _schema(served)[path][method]
    strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                         operation.as_strategy(GenerationMode.NEGATIVE))
    seen: Counter[int] = Counter()

    @SETTINGS
    @given(case=strategy)
    def run(case: Any) -> None:
        seen[call(case).status_code] += 1

    run()
    return seen


def _minimum(path: str) -> int:
    """Cases that must have run: an operation without parameters has one input, the others many."""
    return 20 if "{" in path else 1


def test_the_document_lists_every_operation(open_api: Served) -> None:
    schema = _schema(open_api)
    listed = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert listed == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=IDS)
def test_with_the_token_every_answer_conforms(open_api: Served, method: str, path: str) -> None:
    """No 5xx, and status, content type, headers and body as declared (schemathesis' own checks)."""
    seen = _cases(open_api, method, path, lambda case: case.call_and_validate(headers=AUTH))
    assert not [code for code in seen if code >= 500], seen
    assert sum(seen.values()) >= _minimum(path), seen
    if method == "POST":
        assert seen[202] and seen[404], seen  # real certificates went through the pipeline, unknown ones did not
        _settle(open_api)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=IDS)
def test_without_credentials_writes_are_401_and_change_nothing(open_api: Served, method: str, path: str) -> None:
    _settle(open_api)  # the renewals the token run started
    inventory = open_api.app.inventory
    before = {name: [v.serial for v in inventory.versions(name)] for name in NAMES}

    def call(case: Any) -> Any:
        response = case.call()
        if method == "POST":
            assert response.status_code == 401, (case.formatted_path, response.status_code)
            assert response.json()["detail"].startswith("missing credentials")
            for name in NAMES:
                assert name not in response.text
        else:  # reads stay open with the default config: they answer as with the token, as declared
            assert response.status_code != 401 and response.status_code < 500, response.status_code
            case.validate_response(response)
        return response

    seen = _cases(open_api, method, path, call)
    assert sum(seen.values()) >= _minimum(path), seen
    assert not any(open_api.scheduler.jobs.is_open(n, k) for n in NAMES for k in ("renew", "deploy"))
    assert {name: [v.serial for v in inventory.versions(name)] for name in NAMES} == before


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=IDS)
def test_read_auth_all_without_credentials_everything_is_401(locked_api: Served, method: str, path: str) -> None:
    def call(case: Any) -> Any:
        response = case.call()
        assert response.status_code == 401, (case.formatted_path, response.status_code, response.text)
        assert set(response.json()) == {"detail"}
        assert response.headers["www-authenticate"] == ["Bearer"]
        for name in NAMES:
            assert name not in response.text
        case.validate_response(response)  # a 401 the document declares, shaped as declared
        return response

    seen = _cases(locked_api, method, path, call)
    assert set(seen) == {401} and sum(seen.values()) >= _minimum(path), seen
