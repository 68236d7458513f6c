"""The ``kubernetes-secret`` target against the Kubernetes API stand-in, through a kubeconfig."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from lightkube import Client, KubeConfig
from lightkube.resources.core_v1 import Secret

from certd.config.model import KubernetesSecretDeployConfig
from certd.core.durations import rfc3339
from certd.deploy import build_target
from certd.deploy.base import DeployContext, DeployTarget, PublishedPaths
from certd.deploy.kubernetes import (
    ANNOTATION_NOT_AFTER,
    ANNOTATION_SERIAL,
    LABEL_CERTIFICATE,
    LABEL_MANAGED_BY,
    MAX_ATTEMPTS,
    KubernetesSecretTarget,
)
from certd.errors import DeployError
from certd.pki.certs import certs_pem, serial_hex
from certd.pki.keys import KeyType, generate_key, key_pem
from tests.servers.tlsutil import CertKey, make_ca
from tests.standins.kubernetes import OTHER_WRITER_ANNOTATION, KubernetesStandin

NS = "certs"
NAME = "web-tls"


@pytest.fixture(scope="module")
def ca() -> CertKey:
    return make_ca("certd k8s deploy test root")


@pytest.fixture
def make_ctx(ca: CertKey, tmp_path: Path) -> Callable[..., DeployContext]:
    """A fresh key and leaf, signed by the test root, shaped as the pipeline hands it to targets."""

    def make(*, roots: bool = True, chain: tuple[x509.Certificate, ...] = ()) -> DeployContext:
        key = generate_key(KeyType.ECDSA_P256)
        now = datetime.now(UTC)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web.example.test")]))
            .issuer_name(ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("web.example.test")]), critical=False)
            .sign(ca.key, hashes.SHA256())
        )
        leaf_pem = leaf.public_bytes(serialization.Encoding.PEM)
        fullchain = leaf_pem + certs_pem(chain)
        kpem = key_pem(key)
        return DeployContext(
            certificate="web",
            serial=serial_hex(leaf),
            names=("web.example.test",),
            leaf=leaf,
            chain=chain,
            roots=(ca.cert,) if roots else (),
            key_pem=kpem,
            fullchain_pem=fullchain,
            combined_pem=kpem + fullchain,
            paths=PublishedPaths.under(tmp_path / "out"),
        )

    return make


@pytest.fixture
def kubeconfig(k8s_standin: KubernetesStandin, tmp_path: Path) -> Path:
    return k8s_standin.kubeconfig(tmp_path / "kubeconfig")


def target_for(kubeconfig: Path, **overrides: Any) -> KubernetesSecretTarget:
    settings: dict[str, Any] = {
        "type": "kubernetes-secret",
        "namespace": NS,
        "name": NAME,
        "kubeconfig": kubeconfig,
        "labels": {"team": "edge"},
        "annotations": {"owner": "ops@example.test"},
        "timeout": "5s",
    }
    settings.update(overrides)
    return KubernetesSecretTarget("k8s-web", KubernetesSecretDeployConfig.model_validate(settings))


def assert_no_secrets_in(err: DeployError, ctx: DeployContext, standin: KubernetesStandin) -> None:
    text = f"{err} {err!r} {err.message}"
    key_b64 = base64.b64encode(ctx.key_pem).decode()
    for forbidden in (ctx.key_pem.decode(), key_b64, key_b64[:40], standin.token, "PRIVATE KEY"):
        assert forbidden not in text


def test_is_a_deploy_target_built_from_config(kubeconfig: Path) -> None:
    target = target_for(kubeconfig)
    assert isinstance(target, DeployTarget)
    built = build_target("k8s-web", KubernetesSecretDeployConfig.model_validate(
        {"type": "kubernetes-secret", "namespace": NS, "name": NAME, "kubeconfig": kubeconfig}))
    assert isinstance(built, KubernetesSecretTarget) and built.name == "k8s-web"


def test_creates_missing_secret(k8s_standin: KubernetesStandin, kubeconfig: Path,
                                make_ctx: Callable[..., DeployContext]) -> None:
    ctx = make_ctx()
    summary = target_for(kubeconfig).deploy(ctx)
    stored = k8s_standin.secrets[(NS, NAME)]
    assert summary == f"secret {NS}/{NAME} created (resourceVersion {stored['metadata']['resourceVersion']})"
    assert stored["type"] == "kubernetes.io/tls"
    data = k8s_standin.secret_data(NS, NAME)
    assert data["tls.crt"] == ctx.fullchain_pem
    assert data["tls.key"] == ctx.key_pem
    assert data["ca.crt"] == certs_pem(ctx.roots)
    assert stored["metadata"]["labels"] == {LABEL_MANAGED_BY: "certd", LABEL_CERTIFICATE: "web", "team": "edge"}
    assert stored["metadata"]["annotations"] == {
        ANNOTATION_SERIAL: ctx.serial,
        ANNOTATION_NOT_AFTER: rfc3339(ctx.leaf.not_valid_after_utc),
        "owner": "ops@example.test",
    }
    assert [r.method for r in k8s_standin.requests] == ["GET", "POST", "GET"]


def test_updates_existing_secret_keeping_foreign_fields(k8s_standin: KubernetesStandin, kubeconfig: Path,
                                                        make_ctx: Callable[..., DeployContext]) -> None:
    old, new = make_ctx(), make_ctx()
    target = target_for(kubeconfig)
    target.deploy(old)
    # Another tool adds its own annotation and data key; certd must not wipe them.
    with Client(KubeConfig.from_file(kubeconfig), lazy=False) as other:
        current = other.get(Secret, NAME, namespace=NS)
        assert current.metadata is not None and current.metadata.annotations is not None and current.data
        current.metadata.annotations["reflector/allowed"] = "true"
        current.data["extra.txt"] = base64.b64encode(b"kept").decode()
        other.replace(current)
    rv_before = k8s_standin.secrets[(NS, NAME)]["metadata"]["resourceVersion"]
    k8s_standin.clear_requests()

    summary = target.deploy(new)

    stored = k8s_standin.secrets[(NS, NAME)]
    rv_after = stored["metadata"]["resourceVersion"]
    assert rv_after != rv_before
    assert summary == f"secret {NS}/{NAME} updated (resourceVersion {rv_after})"
    data = k8s_standin.secret_data(NS, NAME)
    assert data["tls.crt"] == new.fullchain_pem and data["tls.key"] == new.key_pem
    assert data["extra.txt"] == b"kept"
    assert stored["metadata"]["annotations"]["reflector/allowed"] == "true"
    assert stored["metadata"]["annotations"][ANNOTATION_SERIAL] == new.serial
    puts = [r for r in k8s_standin.requests if r.method == "PUT"]
    assert len(puts) == 1 and puts[0].body["metadata"]["resourceVersion"] == rv_before


def test_same_version_again_does_not_write(k8s_standin: KubernetesStandin, kubeconfig: Path,
                                           make_ctx: Callable[..., DeployContext]) -> None:
    ctx = make_ctx()
    target = target_for(kubeconfig)
    target.deploy(ctx)
    rv = k8s_standin.secrets[(NS, NAME)]["metadata"]["resourceVersion"]
    k8s_standin.clear_requests()
    assert target.deploy(ctx) == f"secret {NS}/{NAME} unchanged (resourceVersion {rv})"
    assert {r.method for r in k8s_standin.requests} == {"GET"}


def test_two_conflicts_are_retried(k8s_standin: KubernetesStandin, kubeconfig: Path,
                                   make_ctx: Callable[..., DeployContext]) -> None:
    target = target_for(kubeconfig)
    target.deploy(make_ctx())
    ctx = make_ctx()
    k8s_standin.inject_conflicts(2)
    summary = target.deploy(ctx)
    assert summary.startswith(f"secret {NS}/{NAME} updated (resourceVersion ")
    assert summary.endswith("; 2 conflicts retried)")
    assert k8s_standin.pending_conflicts == 0
    stored = k8s_standin.secrets[(NS, NAME)]
    assert stored["metadata"]["annotations"][OTHER_WRITER_ANNOTATION] == "2"  # the other writer's change survived
    assert k8s_standin.secret_data(NS, NAME)["tls.key"] == ctx.key_pem
    assert [r.status for r in k8s_standin.requests if r.method == "PUT"][-3:] == [409, 409, 200]


def test_create_race_turns_into_update(k8s_standin: KubernetesStandin, kubeconfig: Path,
                                       make_ctx: Callable[..., DeployContext]) -> None:
    ctx = make_ctx()
    k8s_standin.inject_conflicts(1, other_data={"tls.crt": b"an older chain", "tls.key": b"an older key"})
    summary = target_for(kubeconfig).deploy(ctx)
    assert " updated " in summary and summary.endswith("; 1 conflict retried)")
    assert [(r.method, r.status) for r in k8s_standin.requests] == [
        ("GET", 404), ("POST", 409), ("GET", 200), ("PUT", 200), ("GET", 200)
    ]
    assert k8s_standin.secret_data(NS, NAME)["tls.crt"] == ctx.fullchain_pem
    assert k8s_standin.secrets[(NS, NAME)]["metadata"]["annotations"][OTHER_WRITER_ANNOTATION] == "1"


def test_create_race_with_the_same_content_needs_no_write(k8s_standin: KubernetesStandin, kubeconfig: Path,
                                                          make_ctx: Callable[..., DeployContext]) -> None:
    ctx = make_ctx()
    k8s_standin.inject_conflicts(1)  # another replica created exactly what we were about to create
    summary = target_for(kubeconfig).deploy(ctx)
    assert " unchanged " in summary
    assert [r.method for r in k8s_standin.requests] == ["GET", "POST", "GET", "GET"]


def test_conflicts_beyond_the_bound_fail(k8s_standin: KubernetesStandin, kubeconfig: Path,
                                         make_ctx: Callable[..., DeployContext]) -> None:
    target = target_for(kubeconfig)
    target.deploy(make_ctx())
    ctx = make_ctx()
    k8s_standin.inject_conflicts(MAX_ATTEMPTS)
    with pytest.raises(DeployError) as exc:
        target.deploy(ctx)
    err = exc.value
    assert "k8s-web" in err.message and f"{NS}/{NAME}" in err.message
    assert "409 Conflict: Operation cannot be fulfilled" in err.message
    assert err.retryable
    assert len([r for r in k8s_standin.requests if r.method == "PUT" and r.status == 409]) == MAX_ATTEMPTS
    assert k8s_standin.secret_data(NS, NAME)["tls.key"] != ctx.key_pem
    assert_no_secrets_in(err, ctx, k8s_standin)


def test_forbidden_namespace(k8s_standin: KubernetesStandin, kubeconfig: Path,
                             make_ctx: Callable[..., DeployContext]) -> None:
    k8s_standin.allow_namespaces("somewhere-else")
    ctx = make_ctx()
    with pytest.raises(DeployError) as exc:
        target_for(kubeconfig).deploy(ctx)
    err = exc.value
    assert "k8s-web" in err.message and f"{NS}/{NAME}" in err.message
    assert "403 Forbidden" in err.message and f'in the namespace "{NS}"' in err.message
    assert not err.retryable
    assert_no_secrets_in(err, ctx, k8s_standin)


def test_read_only_rbac_fails_on_write(k8s_standin: KubernetesStandin, kubeconfig: Path,
                                       make_ctx: Callable[..., DeployContext]) -> None:
    k8s_standin.allow_namespaces(NS, verbs={"get"})
    ctx = make_ctx()
    with pytest.raises(DeployError) as exc:
        target_for(kubeconfig).deploy(ctx)
    assert "cannot create secret" in exc.value.message and "cannot create resource" in exc.value.message
    assert_no_secrets_in(exc.value, ctx, k8s_standin)


def test_wrong_token(k8s_standin: KubernetesStandin, tmp_path: Path,
                     make_ctx: Callable[..., DeployContext]) -> None:
    bad = k8s_standin.kubeconfig(tmp_path / "bad-kubeconfig", token="wrong-token-" + "x" * 20)
    ctx = make_ctx()
    with pytest.raises(DeployError) as exc:
        target_for(bad).deploy(ctx)
    err = exc.value
    assert "401 Unauthorized" in err.message and f"{NS}/{NAME}" in err.message and "k8s-web" in err.message
    assert "wrong-token" not in err.message
    assert_no_secrets_in(err, ctx, k8s_standin)


def test_existing_secret_of_another_type(k8s_standin: KubernetesStandin, kubeconfig: Path,
                                         make_ctx: Callable[..., DeployContext]) -> None:
    k8s_standin.create_secret(NS, {"metadata": {"name": NAME}, "type": "Opaque", "data": {"x": "eA=="}})
    ctx = make_ctx()
    with pytest.raises(DeployError) as exc:
        target_for(kubeconfig).deploy(ctx)
    assert "type 'Opaque'" in exc.value.message and not exc.value.retryable
    assert k8s_standin.secret_data(NS, NAME) == {"x": b"x"}


def test_immutable_secret_is_not_overwritten(k8s_standin: KubernetesStandin, kubeconfig: Path,
                                             make_ctx: Callable[..., DeployContext]) -> None:
    k8s_standin.create_secret(NS, {"metadata": {"name": NAME}, "type": "kubernetes.io/tls", "immutable": True,
                                   "data": {"tls.crt": "eA==", "tls.key": "eA=="}})
    ctx = make_ctx()
    with pytest.raises(DeployError) as exc:
        target_for(kubeconfig).deploy(ctx)
    assert "immutable" in exc.value.message and not exc.value.retryable
    assert_no_secrets_in(exc.value, ctx, k8s_standin)


def test_ca_falls_back_to_top_of_chain_and_can_be_left_out(k8s_standin: KubernetesStandin, kubeconfig: Path,
                                                           make_ctx: Callable[..., DeployContext],
                                                           ca: CertKey) -> None:
    ctx = make_ctx(roots=False, chain=(ca.cert,))
    target_for(kubeconfig).deploy(ctx)
    assert k8s_standin.secret_data(NS, NAME)["ca.crt"] == ca.cert_pem
    target_for(kubeconfig, include_ca=False).deploy(make_ctx())
    assert "ca.crt" not in k8s_standin.secret_data(NS, NAME)


def test_context_must_exist(kubeconfig: Path, k8s_standin: KubernetesStandin,
                            make_ctx: Callable[..., DeployContext]) -> None:
    target_for(kubeconfig, context="certd-standin").deploy(make_ctx())
    with pytest.raises(DeployError) as exc:
        target_for(kubeconfig, context="nope").deploy(make_ctx())
    assert "Context 'nope' not found" in exc.value.message and not exc.value.retryable


def test_unreadable_kubeconfig_does_not_leak_it(tmp_path: Path, k8s_standin: KubernetesStandin,
                                                make_ctx: Callable[..., DeployContext]) -> None:
    broken = tmp_path / "broken"
    broken.write_text(f"users: [{{name: x, user: {{token: {k8s_standin.token}}}}}\n  : : nonsense")
    ctx = make_ctx()
    with pytest.raises(DeployError) as exc:
        target_for(broken).deploy(ctx)
    assert "cannot set up the Kubernetes client" in exc.value.message
    assert_no_secrets_in(exc.value, ctx, k8s_standin)


def test_in_cluster_without_a_pod(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, k8s_standin: KubernetesStandin,
                                  make_ctx: Callable[..., DeployContext]) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    target = KubernetesSecretTarget("k8s-web", KubernetesSecretDeployConfig.model_validate(
        {"type": "kubernetes-secret", "namespace": NS, "name": NAME}))
    with pytest.raises(DeployError) as exc:
        target.deploy(make_ctx())
    assert "in-cluster service account" in exc.value.message


def test_untrusted_server_certificate(k8s_standin: KubernetesStandin, tmp_path: Path,
                                      make_ctx: Callable[..., DeployContext]) -> None:
    path = k8s_standin.kubeconfig(tmp_path / "kubeconfig")
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(make_ca("not the stand-in's CA").cert_pem)
    path.write_text(path.read_text().replace(str(k8s_standin.ca_bundle_path), str(other_ca)))
    ctx = make_ctx()
    with pytest.raises(DeployError) as exc:
        target_for(path).deploy(ctx)
    assert "TLS verification failed" in exc.value.message and exc.value.retryable
    assert_no_secrets_in(exc.value, ctx, k8s_standin)


def test_server_down(k8s_standin: KubernetesStandin, tmp_path: Path,
                     make_ctx: Callable[..., DeployContext]) -> None:
    kubeconfig = k8s_standin.kubeconfig(tmp_path / "kubeconfig", embed_ca=True)  # the CA file goes with the server
    k8s_standin.stop()
    ctx = make_ctx()
    with pytest.raises(DeployError) as exc:
        target_for(kubeconfig).deploy(ctx)
    assert "connection failed" in exc.value.message and f"{NS}/{NAME}" in exc.value.message
    assert exc.value.retryable


def test_invalid_object_is_reported_with_the_api_reason(k8s_standin: KubernetesStandin, kubeconfig: Path,
                                                        make_ctx: Callable[..., DeployContext]) -> None:
    ctx = make_ctx()
    with pytest.raises(DeployError) as exc:
        target_for(kubeconfig, labels={"team": "not a valid label value"}).deploy(ctx)
    assert "422 Invalid" in exc.value.message and "metadata.labels" in exc.value.message
    assert not exc.value.retryable
    assert_no_secrets_in(exc.value, ctx, k8s_standin)


def test_write_that_did_not_stick_is_caught(k8s_standin: KubernetesStandin, kubeconfig: Path,
                                            make_ctx: Callable[..., DeployContext],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    target = target_for(kubeconfig)
    target.deploy(make_ctx())
    verify = KubernetesSecretTarget._verify

    def overwritten_first(self: KubernetesSecretTarget, *args: Any) -> str:
        # Someone puts an older version back between certd's PUT and its re-read.
        with Client(KubeConfig.from_file(kubeconfig), lazy=False) as other:
            current = other.get(Secret, NAME, namespace=NS)
            assert current.metadata is not None and current.metadata.annotations is not None
            current.metadata.annotations[ANNOTATION_SERIAL] = "0bad"
            other.replace(current)
        return verify(self, *args)

    monkeypatch.setattr(KubernetesSecretTarget, "_verify", overwritten_first)
    ctx = make_ctx()
    with pytest.raises(DeployError) as exc:
        target.deploy(ctx)
    assert "does not hold what certd wrote" in exc.value.message and "'0bad'" in exc.value.message
    assert_no_secrets_in(exc.value, ctx, k8s_standin)
