"""A HashiCorp Vault stand-in: a real HTTP(S) server for the part of Vault's API certd uses.

certd's Vault issuer is tested against a real OpenBao (``tests/servers/openbao.py``);
this stand-in remains only for what a real server cannot be made to do on demand
(injected 429/5xx, slow answers: see ``tests/test_issuer_vault_faults.py``). It
is written from Vault's API documentation (``api-docs/system/health``,
``api-docs/auth/{approle,kubernetes,token}``, ``api-docs/secret/pki``) and, where
the docs are vague, from what Vault's handlers actually answer (the messages
below are Vault's own strings) -- never from certd's code, so that certd is
tested against Vault's behaviour and not against its own assumptions.

Deliberate shape of the model:

* one namespace (root unless ``namespace=`` is given); a request for any other
  namespace gets Vault's 404 "no handler for route";
* every authenticated call needs a live token (403 ``permission denied``
  otherwise); PKI calls also need a token carrying the ``pki`` or ``root`` policy;
* one PKI mount with a two-level CA (root + intermediate, the intermediate is the
  default issuer), roles enforced like Vault's ``ValidateNames`` and
  ``GetCertificateNotAfter`` (a ``ttl`` above ``max_ttl`` is *capped with a
  warning*, which is what Vault does, although the parameter docs say "cannot be
  greater than");
* sealed: every call but ``sys/health`` answers 503 ``Vault is sealed``.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import ipaddress
import json
import re
import secrets
import shutil
import ssl
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["PkiRole", "Request", "VaultError", "VaultStandin", "go_duration", "parse_vault_duration"]

SYSTEM_TTL = 768 * 3600  # Vault's default and max lease TTL when a mount is not tuned (32 days)
_HOSTNAME = re.compile(r"^(\*\.)?(([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9\-]*[a-zA-Z0-9])\.)*"
                       r"([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9\-]*[a-zA-Z0-9])\.?$")
_LABEL = r"([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9\-]*[a-zA-Z0-9])"
_LEFT_WILD = re.compile(rf"^(\*|\*{_LABEL}|{_LABEL}\*|{_LABEL}\*{_LABEL})$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h|d)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}


class VaultError(Exception):
    """An error response: ``status`` and the ``errors`` list of Vault's JSON body."""

    def __init__(self, status: int, *errors: str) -> None:
        super().__init__(", ".join(errors))
        self.status = status
        self.errors = list(errors)


def parse_vault_duration(value: Any) -> int:
    """Seconds from a Vault duration field: an integer, ``"3600"``, or ``"1h30m"``/``"90s"``/``"2d"``."""
    if value is None or value == "":
        return 0
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    if not re.fullmatch(r"(\d+(\.\d+)?(ns|us|ms|s|m|h|d))+", text):
        raise VaultError(400, f'time: invalid duration "{text}"')
    return int(sum(float(n) * _UNIT[u] for n, u in _DURATION_PART.findall(text)))


def go_duration(seconds: int) -> str:
    """Go's ``time.Duration.String()`` for whole seconds (``768h0m0s``, ``1m30s``, ``5s``)."""
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m}m{s}s" if h else f"{m}m{s}s" if m else f"{s}s"


def _colon_hex(n: int) -> str:
    """Vault's serial format: big-endian minimal bytes, lowercase, colon-separated."""
    return ":".join(f"{b:02x}" for b in n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big"))


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def _split(value: Any) -> list[str]:
    """Vault's comma-separated list fields also accept JSON arrays."""
    if value is None or value == "":
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(v).strip() for v in items if str(v).strip()]


@dataclass
class PkiRole:
    """A PKI role; field names and defaults as in ``POST /pki/roles/:name``."""

    name: str
    allowed_domains: list[str] = field(default_factory=list)
    allow_bare_domains: bool = False
    allow_subdomains: bool = False
    allow_glob_domains: bool = False
    allow_any_name: bool = False
    allow_localhost: bool = True
    allow_ip_sans: bool = True
    allow_wildcard_certificates: bool = True
    enforce_hostnames: bool = True
    ttl: int = 0
    max_ttl: int = 0
    key_type: str = "rsa"
    key_bits: int = 0
    require_cn: bool = True
    use_csr_common_name: bool = True
    use_csr_sans: bool = True
    server_flag: bool = True
    client_flag: bool = True
    issuer_ref: str = "default"


