"""The Kubernetes stand-in behaves as the API docs say, seen through lightkube (not through certd).

If these pass, a failure in ``test_deploy_kubernetes.py`` is certd's, not the stand-in's.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx2
import pytest
from lightkube import ApiError, Client, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType

from tests.standins.kubernetes import OTHER_WRITER_ANNOTATION, KubernetesStandin

NS = "certs"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tls_secret(name: str = "web-tls", *, namespace: str | None = NS, **meta: object) -> Secret:
    return Secret(
        metadata=ObjectMeta(name=name, namespace=namespace, **meta),  # type: ignore[arg-type]
        type="kubernetes.io/tls",
        data={"tls.crt": b64(b"CERT"), "tls.key": b64(b"KEY")},
    )


def ca_context(standin: KubernetesStandin) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(standin.ca_bundle_path))


def client_for(standin: KubernetesStandin, tmp_path: Path, *, token: str | None = None) -> Client:
    path = standin.kubeconfig(tmp_path / f"kubeconfig-{token or 'ok'}", token=token, namespace=NS)
    return Client(KubeConfig.from_file(path), lazy=False)


@pytest.fixture
def client(k8s_standin: KubernetesStandin, tmp_path: Path) -> Iterator[Client]:
    c = client_for(k8s_standin, tmp_path)
    yield c
    c.close()


def api_error(exc_info: pytest.ExceptionInfo[ApiError]) -> tuple[int | None, str | None, str | None]:
    status = exc_info.value.status
    assert status.status == "Failure"
    return status.code, status.reason, status.message


def test_create_and_get_round_trip(client: Client, k8s_standin: KubernetesStandin) -> None:
    created = client.create(tls_secret(labels={"app": "web"}, annotations={"note": "hi"}))
    meta = created.metadata
    assert meta is not None and meta.resourceVersion and meta.uid and meta.creationTimestamp
    assert isinstance(meta.resourceVersion, str)
    got = client.get(Secret, "web-tls", namespace=NS)
    assert got.apiVersion == "v1" and got.kind == "Secret" and got.type == "kubernetes.io/tls"
    assert got.metadata is not None
    assert got.metadata.namespace == NS and got.metadata.labels == {"app": "web"}
    assert got.metadata.annotations == {"note": "hi"}
    assert got.metadata.resourceVersion == meta.resourceVersion
    assert got.data == {"tls.crt": b64(b"CERT"), "tls.key": b64(b"KEY")}
    assert k8s_standin.secret_data(NS, "web-tls") == {"tls.crt": b"CERT", "tls.key": b"KEY"}
    listed = list(client.list(Secret, namespace=NS, labels={"app": "web"}))
    assert [s.metadata.name for s in listed if s.metadata] == ["web-tls"]
    assert list(client.list(Secret, namespace=NS, labels={"app": "other"})) == []


def test_create_existing_is_already_exists(client: Client) -> None:
    client.create(tls_secret())
    with pytest.raises(ApiError) as exc:
        client.create(tls_secret())
    assert api_error(exc) == (409, "AlreadyExists", 'secrets "web-tls" already exists')


def test_get_missing_is_not_found_status(client: Client) -> None:
    with pytest.raises(ApiError) as exc:
        client.get(Secret, "nope", namespace=NS)
    assert api_error(exc) == (404, "NotFound", 'secrets "nope" not found')
    assert exc.value.status.details is not None and exc.value.status.details.name == "nope"
    assert exc.value.response.headers["content-type"] == "application/json"


def test_put_missing_is_not_found(client: Client) -> None:
    with pytest.raises(ApiError) as exc:
        client.replace(tls_secret("ghost"))
    assert api_error(exc)[:2] == (404, "NotFound")


def test_stale_resource_version_conflicts_and_fresh_one_wins(client: Client) -> None:
    first = client.create(tls_secret())
    assert first.metadata is not None
    rv1 = first.metadata.resourceVersion
    update = tls_secret(resourceVersion=rv1, annotations={"round": "1"})
    second = client.replace(update)
    assert second.metadata is not None and second.metadata.resourceVersion != rv1
    stale = tls_secret(resourceVersion=rv1, annotations={"round": "2"})
    with pytest.raises(ApiError) as exc:
        client.replace(stale)
    code, reason, message = api_error(exc)
    assert (code, reason) == (409, "Conflict")
    assert message is not None and "the object has been modified" in message
    current = client.get(Secret, "web-tls", namespace=NS)
    assert current.metadata is not None and current.metadata.annotations == {"round": "1"}


def test_put_without_resource_version_is_unconditional(client: Client) -> None:
    client.create(tls_secret())
    client.replace(tls_secret(annotations={"a": "1"}))
    replaced = client.replace(tls_secret(annotations={"a": "2"}))
    assert replaced.metadata is not None and replaced.metadata.annotations == {"a": "2"}


def test_put_replaces_whole_object_and_no_op_keeps_version(client: Client) -> None:
    client.create(tls_secret(labels={"keep": "no"}))
    updated = client.replace(tls_secret())
    assert updated.metadata is not None and updated.metadata.labels is None
    again = client.replace(tls_secret())
    assert again.metadata is not None and again.metadata.resourceVersion == updated.metadata.resourceVersion


@pytest.mark.parametrize("patch_type", [PatchType.MERGE, PatchType.STRATEGIC])
def test_merge_and_strategic_patch(client: Client, patch_type: PatchType) -> None:
    created = client.create(tls_secret(labels={"a": "1", "b": "2"}))
    assert created.metadata is not None
    patched = client.patch(
        Secret, "web-tls", {"metadata": {"labels": {"b": None, "c": "3"}}, "data": {"extra": b64(b"x")}},
        namespace=NS, patch_type=patch_type,
    )
    assert patched.metadata is not None and patched.metadata.labels == {"a": "1", "c": "3"}
    assert patched.data is not None and set(patched.data) == {"tls.crt", "tls.key", "extra"}
    assert patched.metadata.resourceVersion != created.metadata.resourceVersion
    with pytest.raises(ApiError) as exc:
        client.patch(Secret, "web-tls", {"metadata": {"resourceVersion": created.metadata.resourceVersion,
                                                      "labels": {"d": "4"}}},
                     namespace=NS, patch_type=patch_type)
    assert api_error(exc)[:2] == (409, "Conflict")


def test_json_patch_is_not_supported_by_the_standin(client: Client) -> None:
    client.create(tls_secret())
    with pytest.raises(ApiError) as exc:
        client.patch(Secret, "web-tls", [{"op": "add", "path": "/metadata/labels", "value": {}}],
                     namespace=NS, patch_type=PatchType.JSON)
    assert api_error(exc)[:2] == (415, "UnsupportedMediaType")


def test_tls_secret_needs_cert_and_key(client: Client) -> None:
    bad = Secret(metadata=ObjectMeta(name="half", namespace=NS), type="kubernetes.io/tls",
                 data={"tls.crt": b64(b"CERT")})
    with pytest.raises(ApiError) as exc:
        client.create(bad)
    code, reason, message = api_error(exc)
    assert (code, reason) == (422, "Invalid")
    assert message == 'Secret "half" is invalid: data[tls.key]: Required value'
    details = exc.value.status.details
    assert details is not None and details.causes is not None
    assert [(c.field, c.reason) for c in details.causes] == [("data[tls.key]", "FieldValueRequired")]


def test_type_is_immutable(client: Client) -> None:
    client.create(Secret(metadata=ObjectMeta(name="opaque", namespace=NS), data={"x": b64(b"1")}))
    with pytest.raises(ApiError) as exc:
        client.replace(tls_secret("opaque"))
    code, reason, message = api_error(exc)
    assert (code, reason) == (422, "Invalid") and message is not None and "field is immutable" in message


def test_string_data_is_merged_and_never_returned(client: Client) -> None:
    created = client.create(Secret(metadata=ObjectMeta(name="s", namespace=NS), stringData={"user": "me"}))
    assert created.stringData is None and created.data == {"user": b64(b"me")} and created.type == "Opaque"


def test_wrong_or_missing_token_is_unauthorized(k8s_standin: KubernetesStandin, tmp_path: Path) -> None:
    with client_for(k8s_standin, tmp_path, token="not-the-token") as bad, pytest.raises(ApiError) as exc:
        bad.get(Secret, "web-tls", namespace=NS)
    assert api_error(exc) == (401, "Unauthorized", "Unauthorized")
    anonymous = httpx2.get(f"{k8s_standin.url}/api/v1/namespaces/{NS}/secrets", verify=ca_context(k8s_standin))
    assert anonymous.status_code == 401 and anonymous.json()["kind"] == "Status"
    assert all(k8s_standin.token not in repr(r) for r in k8s_standin.requests)


def test_namespace_allow_list_is_forbidden_elsewhere(client: Client, k8s_standin: KubernetesStandin) -> None:
    k8s_standin.allow_namespaces(NS)
    client.create(tls_secret())
    with pytest.raises(ApiError) as exc:
        client.get(Secret, "web-tls", namespace="kube-system")
    code, reason, message = api_error(exc)
    assert (code, reason) == (403, "Forbidden")
    assert message == (f'secrets "web-tls" is forbidden: User "{k8s_standin.user}" cannot get resource "secrets" '
                       'in API group "" in the namespace "kube-system"')
    with pytest.raises(ApiError) as exc:
        client.create(tls_secret(namespace="kube-system"))
    assert api_error(exc)[:2] == (403, "Forbidden")


def test_verbs_can_be_restricted(client: Client, k8s_standin: KubernetesStandin) -> None:
    client.create(tls_secret())
    k8s_standin.allow_namespaces(NS, verbs={"get"})
    client.get(Secret, "web-tls", namespace=NS)
    with pytest.raises(ApiError) as exc:
        client.replace(tls_secret())
    _, reason, message = api_error(exc)
    assert reason == "Forbidden" and message is not None and "cannot update resource" in message


def test_injected_conflicts_bump_version_as_another_writer(client: Client, k8s_standin: KubernetesStandin) -> None:
    created = client.create(tls_secret())
    assert created.metadata is not None
    k8s_standin.inject_conflicts(2)
    for _ in range(2):
        current = client.get(Secret, "web-tls", namespace=NS)
        assert current.metadata is not None
        with pytest.raises(ApiError) as exc:
            client.replace(tls_secret(resourceVersion=current.metadata.resourceVersion))
        assert api_error(exc)[:2] == (409, "Conflict")
    current = client.get(Secret, "web-tls", namespace=NS)
    assert current.metadata is not None and current.metadata.annotations == {OTHER_WRITER_ANNOTATION: "2"}
    assert current.metadata.resourceVersion != created.metadata.resourceVersion
    assert k8s_standin.pending_conflicts == 0
    done = client.replace(tls_secret(resourceVersion=current.metadata.resourceVersion))
    assert done.metadata is not None and done.metadata.annotations is None


def test_injected_conflict_on_create_is_already_exists(client: Client, k8s_standin: KubernetesStandin) -> None:
    k8s_standin.inject_conflicts(1)
    with pytest.raises(ApiError) as exc:
        client.create(tls_secret())
    assert api_error(exc)[:2] == (409, "AlreadyExists")
    assert (NS, "web-tls") in k8s_standin.secrets


def test_delete_then_not_found(client: Client) -> None:
    client.create(tls_secret())
    client.delete(Secret, "web-tls", namespace=NS)
    with pytest.raises(ApiError) as exc:
        client.get(Secret, "web-tls", namespace=NS)
    assert api_error(exc)[:2] == (404, "NotFound")


def test_discovery_endpoints(k8s_standin: KubernetesStandin) -> None:
    verify = ca_context(k8s_standin)
    version = httpx2.get(f"{k8s_standin.url}/version", verify=verify)
    assert version.status_code == 200 and version.json()["major"] == "1"
    headers = {"Authorization": f"Bearer {k8s_standin.token}"}
    api = httpx2.get(f"{k8s_standin.url}/api", verify=verify, headers=headers).json()
    assert api["kind"] == "APIVersions" and api["versions"] == ["v1"]
    resources = httpx2.get(f"{k8s_standin.url}/api/v1", verify=verify, headers=headers).json()
    assert {r["name"] for r in resources["resources"]} == {"secrets"}
    unknown = httpx2.get(f"{k8s_standin.url}/api/v1/pods", verify=verify, headers=headers)
    assert unknown.status_code == 404 and unknown.json()["reason"] == "NotFound"


def test_tls_is_verified_against_the_standin_ca(k8s_standin: KubernetesStandin) -> None:
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(f"{k8s_standin.url}/version")  # the system store does not know the throwaway CA


def review(standin: KubernetesStandin, token: str, *, audiences: list[str] | None = None,
           bearer: str | None = None) -> httpx2.Response:
    spec: dict[str, object] = {"token": token}
    if audiences is not None:
        spec["audiences"] = audiences
    return httpx2.post(f"{standin.url}/apis/authentication.k8s.io/v1/tokenreviews", verify=ca_context(standin),
                       headers={"Authorization": f"Bearer {standin.token if bearer is None else bearer}"},
                       json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec})


def jwt_claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    claims: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def test_tokenreview_authenticates_a_minted_service_account_token(k8s_standin: KubernetesStandin) -> None:
    jwt = k8s_standin.service_account_token("certd", "issuer", uid="uid-1", audiences=("openbao", "other"))
    claims = jwt_claims(jwt)
    assert claims["sub"] == "system:serviceaccount:certd:issuer"
    assert claims["kubernetes.io"] == {"namespace": "certd", "serviceaccount": {"name": "issuer", "uid": "uid-1"}}
    resp = review(k8s_standin, jwt, audiences=["openbao", "unrelated"])
    assert resp.status_code == 201
    body = resp.json()
    assert (body["kind"], body["apiVersion"]) == ("TokenReview", "authentication.k8s.io/v1")
    status = body["status"]
    assert status["authenticated"] is True and "error" not in status
    assert status["user"]["username"] == "system:serviceaccount:certd:issuer" and status["user"]["uid"] == "uid-1"
    assert status["user"]["groups"] == ["system:serviceaccounts", "system:serviceaccounts:certd",
                                        "system:authenticated"]
    assert status["audiences"] == ["openbao"]  # the intersection, so an audience-aware caller can check it
    recorded = [r for r in k8s_standin.requests if r.path.endswith("/tokenreviews")]
    assert recorded and all(jwt not in repr(r) for r in recorded)


def test_tokenreview_refuses_unknown_revoked_expired_and_wrong_audience_tokens(
        k8s_standin: KubernetesStandin) -> None:
    live = k8s_standin.service_account_token("certd", "issuer")
    assert review(k8s_standin, live).json()["status"]["audiences"] == ["https://kubernetes.default.svc.cluster.local"]
    forged = live.rsplit(".", 1)[0] + ".c2lnbmVkLWJ5LXNvbWVvbmUtZWxzZQ"  # the claims are right, the token is not
    revoked = k8s_standin.service_account_token("certd", "issuer")
    k8s_standin.revoke_service_account_token(revoked)
    expired = k8s_standin.service_account_token("certd", "issuer", lifetime=timedelta(seconds=-1))
    cases = {forged: "token not found", revoked: "has been invalidated", expired: "has expired"}
    for token, why in cases.items():
        status = review(k8s_standin, token).json()["status"]
        assert "authenticated" not in status and status["user"] == {} and why in status["error"], status
    status = review(k8s_standin, live, audiences=["openbao"]).json()["status"]
    assert "authenticated" not in status and "is invalid for the target audiences" in status["error"]


def test_tokenreview_needs_a_reviewer_and_a_token(k8s_standin: KubernetesStandin) -> None:
    jwt = k8s_standin.service_account_token("certd", "issuer")
    empty = review(k8s_standin, "")
    assert empty.status_code == 400 and empty.json()["reason"] == "BadRequest"
    assert review(k8s_standin, jwt, bearer="not-a-token").status_code == 401
    as_sa = review(k8s_standin, jwt, bearer=jwt)  # authenticated as the service account, which may not review
    assert as_sa.status_code == 403 and as_sa.json()["reason"] == "Forbidden"
    assert 'User "system:serviceaccount:certd:issuer" cannot create resource "tokenreviews"' in as_sa.json()["message"]
    groups = httpx2.get(f"{k8s_standin.url}/apis", verify=ca_context(k8s_standin),
                        headers={"Authorization": f"Bearer {k8s_standin.token}"}).json()["groups"]
    assert [g["name"] for g in groups] == ["authentication.k8s.io"]
