"""A Kubernetes API server stand-in for Secrets, written from the official API docs.

There is no Kubernetes API server in the package registries, so tests talk to this one: a real HTTPS server
(stdlib ``ThreadingHTTPServer``, TLS from a throwaway CA) that speaks the part of the core/v1 API a Secret
writer touches, the way the docs describe it:

* ``GET/POST /api/v1/namespaces/<ns>/secrets`` and ``GET/PUT/PATCH/DELETE /api/v1/namespaces/<ns>/secrets/<name>``;
  ``/version``, ``/api``, ``/api/v1``, ``/apis`` and ``/healthz`` for clients that discover first.
* Objects carry ``metadata.uid``, ``creationTimestamp`` and a string ``resourceVersion`` that changes on every
  write (one counter for the whole store, like etcd's revision); a no-op update does not change it.
* POST creates (409 ``AlreadyExists``); PUT replaces the whole object (404 if missing: Secrets are not created
  by PUT); a PUT whose ``resourceVersion`` differs from the stored one is a 409 ``Conflict``, a PUT without one
  is an unconditional update. PATCH takes ``application/merge-patch+json`` (RFC 7386) and
  ``application/strategic-merge-patch+json`` (treated as a merge patch: a Secret has no lists to merge by key);
  a ``resourceVersion`` inside a patch is a precondition too. Other patch types answer 415.
* Validation as the apiserver does it for Secrets: ``kubernetes.io/tls`` needs ``tls.crt`` and ``tls.key``
  (422 ``Invalid``), ``type`` is immutable, so is ``data`` once ``immutable: true``, keys and labels must be
  well-formed, values must be base64, ``stringData`` is merged into ``data`` and never returned.
* ``POST /apis/authentication.k8s.io/v1/tokenreviews`` (``kubernetes_tokenreview.py``), which OpenBao's
  ``kubernetes`` auth method calls to check a service account JWT: only the stand-in's own token may create
  TokenReviews (as if bound to ``system:auth-delegator``); a service account token as the bearer is 403.
* Every error is a ``Status`` object (``status: Failure``, ``message``, ``reason``, ``details``, ``code``) sent
  as ``application/json``. Bearer-token authentication (401 ``Unauthorized`` without or with a wrong token;
  ``/version`` and ``/healthz`` are public, as with the default ``system:public-info-viewer`` binding) and an
  RBAC-like allow list per namespace and verb (403 ``Forbidden``), checked before the object is looked up.

Test controls: ``url``, ``ca_bundle_path``, ``token``, ``user``, ``secrets`` (deep copies of what is stored),
``secret_data()``, ``service_account_token()`` / ``revoke_service_account_token()`` (JWTs the TokenReview
endpoint accepts), ``create_secret()`` (seed state as another writer would), ``inject_conflicts(n)`` and
``pending_conflicts``, ``allow_namespaces(*ns, verbs=...)``, ``allow_all_namespaces()``, ``requests`` /
``clear_requests()`` (what was asked and answered; never the token), ``kubeconfig(path)``, ``start()``/``stop()``.

Deliberately left out: watch, JSON patch and server-side apply (415 here), ``deletecollection``, field selectors,
managedFields, and any resource other than Secrets and TokenReviews.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import json
import re
import secrets as _secrets
import shutil
import socket
import ssl
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.servers.tlsutil import issue_server_cert, make_ca, write_pem
from tests.standins.kubernetes_tokenreview import API_AUDIENCE, TOKENREVIEWS_PATH, TokenAuthority

__all__ = ["ALL_VERBS", "KubernetesStandin", "RecordedRequest", "StandinApiError"]

ALL_VERBS = frozenset({"get", "list", "create", "update", "patch", "delete"})
SECRET_TLS = "kubernetes.io/tls"
MAX_SECRET_SIZE = 1024 * 1024
MAX_ANNOTATIONS_SIZE = 256 * 1024
OTHER_WRITER_ANNOTATION = "standin.certd.test/other-writer"

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_CLIENT_METADATA = ("name", "generateName", "namespace", "labels", "annotations", "finalizers", "ownerReferences")
_SECRET_FIELDS = ("apiVersion", "kind", "metadata", "type", "data", "stringData", "immutable")
_MERGE_PATCH = "application/merge-patch+json"
_STRATEGIC_PATCH = "application/strategic-merge-patch+json"


class StandinApiError(Exception):
    """A failure the API answers with a ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the stand-in understood it (the bearer token is never kept)."""

    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    body: Any
    status: int
    user: str | None
    reason: str | None = None


@dataclass
class _Field:
    field: str
    reason: str
    detail: str

    @property
    def message(self) -> str:
        return f"{self.field}: {self.detail}"


@dataclass
class _Rbac:
    rules: dict[str, frozenset[str]] | None = None  # namespace -> verbs; None: everything allowed

    def allows(self, namespace: str, verb: str) -> bool:
        if self.rules is None:
            return True
        return verb in self.rules.get(namespace, frozenset())


@dataclass
class _State:
    token: str
    user: str
    rbac: _Rbac = field(default_factory=_Rbac)
    store: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    revision: int = 100
    conflicts: int = 0
    conflict_data: dict[str, str] | None = None
    tokens: TokenAuthority = field(default_factory=TokenAuthority)
    log: list[RecordedRequest] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _not_found(name: str) -> StandinApiError:
    return StandinApiError(404, "NotFound", f'secrets "{name}" not found', {"name": name, "kind": "secrets"})


def _conflict(name: str) -> StandinApiError:
    return StandinApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on secrets "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        {"name": name, "kind": "secrets"},
    )


def _already_exists(name: str) -> StandinApiError:
    return StandinApiError(409, "AlreadyExists", f'secrets "{name}" already exists', {"name": name, "kind": "secrets"})


def _invalid(name: str, errors: list[_Field]) -> StandinApiError:
    listed = errors[0].message if len(errors) == 1 else "[" + ", ".join(e.message for e in errors) + "]"
    return StandinApiError(
        422,
        "Invalid",
        f'Secret "{name}" is invalid: {listed}',
        {
            "name": name,
            "kind": "Secret",
            "causes": [{"reason": e.reason, "message": e.detail, "field": e.field} for e in errors],
        },
    )


def _bad_request(message: str) -> StandinApiError:
    return StandinApiError(400, "BadRequest", message)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _parse_requirement(text: str) -> Callable[[Mapping[str, str]], bool]:
    """Equality-based label selector terms: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``."""
    text = text.strip()
    for op in ("!=", "==", "="):
        if op in text:
            key, value = (t.strip() for t in text.split(op, 1))
            if op == "!=":
                return lambda labels: labels.get(key) != value
            return lambda labels: labels.get(key) == value
    if text.startswith("!"):
        return lambda labels: text[1:].strip() not in labels
    return lambda labels: text in labels


def _check_qualified_key(where: str, key: str, errors: list[_Field]) -> None:
    prefix, slash, name = key.rpartition("/")
    bad = not name or len(name) > 63 or not _QUALIFIED_NAME.match(name)
    if slash and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        bad = True
    if bad:
        errors.append(
            _Field(
                where,
                "FieldValueInvalid",
                f'Invalid value: "{key}": name part must consist of alphanumeric characters, \'-\', \'_\' or '
                "'.', and must start and end with an alphanumeric character, with an optional DNS subdomain prefix",
            )
        )


class _Api:
    """The API semantics, apart from HTTP: every method returns ``(status, body)`` or raises ``StandinApiError``."""

    def __init__(self, state: _State, server_address: str) -> None:
        self.s = state
        self.server_address = server_address

    # --- discovery -------------------------------------------------------------------------------------------
    def version(self) -> dict[str, Any]:
        return {
            "major": "1",
            "minor": "31",
            "gitVersion": "v1.31.0+certd-standin",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2024-08-13T00:00:00Z",
            "goVersion": "go1.22.5",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    def api_versions(self) -> dict[str, Any]:
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": self.server_address}],
        }

    def api_resources(self) -> dict[str, Any]:
        return {
            "kind": "APIResourceList",
            "groupVersion": "v1",
            "resources": [
                {
                    "name": "secrets",
                    "singularName": "secret",
                    "namespaced": True,
                    "kind": "Secret",
                    "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                }
            ],
        }

    def api_groups(self) -> dict[str, Any]:
        version = {"groupVersion": "authentication.k8s.io/v1", "version": "v1"}
        return {"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [{"name": "authentication.k8s.io", "versions": [version], "preferredVersion": version}]}

    # --- helpers ---------------------------------------------------------------------------------------------
    def _next_rv(self) -> str:
        self.s.revision += 1
        return str(self.s.revision)

    @staticmethod
    def _output(obj: dict[str, Any], *, in_list: bool = False) -> dict[str, Any]:
        out = copy.deepcopy(obj)
        if in_list:
            out.pop("kind", None)
            out.pop("apiVersion", None)
        return out

    def _normalize(self, namespace: str, body: Any, *, url_name: str | None) -> tuple[dict[str, Any], list[str]]:
        """Decode a request body into a stored-shape Secret (no server fields yet) and field warnings."""
        if not isinstance(body, dict):
            raise _bad_request("the body of the request was in an unknown format - accepted media types include: "
                               "application/json, application/yaml, application/vnd.kubernetes.protobuf")
        kind = body.get("kind", "Secret")
        api_version = body.get("apiVersion", "v1")
        if kind != "Secret" or api_version != "v1":
            raise _bad_request(f"the API version in the data ({api_version}) does not match the expected API "
                               f"version (v1)" if api_version != "v1" else
                               f'Secret in version "v1" cannot be handled as a Secret: kind {kind!r} is not Secret')
        warnings = [f'unknown field "{k}"' for k in body if k not in _SECRET_FIELDS]
        meta_in = body.get("metadata") or {}
        if not isinstance(meta_in, dict):
            raise _bad_request('Secret in version "v1" cannot be handled as a Secret: metadata must be an object')
        meta: dict[str, Any] = {k: copy.deepcopy(meta_in[k]) for k in _CLIENT_METADATA if meta_in.get(k)}
        if meta.get("namespace", namespace) != namespace:
            raise _bad_request("the namespace of the provided object does not match the namespace sent on the "
                               "request")
        meta["namespace"] = namespace
        if url_name is not None and meta.get("name", url_name) != url_name:
            raise _bad_request(f"the name of the object ({meta.get('name')}) does not match the name on the URL "
                               f"({url_name})")
        for key in ("resourceVersion", "uid"):
            if meta_in.get(key):
                meta[key] = str(meta_in[key])
        data: dict[str, str] = {}
        for source in ("data", "stringData"):
            values = body.get(source) or {}
            if not isinstance(values, dict):
                raise _bad_request(f'Secret in version "v1" cannot be handled as a Secret: {source} must be an '
                                   "object")
            for key, value in values.items():
                if not isinstance(value, str):
                    raise _bad_request(f'Secret in version "v1" cannot be handled as a Secret: {source}[{key}] '
                                       "must be a string")
                if source == "stringData":
                    data[key] = base64.b64encode(value.encode()).decode()
                    continue
                try:
                    raw = base64.b64decode(value.replace("\n", "").replace("\r", ""), validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise _bad_request(f'Secret in version "v1" cannot be handled as a Secret: illegal base64 '
                                       f"data in data[{key}]") from exc
                data[key] = base64.b64encode(raw).decode()
        obj: dict[str, Any] = {"kind": "Secret", "apiVersion": "v1", "metadata": meta}
        if data:
            obj["data"] = data
        obj["type"] = body.get("type") or "Opaque"
        if body.get("immutable") is not None:
            obj["immutable"] = bool(body["immutable"])
        return obj, warnings

    @staticmethod
    def _validate(obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        meta = obj["metadata"]
        name = meta.get("name", "")
        errors: list[_Field] = []
        if not name:
            errors.append(_Field("metadata.name", "FieldValueRequired", "Required value: name or generateName is "
                                 "required"))
        elif len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
            errors.append(_Field("metadata.name", "FieldValueInvalid", f'Invalid value: "{name}": a lowercase RFC '
                                 "1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                                 "and must start and end with an alphanumeric character"))
        for key, value in (meta.get("labels") or {}).items():
            _check_qualified_key("metadata.labels", key, errors)
            if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
                errors.append(_Field("metadata.labels", "FieldValueInvalid", f'Invalid value: "{value}": a valid '
                                     "label must be an empty string or consist of alphanumeric characters, '-', "
                                     "'_' or '.', and must start and end with an alphanumeric character (at most "
                                     "63 characters)"))
        annotations = meta.get("annotations") or {}
        for key, value in annotations.items():
            _check_qualified_key("metadata.annotations", key, errors)
            if not isinstance(value, str):
                errors.append(_Field("metadata.annotations", "FieldValueInvalid", "Invalid value: annotation values "
                                     "must be strings"))
        if sum(len(k) + len(str(v)) for k, v in annotations.items()) > MAX_ANNOTATIONS_SIZE:
            errors.append(_Field("metadata.annotations", "FieldValueTooLong", "Too long: must have at most 262144 "
                                 "bytes"))
        data = obj.get("data") or {}
        for key in data:
            if not _SECRET_KEY.match(key):
                # Like the apiserver, never echo a Secret's values: only the key is named.
                errors.append(_Field(f"data[{key}]", "FieldValueInvalid", f'Invalid value: "{key}": a valid config '
                                     "key must consist of alphanumeric characters, '-', '_' or '.'"))
        if sum(len(base64.b64decode(v)) for v in data.values()) > MAX_SECRET_SIZE:
            errors.append(_Field("data", "FieldValueTooLong", f"Too long: must have at most {MAX_SECRET_SIZE} bytes"))
        if obj["type"] == SECRET_TLS:
            errors += [_Field(f"data[{k}]", "FieldValueRequired", "Required value") for k in ("tls.crt", "tls.key")
                       if k not in data]
        if old is not None:
            if obj["type"] != old["type"]:
                errors.append(_Field("type", "FieldValueInvalid", f'Invalid value: "{obj["type"]}": field is '
                                     "immutable"))
            if old.get("immutable"):
                if not obj.get("immutable"):
                    errors.append(_Field("immutable", "FieldValueForbidden", "Forbidden: field is immutable when "
                                         "`immutable` is set"))
                if obj.get("data") != old.get("data"):
                    errors.append(_Field("data", "FieldValueForbidden", "Forbidden: field is immutable when "
                                         "`immutable` is set"))
        if errors:
            raise _invalid(name, errors)

    def _other_writer(self, namespace: str, name: str, posted: dict[str, Any] | None) -> None:
        """Simulate a concurrent writer that wins the race: create (POST) or touch (PUT/PATCH) the object."""
        key = (namespace, name)
        current = self.s.store.get(key)
        if current is None:
            assert posted is not None
            current = copy.deepcopy(posted)
            current["metadata"].update(uid=str(uuid.uuid4()), creationTimestamp=_now())
            current["metadata"].pop("generateName", None)
            self.s.store[key] = current
        if self.s.conflict_data:
            current.setdefault("data", {}).update(self.s.conflict_data)
        annotations = current["metadata"].setdefault("annotations", {})
        annotations[OTHER_WRITER_ANNOTATION] = str(int(annotations.get(OTHER_WRITER_ANNOTATION, "0")) + 1)
        current["metadata"]["resourceVersion"] = self._next_rv()

    def _take_conflict(self) -> bool:
        if self.s.conflicts > 0:
            self.s.conflicts -= 1
            return True
        return False

    # --- verbs -----------------------------------------------------------------------------------------------
    def get(self, namespace: str, name: str) -> tuple[int, dict[str, Any]]:
        current = self.s.store.get((namespace, name))
        if current is None:
            raise _not_found(name)
        return 200, self._output(current)

    def list_secrets(self, namespace: str, query: Mapping[str, list[str]]) -> tuple[int, dict[str, Any]]:
        selector = (query.get("labelSelector") or [""])[0]
        requirements = [_parse_requirement(part) for part in selector.split(",") if part.strip()]

        def matches(obj: dict[str, Any]) -> bool:
            labels = obj["metadata"].get("labels") or {}
            return all(req(labels) for req in requirements)

        items = [self._output(o, in_list=True) for (ns, _), o in sorted(self.s.store.items())
                 if ns == namespace and matches(o)]
        return 200, {"kind": "SecretList", "apiVersion": "v1",
                     "metadata": {"resourceVersion": str(self.s.revision)}, "items": items}

    def create(self, namespace: str, body: Any, *, dry_run: bool = False,
               inject: bool = True) -> tuple[int, dict[str, Any], list[str]]:
        obj, warnings = self._normalize(namespace, body, url_name=None)
        meta = obj["metadata"]
        if meta.get("resourceVersion"):
            raise StandinApiError(500, "InternalError", "resourceVersion should not be set on objects to be created")
        meta.pop("uid", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(_secrets.choice("bcdfghjklmnpqrstvwxz2456789")
                                                          for _ in range(5))
        self._validate(obj, None)
        name = meta["name"]
        key = (namespace, name)
        if inject and self._take_conflict():
            self._other_writer(namespace, name, obj)
            raise _already_exists(name)
        if key in self.s.store:
            raise _already_exists(name)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now())
        if dry_run:
            return 201, self._output(obj), warnings
        meta["resourceVersion"] = self._next_rv()
        self.s.store[key] = obj
        return 201, self._output(obj), warnings

    def update(self, namespace: str, name: str, body: Any, *, dry_run: bool = False,
               inject: bool = True) -> tuple[int, dict[str, Any], list[str]]:
        key = (namespace, name)
        current = self.s.store.get(key)
        if current is None:
            raise _not_found(name)
        obj, warnings = self._normalize(namespace, body, url_name=name)
        code, out = self._replace(current, obj, dry_run=dry_run, inject=inject)
        return code, out, warnings

    def patch(self, namespace: str, name: str, content_type: str, body: Any, *, dry_run: bool = False,
              inject: bool = True) -> tuple[int, dict[str, Any], list[str]]:
        if content_type not in (_MERGE_PATCH, _STRATEGIC_PATCH):
            raise StandinApiError(415, "UnsupportedMediaType",
                                  f'the body of the request was in an unknown format - accepted media types '
                                  f'include: {_MERGE_PATCH}, {_STRATEGIC_PATCH} (stand-in; got "{content_type}")')
        if not isinstance(body, dict):
            raise _bad_request("the body of the request was in an unknown format")
        key = (namespace, name)
        current = self.s.store.get(key)
        if current is None:
            raise _not_found(name)
        patched = merge_patch(copy.deepcopy(current), body)
        if patched.get("metadata", {}).get("name") != name:
            raise _invalid(name, [_Field("metadata.name", "FieldValueInvalid", "Invalid value: field is immutable")])
        obj, warnings = self._normalize(namespace, patched, url_name=name)
        code, out = self._replace(current, obj, dry_run=dry_run, inject=inject)
        return code, out, warnings

    def _replace(self, current: dict[str, Any], obj: dict[str, Any], *, dry_run: bool,
                 inject: bool) -> tuple[int, dict[str, Any]]:
        meta, cur_meta = obj["metadata"], current["metadata"]
        name, namespace = cur_meta["name"], cur_meta["namespace"]
        if inject and self._take_conflict():
            self._other_writer(namespace, name, None)
            raise _conflict(name)
        if meta.get("resourceVersion") and meta["resourceVersion"] != cur_meta["resourceVersion"]:
            raise _conflict(name)
        if meta.get("uid") and meta["uid"] != cur_meta["uid"]:
            raise StandinApiError(409, "Conflict", f"Precondition failed: UID in precondition: {meta['uid']}, "
                                  f"UID in object meta: {cur_meta['uid']}", {"name": name, "kind": "secrets"})
        meta.pop("generateName", None)
        meta.update(uid=cur_meta["uid"], creationTimestamp=cur_meta["creationTimestamp"],
                    resourceVersion=cur_meta["resourceVersion"])
        self._validate(obj, current)
        if obj == current or dry_run:  # the apiserver does not write (or bump resourceVersion) for a no-op
            return 200, self._output(obj)
        meta["resourceVersion"] = self._next_rv()
        self.s.store[(namespace, name)] = obj
        return 200, self._output(obj)

    def delete(self, namespace: str, name: str, *, dry_run: bool = False) -> tuple[int, dict[str, Any]]:
        current = self.s.store.get((namespace, name))
        if current is None:
            raise _not_found(name)
        if not dry_run:
            del self.s.store[(namespace, name)]
            self._next_rv()
        return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                     "details": {"name": name, "kind": "secrets", "uid": current["metadata"]["uid"]}}


_SECRETS_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/secrets(?:/(?P<name>[^/]+))?/?$")
_PUBLIC_PATHS = {"/version", "/healthz", "/livez", "/readyz"}
_UNDECODABLE = object()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "certd-kubernetes-standin"
    timeout = 30
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _reply(self, code: int, body: Any, *, content_type: str = "application/json",
               warnings: Iterable[str] = ()) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Audit-Id", str(uuid.uuid4()))
        for w in warnings:
            self.send_header("Warning", f'299 - "{w}"')
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _handle(self) -> None:
        state = self.server.state
        api = self.server.api
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip() or None
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = _UNDECODABLE
        user: str | None = None
        code: int
        reply: Any
        warnings: list[str] = []
        try:
            with state.lock:
                user = self._authenticate(state, path)
                code, reply, warnings = self._route(api, state, user, path, query, content_type, body)
        except StandinApiError as exc:
            code, reply = exc.code, exc.status()
        except Exception as exc:  # a stand-in bug must show up as a 500 Status, not a dropped connection
            code, reply = 500, StandinApiError(500, "InternalError", f"stand-in error: {exc!r}").status()
        if path == TOKENREVIEWS_PATH and isinstance(body, dict) and isinstance(body.get("spec"), dict):
            body = {**body, "spec": {**body["spec"], "token": "[redacted]"}}  # a JWT is a credential
        with state.lock:
            state.log.append(RecordedRequest(self.command, path, query, content_type, body, code, user,
                                             reply.get("reason") if isinstance(reply, dict) else None))
        if isinstance(reply, bytes):
            self._reply(code, reply, content_type="text/plain; charset=utf-8")
        else:
            self._reply(code, reply, warnings=warnings)

    @staticmethod
    def _authenticate_header(header: str | None, state: _State) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        return _secrets.compare_digest(header[len("Bearer "):].strip().encode(), state.token.encode())

    def _authenticate(self, state: _State, path: str) -> str | None:
        header = self.headers.get("Authorization")
        if self._authenticate_header(header, state):
            return state.user
        if path == TOKENREVIEWS_PATH and header and header.startswith("Bearer "):
            sa = state.tokens.live(header[len("Bearer "):].strip())
            if sa is not None:  # authenticated as the service account; authorization is the route's business
                return sa.username
        if path in _PUBLIC_PATHS:
            return None
        raise StandinApiError(401, "Unauthorized", "Unauthorized")

    def _route(self, api: _Api, state: _State, user: str | None, path: str, query: dict[str, list[str]],
               content_type: str | None, body: Any) -> tuple[int, Any, list[str]]:
        method = self.command
        if method == "GET":
            if path == "/version":
                return 200, api.version(), []
            if path in ("/healthz", "/livez", "/readyz"):
                return 200, b"ok", []
            if path == "/api":
                return 200, api.api_versions(), []
            if path == "/api/v1":
                return 200, api.api_resources(), []
            if path == "/apis":
                return 200, api.api_groups(), []
        if path == TOKENREVIEWS_PATH:
            return self._token_review(state, user, body)
        m = _SECRETS_PATH.match(path)
        if m is None:
            raise StandinApiError(404, "NotFound", "the server could not find the requested resource", {})
        namespace, name = m["ns"], m["name"]
        verb = {
            ("GET", False): "list", ("POST", False): "create",
            ("GET", True): "get", ("PUT", True): "update", ("PATCH", True): "patch", ("DELETE", True): "delete",
        }.get((method, name is not None))
        if verb is None:
            raise StandinApiError(405, "MethodNotAllowed", f"the server does not allow this method on the requested "
                                  f"resource ({method})", {})
        if not state.rbac.allows(namespace, verb):
            target = f'secrets "{name}"' if name else "secrets"
            details: dict[str, Any] = {"kind": "secrets"}
            if name:
                details["name"] = name
            raise StandinApiError(403, "Forbidden", f'{target} is forbidden: User "{user}" cannot {verb} resource '
                                  f'"secrets" in API group "" in the namespace "{namespace}"', details)
        if body is _UNDECODABLE:  # decoded only now: authorization comes before the body is looked at
            raise _bad_request("the body of the request could not be decoded as JSON")
        dry_run = query.get("dryRun") == ["All"]
        if verb == "list":
            code, out = api.list_secrets(namespace, query)
            return code, out, []
        if verb == "get":
            assert name is not None
            code, out = api.get(namespace, name)
            return code, out, []
        if verb == "create":
            return api.create(namespace, body, dry_run=dry_run)
        assert name is not None
        if verb == "update":
            return api.update(namespace, name, body, dry_run=dry_run)
        if verb == "patch":
            return api.patch(namespace, name, content_type or "", body, dry_run=dry_run)
        code, out = api.delete(namespace, name, dry_run=dry_run)
        return code, out, []

    def _token_review(self, state: _State, user: str | None, body: Any) -> tuple[int, Any, list[str]]:
        if self.command != "POST":
            raise StandinApiError(405, "MethodNotAllowed", f"the server does not allow this method on the requested "
                                  f"resource ({self.command})", {})
        if user != state.user:
            raise StandinApiError(403, "Forbidden", f'tokenreviews.authentication.k8s.io is forbidden: User "{user}" '
                                  'cannot create resource "tokenreviews" in API group "authentication.k8s.io" at the '
                                  "cluster scope", {"group": "authentication.k8s.io", "kind": "tokenreviews"})
        try:
            return 201, state.tokens.review(None if body is _UNDECODABLE else body), []
        except ValueError as exc:
            raise _bad_request(str(exc)) from None

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext, state: _State) -> None:
        super().__init__(address, _Handler)
        self.context = context
        self.state = state
        self.api = _Api(state, f"{address[0]}:{self.server_address[1]}")
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()

    def finish_request(self, request: Any, client_address: Any) -> None:
        # TLS is set up here, in the connection's own thread, so a slow or failing handshake
        # never blocks the accept loop.
        request.settimeout(_Handler.timeout)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        with self.conn_lock:
            self.connections.add(tls)
        try:
            super().finish_request(tls, client_address)
        except (ssl.SSLError, OSError):
            pass
        finally:
            with self.conn_lock:
                self.connections.discard(tls)
            with contextlib.suppress(OSError):
                tls.close()

    def close_connections(self) -> None:
        with self.conn_lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class KubernetesStandin:
    """The server plus the knobs tests turn; start it with ``start()`` or as a context manager."""

    def __init__(self, *, token: str | None = None, user: str = "system:serviceaccount:certd:certd",
                 namespaces: Iterable[str] | None = None, host: str = "127.0.0.1") -> None:
        self._state = _State(token=token or _secrets.token_urlsafe(32), user=user)
        if namespaces is not None:
            self.allow_namespaces(*namespaces)
        self._host = host
        self._dir = Path(tempfile.mkdtemp(prefix="certd-k8s-standin-"))
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.ca_bundle_path = self._dir / "ca.pem"

    # --- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> KubernetesStandin:
        ca = make_ca("certd kubernetes stand-in CA")
        server_cert = issue_server_cert(ca, dns_names=("localhost", "kubernetes.default.svc"), ips=(self._host,))
        write_pem(self.ca_bundle_path, ca.cert_pem)
        cert_path = write_pem(self._dir / "apiserver.pem", server_cert.cert_pem)
        key_path = write_pem(self._dir / "apiserver-key.pem", server_cert.key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert_path, key_path)
        self._server = _Server((self._host, 0), context, self._state)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="k8s-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop open keep-alive connections, wait for handler threads, remove the temp files."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> KubernetesStandin:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what tests read ---------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("stand-in not started")
        return f"https://{self._host}:{self._server.server_address[1]}"

    @property
    def token(self) -> str:
        return self._state.token

    @property
    def user(self) -> str:
        return self._state.user

    @property
    def secrets(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Stored Secrets by ``(namespace, name)``, as the API would return them (deep copies)."""
        with self._state.lock:
            return copy.deepcopy(self._state.store)

    def secret_data(self, namespace: str, name: str) -> dict[str, bytes]:
        """The decoded ``data`` of one stored Secret; ``KeyError`` if there is none."""
        with self._state.lock:
            obj = self._state.store[(namespace, name)]
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._state.lock:
            return list(self._state.log)

    def clear_requests(self) -> None:
        with self._state.lock:
            self._state.log.clear()

    # --- what tests change -------------------------------------------------------------------------------------
    def inject_conflicts(self, n: int, *, other_data: Mapping[str, bytes] | None = None) -> None:
        """The next ``n`` writes lose a race: someone else writes first (bumping resourceVersion, or creating the
        object from the POSTed body) and the request answers 409 (``Conflict``, or ``AlreadyExists`` for a POST).

        The other writer always sets the annotation ``OTHER_WRITER_ANNOTATION`` (a count), and also these data
        keys when ``other_data`` is given, so a test can tell whether its client re-read before writing again.
        """
        with self._state.lock:
            self._state.conflicts = n
            self._state.conflict_data = (
                None if other_data is None else {k: base64.b64encode(v).decode() for k, v in other_data.items()}
            )

    @property
    def pending_conflicts(self) -> int:
        with self._state.lock:
            return self._state.conflicts

    def allow_namespaces(self, *namespaces: str, verbs: Iterable[str] = ALL_VERBS) -> None:
        """Replace the RBAC allow list: only these namespaces (and verbs) are allowed; others answer 403."""
        allowed = frozenset(verbs)
        unknown = allowed - ALL_VERBS
        if unknown:
            raise ValueError(f"unknown verbs: {sorted(unknown)}")
        with self._state.lock:
            self._state.rbac.rules = {ns: allowed for ns in namespaces}

    def allow_all_namespaces(self) -> None:
        with self._state.lock:
            self._state.rbac.rules = None

    def service_account_token(self, namespace: str, name: str, *, uid: str | None = None,
                              audiences: Iterable[str] = (API_AUDIENCE,),
                              lifetime: timedelta = timedelta(hours=1)) -> str:
        """A signed service account JWT (projected format) that TokenReviews authenticate until it expires."""
        return self._state.tokens.mint(namespace, name, uid=uid, audiences=tuple(audiences), lifetime=lifetime)

    def revoke_service_account_token(self, token: str) -> None:
        """From now on TokenReviews answer this token as invalidated (as after deleting its service account)."""
        self._state.tokens.revoke(token)

    def create_secret(self, namespace: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Seed a Secret as another client would create it (validated, no auth, no injected conflict)."""
        with self._state.lock:
            api = _Api(self._state, "")
            _, out, _ = api.create(namespace, copy.deepcopy(dict(obj)), inject=False)
            return out

    def kubeconfig(self, path: Path | str, *, token: str | None = None, namespace: str = "default",
                   context: str = "certd-standin", embed_ca: bool = False) -> Path:
        """Write a kubeconfig (JSON, which is valid YAML) pointing at the stand-in with its CA and a token."""
        cluster: dict[str, Any] = {"server": self.url}
        if embed_ca:
            cluster["certificate-authority-data"] = base64.b64encode(self.ca_bundle_path.read_bytes()).decode()
        else:
            cluster["certificate-authority"] = str(self.ca_bundle_path)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": cluster}],
            "users": [{"name": context, "user": {"token": self.token if token is None else token}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}],
            "current-context": context,
            "preferences": {},
        }
        path = Path(path)
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)
        return path
