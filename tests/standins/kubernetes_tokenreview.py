"""TokenReview (``authentication.k8s.io/v1``) for the Kubernetes stand-in, written from the API reference.

Why it exists: OpenBao's (and Vault's) ``kubernetes`` auth method does not trust a service account JWT by
itself; it posts the JWT to ``POST /apis/authentication.k8s.io/v1/tokenreviews`` on the Kubernetes API and
logs in only if the API server says the token is authenticated, as the service account the JWT's claims name.
So a real OpenBao can only be tested with Kubernetes auth against something that answers TokenReviews.

What the reference says, and what is modelled here:

* Request: a ``TokenReview`` whose ``spec.token`` is the bearer token to check and ``spec.audiences`` the
  audiences the caller wants it valid for; no audiences means "the API server's own audiences". An empty token
  is a 400 (the object is invalid), an answer about a token is always 201 with ``status`` filled in.
* ``status.authenticated`` is true only for a live token; ``status.user`` then carries ``username``
  (``system:serviceaccount:<namespace>:<name>``), ``uid`` (the service account's uid), ``groups``
  (``system:serviceaccounts``, ``system:serviceaccounts:<namespace>``, ``system:authenticated``) and ``extra``;
  ``status.audiences`` is the intersection of the wanted audiences and the token's. An unknown, revoked or
  expired token, or one for other audiences, is ``authenticated`` false (omitted, as Go's ``omitempty`` does)
  with an empty ``user`` and ``status.error`` saying why.

Tokens are minted here as real ES256-signed JWTs in the projected service account token format (``iss``,
``sub``, ``aud``, ``exp``, ``iat``, ``nbf``, ``jti`` and the ``kubernetes.io`` claim with ``namespace`` and
``serviceaccount.{name,uid}``), because OpenBao parses those claims before it asks for the review. As with a
real API server, the review -- not the client -- decides: a JWT with the right shape that this authority did
not mint (or has revoked) is not authenticated.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

__all__ = ["API_AUDIENCE", "ISSUER", "TOKENREVIEWS_PATH", "ServiceAccountToken", "TokenAuthority"]

TOKENREVIEWS_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
ISSUER = "https://kubernetes.default.svc.cluster.local"
API_AUDIENCE = ISSUER  # the API server's --api-audiences defaults to its --service-account-issuer
_GROUP_VERSION = "authentication.k8s.io/v1"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class ServiceAccountToken:
    """What the authority knows about one token it minted."""

    namespace: str
    name: str
    uid: str
    audiences: tuple[str, ...]
    expires: datetime
    jti: str

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"


class TokenAuthority:
    """Mints service account JWTs and answers TokenReviews about them (thread-safe)."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._kid = uuid.uuid4().hex[:16]
        self._lock = threading.Lock()
        self._live: dict[str, ServiceAccountToken] = {}
        self._revoked: set[str] = set()

    def mint(self, namespace: str, name: str, *, uid: str | None = None, audiences: tuple[str, ...] = (API_AUDIENCE,),
             lifetime: timedelta = timedelta(hours=1)) -> str:
        now = datetime.now(UTC).replace(microsecond=0)
        sa = ServiceAccountToken(namespace, name, uid or str(uuid.uuid4()), tuple(audiences), now + lifetime,
                                 str(uuid.uuid4()))
        claims = {
            "aud": list(sa.audiences), "exp": int(sa.expires.timestamp()), "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()), "iss": ISSUER, "jti": sa.jti, "sub": sa.username,
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": sa.uid}},
        }
        header = {"alg": "ES256", "kid": self._kid, "typ": "JWT"}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        token = f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
        with self._lock:
            self._live[token] = sa
        return token

    def revoke(self, token: str) -> None:
        """As deleting the service account (or its bound object) does: the token stops authenticating."""
        with self._lock:
            if self._live.pop(token, None) is not None:
                self._revoked.add(token)

    def live(self, token: str) -> ServiceAccountToken | None:
        """The token's service account if it is minted here, not revoked and not expired."""
        with self._lock:
            sa = self._live.get(token)
        return sa if sa is not None and datetime.now(UTC) < sa.expires else None

    def review(self, body: Any) -> dict[str, Any]:
        """The created TokenReview (answered with 201); ``ValueError`` for a request the API refuses (400)."""
        if not isinstance(body, dict):
            raise ValueError("the body of the request was in an unknown format - accepted media types include: "
                             "application/json, application/yaml, application/vnd.kubernetes.protobuf")
        if body.get("kind", "TokenReview") != "TokenReview" or body.get("apiVersion", _GROUP_VERSION) != _GROUP_VERSION:
            raise ValueError(f"TokenReview in version \"v1\" cannot be handled: kind {body.get('kind')!r}, "
                             f"apiVersion {body.get('apiVersion')!r}")
        spec = body.get("spec")
        if not isinstance(spec, dict):
            raise ValueError("TokenReview in version \"v1\" cannot be handled: spec must be an object")
        token, wanted = spec.get("token"), spec.get("audiences")
        if not isinstance(token, str) or not token:
            raise ValueError("token is required for TokenReview in authentication.k8s.io")
        if wanted is not None and not (isinstance(wanted, list) and all(isinstance(a, str) for a in wanted)):
            raise ValueError("TokenReview in version \"v1\" cannot be handled: spec.audiences must be a list of "
                             "strings")
        return {"kind": "TokenReview", "apiVersion": _GROUP_VERSION, "metadata": {"creationTimestamp": None},
                "spec": spec, "status": self._status(token, list(wanted or [API_AUDIENCE]))}

    def _status(self, token: str, wanted: list[str]) -> dict[str, Any]:
        with self._lock:
            sa, revoked = self._live.get(token), token in self._revoked
        if sa is None:
            why = "service account token has been invalidated" if revoked else "token not found"
            return {"user": {}, "error": f"[invalid bearer token, {why}]"}
        if datetime.now(UTC) >= sa.expires:
            return {"user": {}, "error": "[invalid bearer token, service account token has expired]"}
        common = [a for a in wanted if a in sa.audiences]
        if not common:
            return {"user": {}, "error": f"[invalid bearer token, token audiences {json.dumps(list(sa.audiences))} "
                                         f"is invalid for the target audiences {json.dumps(wanted)}]"}
        user = {"username": sa.username, "uid": sa.uid,
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{sa.namespace}", "system:authenticated"],
                "extra": {"authentication.kubernetes.io/credential-id": [f"JTI={sa.jti}"]}}
        return {"authenticated": True, "user": user, "audiences": common}