@dataclass
class Request:
    """One request the stand-in received (for asserting call counts and headers)."""

    method: str
    path: str
    namespace: str
    token: str | None


@dataclass
class _Token:
    id: str
    policies: list[str]
    ttl: int
    renewable: bool
    path: str
    meta: dict[str, str] | None = None
    created: float = field(default_factory=time.time)
    expires: float | None = None
    max_expires: float | None = None
    accessor: str = field(default_factory=lambda: secrets.token_hex(12))


@dataclass
class _Issuer:
    id: str
    name: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: list[x509.Certificate]


@dataclass
class _Leaf:
    cert: x509.Certificate
    revoked_at: float | None = None


def _make_cert(cn: str, public_key: Any, issuer: tuple[x509.Name, Any] | None,
               lifetime: dt.timedelta | dt.datetime, *,
               ca: bool = False, path_len: int | None = None, sans: list[x509.GeneralName] | None = None,
               ekus: list[x509.ObjectIdentifier] | None = None, signing_key: Any = None) -> x509.Certificate:
    """One builder for the CAs, the listener certificate and the leaves (``issuer=None``: self-signed)."""
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    issuer_name, issuer_key = issuer if issuer else (name, signing_key)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(public_key)
         .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(seconds=30))
         .not_valid_after(now + lifetime if isinstance(lifetime, dt.timedelta) else lifetime)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                        critical=False))
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=path_len), critical=True)
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), True)
    else:  # the role's default key_usage: DigitalSignature, KeyAgreement, KeyEncipherment
        b = b.add_extension(x509.KeyUsage(True, False, True, False, True, False, False, False, False), True)
    if ekus:
        b = b.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=not cn)
    return b.sign(issuer_key, hashes.SHA256())


