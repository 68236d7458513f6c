"""How the test OpenBao is configured: its server config, and the PKI and auth set-up done over its HTTP API.

Kept apart from ``openbao.py`` (which owns the process) so that what a test can rely on is readable in one
place: a two-tier PKI (``pki-root`` holds the root CA, ``pki`` an intermediate signed by it, so issued chains
are not empty and the root is what certd pins), the ``backend`` and ``keys`` roles, an AppRole mount, a
``kubernetes`` auth mount pointed at the Kubernetes stand-in, a policy on ``pki/*`` and a file audit device
(the only way to count what a real server was asked: every request is one JSON line).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.standins.kubernetes import KubernetesStandin

__all__ = ["PKI_POLICY", "Api", "configure", "configure_namespace", "server_config", "sign_intermediate"]

PKI_POLICY = "certd-pki"
ROOT_CN = "certd test OpenBao Root CA"
INTERMEDIATE_CN = "certd test OpenBao Intermediate CA"
K8S_ROLE, K8S_NAMESPACE, K8S_SERVICE_ACCOUNT = "certd", "certd", "certd"

# ``path, data``, optional ``method`` and ``namespace``: one API call as the server's root token.
Api = Callable[..., dict[str, Any]]


def server_config(workdir: Path, port: int, cluster_port: int, cert: Path, key: Path, audit_log: Path) -> str:
    """A production-shaped config: integrated (raft) storage on disk and a TLS listener.

    OpenBao has no ``file`` storage backend (it kept only raft and a few others), and it dropped mlock, so it
    warns about ``disable_mlock`` as an unknown field; neither is in here for that reason.
    ``performance_multiplier = 1`` makes the single raft node elect itself in about a second after each unseal
    instead of the production default of several. The audit device is declared here because OpenBao refuses
    to enable audit devices over the API.
    """
    return f"""
storage "raft" {{
  path = "{workdir / 'data'}"
  node_id = "certd-test"
  performance_multiplier = 1
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_cert_file = "{cert}"
  tls_key_file = "{key}"
}}
api_addr = "https://127.0.0.1:{port}"
cluster_addr = "https://127.0.0.1:{cluster_port}"
ui = false
log_level = "info"
audit "file" "certd-test" {{
  options {{
    file_path = "{audit_log}"
  }}
}}
"""


def _mount(api: Api, path: str, kind: str, max_ttl: str) -> None:
    api(f"sys/mounts/{path}", {"type": kind, "config": {"max_lease_ttl": max_ttl}})


def sign_intermediate(api: Api, mount: str, common_name: str, name: str) -> str:
    """A new issuer (and key) in ``mount``, signed by the root in ``pki-root``; returns its issuer id.

    The default issuer of the mount is left as it was, so adding a second issuer is invisible to roles.
    """
    before = api(f"{mount}/config/issuers", method="GET")["data"].get("default", "")
    csr = api(f"{mount}/intermediate/generate/internal",
              {"common_name": common_name, "key_type": "ec", "key_bits": 256, "key_name": name})["data"]["csr"]
    signed = api("pki-root/root/sign-intermediate",
                 {"csr": csr, "common_name": common_name, "ttl": "43800h", "format": "pem"})["data"]
    imported = api(f"{mount}/intermediate/set-signed",
                   {"certificate": signed["certificate"] + "\n" + signed["issuing_ca"]})["data"]
    issuer_id = next(i for i in imported["imported_issuers"]
                     if api(f"{mount}/issuer/{i}", method="GET")["data"]["certificate"].strip()
                     == signed["certificate"].strip())
    api(f"{mount}/issuer/{issuer_id}", {"issuer_name": name})
    if before:
        api(f"{mount}/config/issuers", {"default": before})
    return str(issuer_id)


def configure(api: Api, kubernetes: KubernetesStandin) -> str:
    """Everything the tests need, on a freshly unsealed server; returns the root CA PEM."""
    _mount(api, "pki-root", "pki", "87600h")
    root = api("pki-root/root/generate/internal",
               {"common_name": ROOT_CN, "ttl": "87600h", "key_type": "ec", "key_bits": 256,
                "issuer_name": "root"})["data"]["certificate"]
    _mount(api, "pki", "pki", "43800h")
    sign_intermediate(api, "pki", INTERMEDIATE_CN, "intermediate")
    api("pki/config/issuers", {"default": "intermediate"})
    api("pki/roles/backend", {"allowed_domains": "example.test", "allow_subdomains": True, "key_type": "any",
                              "max_ttl": "24h", "ttl": "1h"})
    api("pki/roles/keys", {"allowed_domains": "example.test", "allow_subdomains": True, "key_type": "ec",
                           "key_bits": 256, "max_ttl": "24h", "ttl": "1h"})
    api(f"sys/policies/acl/{PKI_POLICY}", {"policy": 'path "pki/*" { capabilities = ["create", "read", "update", '
                                                     '"list"] }'})
    api("sys/auth/approle", {"type": "approle"})
    api("sys/auth/kubernetes", {"type": "kubernetes"})
    api("auth/kubernetes/config", {
        "kubernetes_host": kubernetes.url,
        "kubernetes_ca_cert": kubernetes.ca_bundle_path.read_text(),
        "token_reviewer_jwt": kubernetes.token,
        "disable_local_ca_jwt": True,  # never read a pod's own token from /var/run/secrets on this machine
    })
    api(f"auth/kubernetes/role/{K8S_ROLE}", {
        "bound_service_account_names": K8S_SERVICE_ACCOUNT, "bound_service_account_namespaces": K8S_NAMESPACE,
        "token_policies": PKI_POLICY, "token_ttl": "1h",
    })
    return str(root)


def configure_namespace(api: Api, namespace: str) -> tuple[str, str, str]:
    """Create ``namespace`` (nested, e.g. ``team-a/certs``) with its own one-tier PKI at ``pki``, a ``backend``
    role, a policy and an AppRole role; returns ``(role_id, secret_id, root_pem)`` of that namespace.

    Everything lives inside the namespace, as a tenant's would: its AppRole is unknown outside it.
    """
    parent = ""
    for part in namespace.strip("/").split("/"):
        api(f"sys/namespaces/{part}", {}, namespace=parent or None)
        parent = f"{parent}/{part}" if parent else part
    api("sys/mounts/pki", {"type": "pki", "config": {"max_lease_ttl": "87600h"}}, namespace=namespace)
    root = api("pki/root/generate/internal", {"common_name": f"certd test OpenBao {namespace} CA", "ttl": "87600h",
                                              "key_type": "ec", "key_bits": 256}, namespace=namespace)
    api("pki/roles/backend", {"allowed_domains": "example.test", "allow_subdomains": True, "key_type": "any",
                              "max_ttl": "24h", "ttl": "1h"}, namespace=namespace)
    api(f"sys/policies/acl/{PKI_POLICY}", {"policy": 'path "pki/*" { capabilities = ["create", "read", "update"] }'},
        namespace=namespace)
    api("sys/auth/approle", {"type": "approle"}, namespace=namespace)
    api("auth/approle/role/certd", {"token_policies": PKI_POLICY, "token_ttl": "1h"}, namespace=namespace)
    role_id = api("auth/approle/role/certd/role-id", method="GET", namespace=namespace)["data"]["role_id"]
    secret_id = api("auth/approle/role/certd/secret-id", {}, namespace=namespace)["data"]["secret_id"]
    return str(role_id), str(secret_id), str(root["data"]["certificate"])
