"""``kubernetes-secret`` target: keep a ``kubernetes.io/tls`` Secret holding the new certificate.

Why read-modify-write with ``resourceVersion`` rather than a blind PUT or server-side apply: other
controllers (Reflector, ingress controllers, kubectl users) add their own labels, annotations or data keys
to such Secrets, and a blind replace would wipe them. So certd GETs the Secret, changes only what it owns
(``tls.crt``, ``tls.key``, ``ca.crt`` and its own labels and annotations), and PUTs it back with the
``resourceVersion`` it read; if someone wrote in between, the API answers 409 and certd re-reads and tries
again, a bounded number of times. A missing Secret is created with POST; losing that race (409
AlreadyExists) simply turns the next try into an update.

Why re-read after writing: the pipeline records ``deployed`` only if the Secret really holds the new
leaf, key and serial, not merely because the PUT returned 200.

The client is ``lightkube`` (a typed, small client over httpx); auth comes from the configured kubeconfig
(and optional context) or, without one, from the pod's service account. Every failure becomes a
``DeployError`` naming the target, ``namespace/name`` and the API's own ``Status`` reason and message, and
never any key material or token.
"""

from __future__ import annotations

import base64
import hmac
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx2
from cryptography import x509
from lightkube import ApiError, Client, ConfigError, KubeConfig, SingleConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from certd.config.model import KubernetesSecretDeployConfig
from certd.core.durations import rfc3339
from certd.deploy.base import DeployContext
from certd.errors import DeployError
from certd.pki.certs import certs_pem, load_pem_certs

__all__ = [
    "ANNOTATION_NOT_AFTER",
    "ANNOTATION_SERIAL",
    "LABEL_CERTIFICATE",
    "LABEL_MANAGED_BY",
    "MAX_ATTEMPTS",
    "KubernetesSecretTarget",
    "build",
]

TLS_SECRET_TYPE = "kubernetes.io/tls"  # noqa: S105 - a Secret type name, not a password
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_CERTIFICATE = "certd.io/certificate"
ANNOTATION_SERIAL = "certd.io/serial"
ANNOTATION_NOT_AFTER = "certd.io/not-after"
FIELD_MANAGER = "certd"
MAX_ATTEMPTS = 5
_BACKOFF_BASE = 0.05
_BACKOFF_CAP = 1.0

# Anything that looks like key material or a long base64 run is cut from messages we pass on,
# in case a server (or proxy) ever echoes a request body back.
_PEM_PRIVATE = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S)
_LONG_BASE64 = re.compile(r"[A-Za-z0-9+/=_-]{64,}")


def _redact(text: str) -> str:
    return _LONG_BASE64.sub("[redacted]", _PEM_PRIVATE.sub("[redacted]", text))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return None


@dataclass(frozen=True)
class _Desired:
    """What certd owns in the Secret; everything else in it is left as found."""

    data: dict[str, str]
    drop_keys: tuple[str, ...]
    labels: dict[str, str]
    annotations: dict[str, str]


class _Conflict(Exception):
    """The write lost a race (409); read again and retry."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class KubernetesSecretTarget:
    """Create or update one ``kubernetes.io/tls`` Secret with optimistic concurrency."""

    def __init__(self, name: str, config: KubernetesSecretDeployConfig) -> None:
        self.name = name
        self._config = config
        self._where = f"{config.namespace}/{config.name}"

    # --- the DeployTarget interface ------------------------------------------------------------------------
    def deploy(self, ctx: DeployContext) -> str:
        desired = self._desired(ctx)
        with self._client() as client:
            action, attempts = self._write(client, desired)
            resource_version = self._verify(client, ctx, desired)
        retried = f"; {attempts - 1} conflict{'s' if attempts > 2 else ''} retried" if attempts > 1 else ""
        return f"secret {self._where} {action} (resourceVersion {resource_version}{retried})"

    # --- building ------------------------------------------------------------------------------------------
    def _desired(self, ctx: DeployContext) -> _Desired:
        data = {"tls.crt": _b64(ctx.fullchain_pem), "tls.key": _b64(ctx.key_pem)}
        drop: tuple[str, ...] = ()
        ca_certs = ctx.roots or ctx.chain[-1:]
        if self._config.include_ca and ca_certs:
            data["ca.crt"] = _b64(certs_pem(ca_certs))
        else:
            # A ca.crt left from an earlier version would name a CA that no longer matches tls.crt.
            drop = ("ca.crt",)
        labels = {**self._config.labels, LABEL_MANAGED_BY: "certd", LABEL_CERTIFICATE: ctx.certificate}
        annotations = {
            **self._config.annotations,
            ANNOTATION_SERIAL: ctx.serial,
            ANNOTATION_NOT_AFTER: rfc3339(ctx.leaf.not_valid_after_utc) or "",
        }
        return _Desired(data=data, drop_keys=drop, labels=labels, annotations=annotations)

    def _new_secret(self, desired: _Desired) -> Secret:
        return Secret(
            metadata=ObjectMeta(
                name=self._config.name,
                namespace=self._config.namespace,
                labels=dict(desired.labels),
                annotations=dict(desired.annotations),
            ),
            type=TLS_SECRET_TYPE,
            data=dict(desired.data),
        )

    def _merged(self, current: Secret, desired: _Desired) -> Secret | None:
        """The current object with certd's fields set; ``None`` when it already matches (no write needed)."""
        if current.type != TLS_SECRET_TYPE:
            raise DeployError(
                f"deploy {self.name}: secret {self._where} exists with type {current.type or 'Opaque'!r}, not "
                f"{TLS_SECRET_TYPE!r}; a Secret's type cannot be changed, so delete it or point certd at another name",
                retryable=False,
            )
        before = current.to_dict()
        body = current.to_dict()
        data: dict[str, str] = dict(body.get("data") or {})
        data.update(desired.data)
        for key in desired.drop_keys:
            data.pop(key, None)
        body["data"] = data
        body.pop("stringData", None)
        meta: dict[str, Any] = body.setdefault("metadata", {})
        meta["labels"] = {**(meta.get("labels") or {}), **desired.labels}
        meta["annotations"] = {**(meta.get("annotations") or {}), **desired.annotations}
        if body == before:
            return None
        if current.immutable and data != (before.get("data") or {}):
            raise DeployError(
                f"deploy {self.name}: secret {self._where} is marked immutable, so its data cannot be updated; "
                "delete it and certd will create it again",
                retryable=False,
            )
        secret = Secret.from_dict(body)
        assert isinstance(secret, Secret)
        return secret

    # --- talking to the API --------------------------------------------------------------------------------
    def _client(self) -> Client:
        cfg = self._config
        source = f"kubeconfig {cfg.kubeconfig}" if cfg.kubeconfig is not None else "in-cluster service account"
        try:
            single: SingleConfig | None
            if cfg.kubeconfig is not None:
                single = KubeConfig.from_file(cfg.kubeconfig).get(context_name=cfg.context)
            else:
                single = KubeConfig.from_service_account().get()
            if single is None:
                raise ConfigError("no context selected")
            return Client(
                config=single,
                namespace=cfg.namespace,
                timeout=httpx2.Timeout(cfg.timeout.total_seconds()),
                field_manager=FIELD_MANAGER,
                lazy=False,
            )
        except ConfigError as exc:
            detail = _redact(str(exc))
        except KeyError as exc:
            if cfg.kubeconfig is None:
                detail = f"not running in a pod ({exc.args[0]} is not set) and no kubeconfig is configured"
            else:
                detail = f"missing entry {exc.args[0]!r}"
        except OSError as exc:  # includes ssl.SSLError for an unreadable CA bundle
            detail = f"{type(exc).__name__}: {exc.strerror or 'cannot read a referenced file'}"
        except Exception as exc:
            # YAML parser errors quote the offending line, which may hold the token: name the type only.
            detail = f"cannot parse it ({type(exc).__name__})"
        raise DeployError(
            f"deploy {self.name}: cannot set up the Kubernetes client for secret {self._where} from {source}: {detail}",
            retryable=False,
        )

    def _write(self, client: Client, desired: _Desired) -> tuple[str, int]:
        last = _Conflict("Conflict", "")
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if attempt > 1:
                delay = min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (attempt - 2))
                time.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not cryptography
            try:
                current = self._read(client)
                if current is None:
                    self._call("create", client.create, self._new_secret(desired))
                    return "created", attempt
                merged = self._merged(current, desired)
                if merged is None:
                    return "unchanged", attempt
                self._call("update", client.replace, merged)
                return "updated", attempt
            except _Conflict as conflict:
                last = conflict
        raise DeployError(
            f"deploy {self.name}: secret {self._where} kept changing under us: {MAX_ATTEMPTS} attempts each "
            f"ended in 409 (another writer updates it at the same time); last: 409 {last.reason}: {last.message}",
        )

    def _read(self, client: Client) -> Secret | None:
        try:
            return client.get(Secret, self._config.name, namespace=self._config.namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise self._api_failure("read", exc) from exc
        except httpx2.HTTPError as exc:
            raise self._transport_failure("read", exc) from exc

    def _call(self, action: str, method: Callable[[Secret], object], secret: Secret) -> None:
        try:
            method(secret)
        except ApiError as exc:
            if exc.status.code == 409:
                raise _Conflict(exc.status.reason or "Conflict", _redact(exc.status.message or "")) from exc
            raise self._api_failure(action, exc) from exc
        except httpx2.HTTPError as exc:
            raise self._transport_failure(action, exc) from exc

    def _verify(self, client: Client, ctx: DeployContext, desired: _Desired) -> str:
        stored = self._read(client)
        if stored is None:
            raise DeployError(f"deploy {self.name}: secret {self._where} is gone right after certd wrote it")
        problems: list[str] = []
        annotations = (stored.metadata.annotations if stored.metadata else None) or {}
        if annotations.get(ANNOTATION_SERIAL) != ctx.serial:
            problems.append(f"annotation {ANNOTATION_SERIAL} is {annotations.get(ANNOTATION_SERIAL)!r}")
        data = stored.data or {}
        chain_pem = _unb64(data.get("tls.crt"))
        leaf: x509.Certificate | None = None
        if chain_pem is not None:
            try:
                leaf = load_pem_certs(chain_pem)[0]
            except ValueError:
                leaf = None
        if leaf is None or leaf != ctx.leaf:
            problems.append("tls.crt does not start with the new leaf")
        key_pem = _unb64(data.get("tls.key"))
        if key_pem is None or not hmac.compare_digest(key_pem, ctx.key_pem):
            problems.append("tls.key is not the new key")
        if "ca.crt" in desired.data and data.get("ca.crt") != desired.data["ca.crt"]:
            problems.append("ca.crt is not the expected CA")
        if problems:
            raise DeployError(
                f"deploy {self.name}: secret {self._where} does not hold what certd wrote (changed by another "
                f"writer?): {'; '.join(problems)}"
            )
        return (stored.metadata.resourceVersion if stored.metadata else None) or "?"

    # --- errors ----------------------------------------------------------------------------------------------
    def _api_failure(self, action: str, exc: ApiError) -> DeployError:
        status = exc.status
        code = status.code or exc.response.status_code
        reason = status.reason or "Unknown"
        message = _redact(status.message or exc.response.reason_phrase)
        hint = {
            401: " (the API rejected the credentials: check the token in the kubeconfig or service account)",
            403: f" (RBAC: allow get, create and update on secrets in namespace {self._config.namespace!r})",
        }.get(code, "")
        return DeployError(
            f"deploy {self.name}: cannot {action} secret {self._where}: {code} {reason}: {message}{hint}",
            retryable=code in (409, 429) or code >= 500,
        )

    def _transport_failure(self, action: str, exc: httpx2.HTTPError) -> DeployError:
        if isinstance(exc, httpx2.HTTPStatusError):
            response = exc.response
            detail = f"{response.status_code} {response.reason_phrase} (not a Kubernetes Status response)"
            retryable = response.status_code in (408, 429) or response.status_code >= 500
        else:
            text = _redact(str(exc)) or type(exc).__name__
            kind = "TLS verification failed" if "CERTIFICATE" in text or "SSL" in text else "connection failed"
            if isinstance(exc, httpx2.TimeoutException):
                kind = f"timed out after {self._config.timeout.total_seconds():g}s"
            detail = f"{kind}: {text}"
            retryable = True
        return DeployError(
            f"deploy {self.name}: cannot {action} secret {self._where}: {detail}",
            retryable=retryable,
        )


def build(name: str, config: KubernetesSecretDeployConfig) -> KubernetesSecretTarget:
    """Entry point for ``certd.deploy.build_target``."""
    return KubernetesSecretTarget(name, config)