class VaultStandin:
    """The server plus test controls; ``start()``/``stop()`` or use it as a context manager."""

    def __init__(self, *, tls: bool = True, namespace: str | None = None, pki_mount: str = "pki",
                 approle_mount: str = "approle", kubernetes_mount: str = "kubernetes",
                 default_lease_ttl: int = SYSTEM_TTL, max_lease_ttl: int = SYSTEM_TTL) -> None:
        self.tls, self.namespace = tls, (namespace or "").strip("/")
        self.pki_mount, self.approle_mount = pki_mount.strip("/"), approle_mount.strip("/")
        self.kubernetes_mount = kubernetes_mount.strip("/")
        self.default_lease_ttl, self.max_lease_ttl = default_lease_ttl, max_lease_ttl
        self.requests: list[Request] = []
        self.sealed = self.standby = False
        self.delay = 0.0  # seconds every request waits before it is answered (client timeouts)
        self._lock = threading.RLock()
        self._roles: dict[str, PkiRole] = {}
        self._tokens: dict[str, _Token] = {}
        self._approles: dict[str, dict[str, Any]] = {}
        self._k8s_roles: dict[str, dict[str, Any]] = {}
        self._leaves: dict[str, _Leaf] = {}
        self._faults: list[tuple[int, list[str]]] = []
        self._dir = Path(tempfile.mkdtemp(prefix="vault-standin-"))
        root_key, int_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        root = _make_cert("Standin Vault Root CA", root_key.public_key(), None, dt.timedelta(days=3650),
                          ca=True, signing_key=root_key)
        inter = _make_cert("Standin Vault Intermediate CA", int_key.public_key(), (root.subject, root_key),
                           dt.timedelta(days=1825), ca=True, path_len=0)
        self.root_issuer = _Issuer(str(uuid.uuid4()), "root", root, root_key, [root])
        self.intermediate_issuer = _Issuer(str(uuid.uuid4()), "intermediate", inter, int_key, [inter, root])
        self.default_issuer = self.intermediate_issuer
        self.ca_bundle_path = self._dir / "listener-ca.pem"
        self._ssl = self._listener_tls() if tls else None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def _listener_tls(self) -> ssl.SSLContext:
        """Vault's own TLS: a CA of its own (not the PKI root) and a certificate for 127.0.0.1/localhost."""
        ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca = _make_cert("Standin Vault Listener CA", ca_key.public_key(), None, dt.timedelta(days=30), ca=True,
                        signing_key=ca_key)
        cert = _make_cert("vault.standin", key.public_key(), (ca.subject, ca_key), dt.timedelta(days=30),
                          sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                          ekus=[ExtendedKeyUsageOID.SERVER_AUTH])
        self.ca_bundle_path.write_text(_pem(ca))
        (self._dir / "listener.pem").write_text(_pem(cert))
        (self._dir / "listener-key.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self._dir / "listener.pem", self._dir / "listener-key.pem")
        return ctx

    def start(self) -> VaultStandin:
        self._server = _Server(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="vault-standin",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> VaultStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the stand-in first"
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self._server.server_address[1]}"

    # ------------------------------------------------------------ test controls
    def root_pem(self) -> str:
        """The PKI root certificate: what certd pins as the issuer's ``roots``."""
        return _pem(self.root_issuer.cert)

    def intermediate_pem(self) -> str:
        return _pem(self.intermediate_issuer.cert)

    def add_role(self, name: str, **settings: Any) -> PkiRole:
        """Create or replace a PKI role (``PkiRole`` fields; ``ttl``/``max_ttl`` as Vault durations)."""
        for key in ("ttl", "max_ttl"):
            if key in settings:
                settings[key] = parse_vault_duration(settings[key])
        if "allowed_domains" in settings:
            settings["allowed_domains"] = _split(settings["allowed_domains"])
        with self._lock:
            role = self._roles[name] = PkiRole(name=name, **settings)
        return role

    def add_approle(self, role_id: str, secret_id: str, token_ttl: Any = 3600, *,
                    policies: tuple[str, ...] = ("default", "pki"), role_name: str = "certd",
                    token_max_ttl: Any = 0, renewable: bool = True) -> None:
        with self._lock:
            self._approles[role_id] = {
                "secret_id": secret_id, "ttl": parse_vault_duration(token_ttl), "policies": list(policies),
                "name": role_name, "max_ttl": parse_vault_duration(token_max_ttl), "renewable": renewable}

    def add_kubernetes_role(self, role: str, jwt: str, token_ttl: Any = 3600, *,
                            policies: tuple[str, ...] = ("default", "pki")) -> None:
        """Accept ``jwt`` for ``role`` (instead of the TokenReview the real plugin asks Kubernetes for)."""
        with self._lock:
            entry = self._k8s_roles.setdefault(role, {"jwts": set()})
            entry["jwts"].add(jwt)
            entry.update(ttl=parse_vault_duration(token_ttl), policies=list(policies))

    def create_token(self, ttl: Any = 3600, policies: tuple[str, ...] = ("default", "pki"), *,
                     renewable: bool = True, max_ttl: Any = 0) -> str:
        """A service token as ``auth/token/create`` makes it (``ttl`` 0: never expires, like root's)."""
        return self._new_token(parse_vault_duration(ttl), list(policies), renewable, "auth/token/create",
                               None, parse_vault_duration(max_ttl)).id

    def expire_token(self, token: str) -> None:
        with self._lock:
            self._tokens[token].expires = time.time() - 1

    def revoke_token(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def seal(self) -> None:
        self.sealed = True

    def unseal(self) -> None:
        self.sealed = False

    def fail_next(self, status: int, *errors: str, count: int = 1) -> None:
        """Answer the next ``count`` API calls (not ``sys/health``) with this status and errors."""
        with self._lock:
            self._faults.extend([(status, list(errors) or ["injected failure"])] * count)

    @property
    def revoked_serials(self) -> set[str]:
        """Serials (Vault's colon-separated hex) of the revoked certificates."""
        with self._lock:
            return {s for s, leaf in self._leaves.items() if leaf.revoked_at is not None}

    def count(self, method: str, path: str) -> int:
        """How many ``method`` requests reached ``path`` (e.g. ``"/v1/auth/approle/login"``)."""
        return sum(1 for r in list(self.requests) if r.method == method and r.path == path)

    # ------------------------------------------------------------------ dispatch
    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes
               ) -> tuple[int, str, bytes]:
        """Answer one request (headers lower-cased): status, content type, body."""
        parts = urlsplit(raw_path)
        path, query = unquote(parts.path), parse_qs(parts.query, keep_blank_values=True)
        ns = headers.get("x-vault-namespace", "").strip("/")
        ns = "" if ns == "root" else ns
        token = headers.get("x-vault-token") or None
        if token is None and headers.get("authorization", "").lower().startswith("bearer "):
            token = headers["authorization"][7:].strip()
        with self._lock:
            self.requests.append(Request(method, path, ns, token))
        if self.delay:
            time.sleep(self.delay)
        try:
            if not path.startswith("/v1/"):
                raise VaultError(404, "404 page not found")
            rel = path[4:].strip("/")
            if rel == "sys/health" and not ns:  # served in the root namespace only
                return self._health(method, query)
            if self.sealed:
                raise VaultError(503, "Vault is sealed")
            if ns != self.namespace or rel == "sys/health":
                raise VaultError(404, f'no handler for route "{f"{ns}/" if ns else ""}{rel}". '
                                      "route entry not found.")
            with self._lock:
                if self._faults:
                    status, errors = self._faults.pop(0)
                    raise VaultError(status, *errors)
            try:
                data = json.loads(body) if body.strip() else {}
            except ValueError as exc:
                raise VaultError(400, f"failed to parse JSON input: {exc}") from exc
            if not isinstance(data, dict):
                raise VaultError(400, "failed to parse JSON input: not a JSON object")
            with self._lock:
                result = self._route(method, rel, data, token)
            if isinstance(result, tuple):
                return result
            return 200, "application/json", json.dumps(result).encode()
        except VaultError as err:
            return err.status, "application/json", json.dumps({"errors": err.errors}).encode()

    def _health(self, method: str, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        """``sys/health``: 200 active, 429 standby (unless ``standbyok``), 503 sealed; codes overridable."""
        def code(name: str, default: int) -> int:
            return int(query[name][-1]) if name in query else default

        standby_ok = "standbyok" in query and query["standbyok"][-1].lower() in ("", "1", "t", "true")
        if self.sealed:
            status = code("sealedcode", 503)
        elif self.standby and not standby_ok:
            status = code("standbycode", 429)
        else:
            status = code("activecode", 200)
        doc = {"initialized": True, "sealed": self.sealed, "standby": self.sealed or self.standby,
               "performance_standby": False, "replication_performance_mode": "disabled",
               "replication_dr_mode": "disabled", "server_time_utc": int(time.time()),
               "version": "1.17.0", "cluster_name": "vault-cluster-standin", "cluster_id": "standin"}
        return status, "application/json", b"" if method == "HEAD" else json.dumps(doc).encode()

    def _route(self, method: str, rel: str, data: dict[str, Any], token: str | None
               ) -> dict[str, Any] | tuple[int, str, bytes]:
        write, mount = method in ("POST", "PUT"), self.pki_mount + "/"
        if rel == f"auth/{self.approle_mount}/login" and write:
            return self._approle_login(data)
        if rel == f"auth/{self.kubernetes_mount}/login" and write:
            return self._kubernetes_login(data)
        if method == "GET" and rel.startswith(mount):  # the unauthenticated CA reads
            sub = rel[len(mount):]
            if sub == "ca_chain":
                return 200, "application/pem-certificate-chain", "".join(
                    _pem(c) for c in self.default_issuer.chain).encode()
            if sub == "cert/ca_chain":
                chain = [_pem(c) for c in self.default_issuer.chain]
                return self._envelope({"certificate": "".join(chain), "ca_chain": chain, "revocation_time": 0,
                                       "revocation_time_rfc3339": "", "issuer_id": self.default_issuer.id})
            if m := re.fullmatch(r"issuer/([^/]+)/json", sub):
                return self._issuer_doc(self._issuer(m.group(1)))
        tok = self._live_token(token)
        if tok is None:
            raise VaultError(403, "permission denied")
        if rel == "auth/token/lookup-self" and method == "GET":
            return self._envelope(self._token_info(tok))
        if rel == "auth/token/renew-self" and write:
            return self._renew(tok, data)
        if rel.startswith(mount):
            if not {"root", "pki"} & set(tok.policies):
                raise VaultError(403, "permission denied")
            sub = rel[len(mount):]
            if (m := re.fullmatch(r"(?:issuer/([^/]+)/)?(issue|sign)/([^/]+)", sub)) and write:
                return self._issue_or_sign(m.group(3), data, m.group(1), sign=m.group(2) == "sign")
            if sub == "revoke" and write:
                return self._revoke(data)
            if (m := re.fullmatch(r"issuer/([^/]+)", sub)) and method == "GET":
                return self._issuer_doc(self._issuer(m.group(1)))
            if re.fullmatch(r"(?:issuer/[^/]+/)?(issue|sign)/[^/]+|revoke", sub):
                raise VaultError(405, "unsupported operation")
        raise VaultError(404, f'no handler for route "{rel}". route entry not found.')

    # ---------------------------------------------------------------------- auth
    def _new_token(self, ttl: int, policies: list[str], renewable: bool, path: str,
                   meta: dict[str, str] | None, max_ttl: int = 0) -> _Token:
        tok = _Token("hvs." + secrets.token_urlsafe(18), sorted(set(policies)), ttl, renewable, path, meta)
        if ttl:
            tok.expires = tok.created + ttl
            tok.max_expires = tok.created + (max_ttl or self.max_lease_ttl)
        with self._lock:
            self._tokens[tok.id] = tok
        return tok

    def _live_token(self, token: str | None) -> _Token | None:
        tok = self._tokens.get(token or "")
        return None if tok is None or (tok.expires is not None and tok.expires <= time.time()) else tok

    @staticmethod
    def _remaining(tok: _Token) -> int:
        return 0 if tok.expires is None else max(0, round(tok.expires - time.time()))

    def _auth_block(self, tok: _Token) -> dict[str, Any]:
        return {"client_token": tok.id, "accessor": tok.accessor, "policies": tok.policies,
                "token_policies": tok.policies, "metadata": tok.meta, "lease_duration": self._remaining(tok),
                "renewable": tok.renewable, "entity_id": "", "token_type": "service", "orphan": True,
                "mfa_requirement": None, "num_uses": 0}

    def _approle_login(self, data: dict[str, Any]) -> dict[str, Any]:
        role_id, secret_id = str(data.get("role_id", "")), str(data.get("secret_id", ""))
        if not role_id:
            raise VaultError(400, "missing role_id")
        role = self._approles.get(role_id)
        if role is None or not secret_id or not secrets.compare_digest(role["secret_id"], secret_id):
            raise VaultError(400, "invalid role or secret ID")  # 400, not 403: that is what Vault answers
        tok = self._new_token(role["ttl"], role["policies"], role["renewable"],
                              f"auth/{self.approle_mount}/login", {"role_name": role["name"]}, role["max_ttl"])
        return self._envelope(None, auth=self._auth_block(tok))

    def _kubernetes_login(self, data: dict[str, Any]) -> dict[str, Any]:
        role_name, jwt = str(data.get("role", "")), str(data.get("jwt", ""))
        if not role_name or not jwt:
            raise VaultError(400, f"missing {'role' if not role_name else 'jwt'}")
        role = self._k8s_roles.get(role_name)
        if role is None:
            raise VaultError(400, f'invalid role name "{role_name}"')
        if jwt not in role["jwts"]:
            raise VaultError(403, "permission denied")
        tok = self._new_token(role["ttl"], role["policies"], True, f"auth/{self.kubernetes_mount}/login",
                              {"role": role_name, "service_account_name": "certd"})
        return self._envelope(None, auth=self._auth_block(tok))

    def _token_info(self, tok: _Token) -> dict[str, Any]:
        return {"accessor": tok.accessor, "creation_time": int(tok.created), "creation_ttl": tok.ttl,
                "display_name": tok.path.replace("/", "-"), "entity_id": "",
                "expire_time": _rfc3339(tok.expires) if tok.expires else None, "explicit_max_ttl": 0,
                "id": tok.id, "issue_time": _rfc3339(tok.created), "meta": tok.meta, "num_uses": 0,
                "orphan": True, "path": tok.path, "policies": tok.policies, "renewable": tok.renewable,
                "ttl": self._remaining(tok), "type": "service"}

    def _renew(self, tok: _Token, data: dict[str, Any]) -> dict[str, Any]:
        if not tok.renewable or tok.expires is None:
            raise VaultError(400, "lease is not renewable")
        now = time.time()
        increment = parse_vault_duration(data.get("increment")) or tok.ttl
        tok.expires = min(now + increment, tok.max_expires or now + increment)
        return self._envelope(None, auth=self._auth_block(tok))

    # ----------------------------------------------------------------------- pki
    def _issuer(self, ref: str) -> _Issuer:
        if ref in ("", "default"):
            return self.default_issuer
        for iss in (self.root_issuer, self.intermediate_issuer):
            if ref in (iss.id, iss.name):
                return iss
        raise VaultError(400, f"unable to find PKI issuer for reference: {ref}")

    def _issuer_doc(self, iss: _Issuer) -> dict[str, Any]:
        return self._envelope({"certificate": _pem(iss.cert), "ca_chain": [_pem(c) for c in iss.chain],
                               "issuer_id": iss.id, "issuer_name": iss.name, "key_id": "",
                               "leaf_not_after_behavior": "err", "revoked": False})

    def _issue_or_sign(self, role_name: str, data: dict[str, Any], issuer_ref: str | None, *, sign: bool
                       ) -> dict[str, Any]:
        role = self._roles.get(role_name)
        if role is None:
            raise VaultError(400, f"unknown role: {role_name}")
        if not sign and role.key_type == "any":
            raise VaultError(400, 'role key type "any" not allowed for issuing certificates, only signing')
        issuer = self._issuer(issuer_ref if issuer_ref is not None else role.issuer_ref)
        csr = self._csr(role, data) if sign else None
        cn, dns, ips = self._names(role, data, csr)
        not_after, warnings = self._not_after(role, data, issuer)
        key = None if csr is not None else self._generate_key(role)
        public_key = csr.public_key() if csr is not None else key.public_key()  # type: ignore[union-attr]
        ekus = [oid for flag, oid in ((role.server_flag, ExtendedKeyUsageOID.SERVER_AUTH),
                                      (role.client_flag, ExtendedKeyUsageOID.CLIENT_AUTH)) if flag]
        cert = _make_cert(cn, public_key, (issuer.cert.subject, issuer.key), not_after, ekus=ekus,
                          sans=[x509.DNSName(n) for n in dns] + [x509.IPAddress(ip) for ip in ips])
        serial = _colon_hex(cert.serial_number)
        self._leaves[serial] = _Leaf(cert)
        chain = [c for c in issuer.chain if not (data.get("remove_roots_from_chain") and c.subject == c.issuer)]
        out: dict[str, Any] = {"certificate": _pem(cert), "issuing_ca": _pem(issuer.cert),
                               "ca_chain": [_pem(c) for c in chain], "serial_number": serial,
                               "expiration": int(cert.not_valid_after_utc.timestamp())}
        if key is not None:
            pkcs8 = data.get("private_key_format") == "pkcs8" or isinstance(key, ed25519.Ed25519PrivateKey)
            fmt = serialization.PrivateFormat.PKCS8 if pkcs8 else serialization.PrivateFormat.TraditionalOpenSSL
            out["private_key"] = key.private_bytes(serialization.Encoding.PEM, fmt,
                                                   serialization.NoEncryption()).decode()
            out["private_key_type"] = role.key_type
        return self._envelope(out, warnings=warnings or None)

    @staticmethod
    def _csr(role: PkiRole, data: dict[str, Any]) -> x509.CertificateSigningRequest:
        """Parse the CSR and apply the role's ``key_type``/``key_bits`` rules, as ``signCert`` does."""
        text = str(data.get("csr", ""))
        if not text:
            raise VaultError(400, '"csr" is empty')
        if "-----BEGIN" not in text:
            raise VaultError(400, "csr contains no data")
        try:
            csr = x509.load_pem_x509_csr(text.encode())
            pub = csr.public_key()
        except ValueError as exc:
            raise VaultError(400, f"certificate request could not be parsed: {exc}") from exc
        kinds = ((rsa.RSAPublicKey, "rsa"), (ec.EllipticCurvePublicKey, "ec"), (ed25519.Ed25519PublicKey, "ed25519"))
        kind = next((name for cls, name in kinds if isinstance(pub, cls)), None)
        if kind is None:
            raise VaultError(400, "Unknown key type in CSR")
        if role.key_type != "any" and kind != role.key_type:
            raise VaultError(400, f"role requires keys of type {role.key_type}")
        bits = pub.key_size if isinstance(pub, rsa.RSAPublicKey | ec.EllipticCurvePublicKey) else 0
        if role.key_type == "any":
            minimum = 224 if kind == "ec" else 2048
        else:
            minimum = role.key_bits or {"rsa": 2048, "ec": 256}.get(kind, 0)
        if kind in ("rsa", "ec") and bits < minimum:
            raise VaultError(400, f"role requires a minimum of a {minimum}-bit key, but CSR's key is {bits} bits")
        if not csr.is_signature_valid:
            raise VaultError(400, "certificate request could not be parsed: signature invalid")
        return csr

    def _names(self, role: PkiRole, data: dict[str, Any], csr: x509.CertificateSigningRequest | None
               ) -> tuple[str, list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
        """``GenerateCreationBundle``'s name handling (DNS and IP SANs; e-mail SANs are left out)."""
        cn, sans = "", None
        if csr is not None:
            try:
                sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            except x509.ExtensionNotFound:
                sans = None
            attrs = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            cn = str(attrs[0].value) if attrs and role.use_csr_common_name else ""
        if not cn:
            cn = str(data.get("common_name", "") or "")
            if not cn and role.require_cn:
                raise VaultError(400, 'the common_name field is required, or must be provided in a CSR with '
                                      '"use_csr_common_name" set to true, unless "require_cn" is set to false')
        from_csr = csr is not None and role.use_csr_sans
        dns: list[str] = list(sans.get_values_for_type(x509.DNSName)) if from_csr and sans else []
        if cn and not data.get("exclude_cn_from_sans") and _HOSTNAME.match(cn):
            dns.append(cn)
        if not from_csr:
            dns += [n for n in sorted(set(_split(data.get("alt_names")))) if _HOSTNAME.match(n)]
        if cn and self._bad_name(role, [cn]):
            raise VaultError(400, f"common name {cn} not allowed by this role")
        if bad := self._bad_name(role, dns):
            raise VaultError(400, f"subject alternate name {bad} not allowed by this role")
        ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        if from_csr:
            ips = list(sans.get_values_for_type(x509.IPAddress)) if sans else []
            if ips and not role.allow_ip_sans:
                raise VaultError(400, "IP Subject Alternative Names are not allowed in this role, "
                                      "but was provided some via CSR")
        else:
            wanted = _split(data.get("ip_sans"))
            if wanted and not role.allow_ip_sans:
                raise VaultError(400, "IP Subject Alternative Names are not allowed in this role, "
                                      f"but was provided [{' '.join(wanted)}]")
            for value in wanted:
                try:
                    ips.append(ipaddress.ip_address(value))
                except ValueError as exc:
                    raise VaultError(400, f'the value "{value}" is not a valid IP address') from exc
        return cn, list(dict.fromkeys(dns)), ips

    @staticmethod
    def _bad_name(role: PkiRole, names: list[str]) -> str:
        """``ValidateNames`` for host names: the first name no rule of the role allows, else ``""``."""
        for name in names:
            reduced, wild_label, is_wild = name, "", "*" in name
            if is_wild:
                if not role.allow_wildcard_certificates or name.count("*") > 1:
                    return name
                wild_label, _, reduced = name.partition(".")
                if "*" in reduced:
                    return name
            if role.enforce_hostnames:
                try:
                    converted = reduced.encode("idna").decode() if reduced else ""
                except UnicodeError:
                    return name
                if (reduced and not _HOSTNAME.match(converted)) or (is_wild and not _LEFT_WILD.match(wild_label)):
                    return name
            if role.allow_any_name:
                continue
            if role.allow_localhost and (reduced in ("localhost", "localdomain") or (
                    role.allow_subdomains and reduced.endswith((".localhost", ".localdomain")))):
                continue
            if not any(
                (role.allow_bare_domains and name.lower() == d.lower())
                or (role.allow_subdomains and (reduced.endswith("." + d) or (is_wild and reduced.lower() == d.lower())))
                or (role.allow_glob_domains and "*" in d and fnmatch.fnmatchcase(name.lower(), d.lower()))
                for d in role.allowed_domains if d
            ):
                return name
        return ""

    def _not_after(self, role: PkiRole, data: dict[str, Any], issuer: _Issuer) -> tuple[dt.datetime, list[str]]:
        """``GetCertificateNotAfter``: request ttl, else role ttl, else mount default; over max_ttl: capped."""
        warnings: list[str] = []
        ttl = parse_vault_duration(data.get("ttl")) or role.ttl or self.default_lease_ttl
        max_ttl = role.max_ttl or self.max_lease_ttl
        if ttl > max_ttl:
            warnings.append(f'TTL "{go_duration(ttl)}" is longer than permitted maxTTL "{go_duration(max_ttl)}", '
                            "so maxTTL is being used")
            ttl = max_ttl
        not_after = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl)  # (the not_after parameter: not modelled)
        if not_after > issuer.cert.not_valid_after_utc:
            raise VaultError(400, f"cannot satisfy request, as TTL would result in notAfter of "
                                  f"{not_after.isoformat()} that is beyond the expiration of the CA certificate "
                                  f"at {issuer.cert.not_valid_after_utc.isoformat()}")
        return not_after, warnings

    @staticmethod
    def _generate_key(role: PkiRole) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey:
        if role.key_type == "ec":
            curves = {224: ec.SECP224R1(), 256: ec.SECP256R1(), 384: ec.SECP384R1(), 521: ec.SECP521R1()}
            return ec.generate_private_key(curves[role.key_bits or 256])
        if role.key_type == "ed25519":
            return ed25519.Ed25519PrivateKey.generate()
        return rsa.generate_private_key(public_exponent=65537, key_size=role.key_bits or 2048)

    def _revoke(self, data: dict[str, Any]) -> dict[str, Any]:
        serial = str(data.get("serial_number", "") or "").lower().replace("-", ":")  # (by certificate: not modelled)
        if not serial:
            raise VaultError(400, "The serial number or certificate to revoke must be provided.")
        leaf = self._leaves.get(serial)
        if leaf is None:
            raise VaultError(400, f"certificate with serial {serial} not found")
        leaf.revoked_at = leaf.revoked_at or time.time()  # revoking twice answers the first revocation
        return self._envelope({"revocation_time": int(leaf.revoked_at),
                               "revocation_time_rfc3339": _rfc3339(leaf.revoked_at), "state": "revoked"})

    @staticmethod
    def _envelope(data: dict[str, Any] | None, *, auth: dict[str, Any] | None = None,
                  warnings: list[str] | None = None) -> dict[str, Any]:
        """Vault's response envelope; PKI roles without ``generate_lease`` give no lease."""
        return {"request_id": str(uuid.uuid4()), "lease_id": "", "renewable": False, "lease_duration": 0,
                "data": data, "wrap_info": None, "warnings": warnings, "auth": auth, "mount_type": ""}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], vault: VaultStandin
                 ) -> None:
        self.vault = vault
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """TLS handshake in the worker thread, so a client rejecting our certificate stalls nothing else."""
        ctx = self.vault._ssl
        if ctx is None:
            super().finish_request(request, client_address)
            return
        try:
            conn = ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            super().finish_request(conn, client_address)
        finally:
            conn.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 30

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, ctype, payload = self.server.vault.handle(self.command, self.path, headers, body)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_LIST = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass
