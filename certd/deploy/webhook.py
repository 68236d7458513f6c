"""``webhook`` target: tell another system, over HTTPS, that a new certificate is live.

The body is a small JSON event with public facts only (name, serial, SANs,
expiry, fingerprint): a receiver that needs the certificate fetches it
through its own channel; a webhook never carries the key, so a leaked log of
webhook bodies leaks nothing.

It is signed with certd's one scheme (``certd/signing.py``): ``X-Certd-Timestamp``
and ``X-Certd-Signature: v1=<hex HMAC-SHA256(secret, "certd-webhook-v1\\n" +
"POST\\n" + path-with-query + "\\n" + timestamp + "\\n" + body)>``, where the
path is the receiver URL's as requests puts it on the wire. The label differs
from the API's (``certd-api-v1``), so a receiver that shares certd's API
token cannot replay a delivery against certd's own API, and the path binds
the delivery to this receiver. Each attempt is signed afresh, with a fresh
timestamp and its own ``attempt`` number in the body: a receiver that
remembers signatures to refuse replays must not refuse our retry of a
request it answered with a 5xx. ``delivery`` stays the same across attempts
so a receiver can deduplicate.

Retries: 5xx, 429 and connection errors are retried ``retries`` times with
exponential backoff and full jitter (a 429's ``Retry-After`` is honoured up
to a cap); any other 4xx means the request itself is wrong and is not
retried. A TLS verification failure is not retried either: it will not fix
itself within one deploy.
"""

from __future__ import annotations

import email.utils
import json
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC
from urllib.parse import urlsplit, urlunsplit

import requests

from certd.config.model import WebhookDeployConfig
from certd.core.durations import rfc3339
from certd.core.signing import WEBHOOK_LABEL, signed_headers
from certd.deploy.base import DeployContext
from certd.errors import DeployError, tls_reason
from certd.inputs import read_text
from certd.pki.certs import fingerprint

__all__ = ["WebhookTarget", "event_body"]

EVENT = "certificate.deployed"
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
RETRY_AFTER_CAP = 60.0


def _public_url(url: str) -> str:
    """The URL as it may appear in messages: no user info, no query string (either may hold a token)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _wire_path(url: str) -> str:
    """The request target requests will send for ``url`` (its quoting applied): what the receiver sees and checks."""
    try:
        path = requests.Request("POST", url).prepare().path_url
    except (requests.exceptions.RequestException, ValueError):
        parts = urlsplit(url)  # the POST itself will fail and say why; the signature does not matter then
        path = parts.path + (f"?{parts.query}" if parts.query else "")
    return path or "/"


def event_body(ctx: DeployContext, timestamp: int, delivery: str = "", attempt: int = 1) -> bytes:
    """The signed JSON document; only public facts, so it can be logged and stored by the receiver.

    ``delivery`` is the same for every attempt (receivers deduplicate on it); ``attempt`` makes each
    attempt's body, and so its signature, unique even within one second, because receivers that refuse
    replayed signatures (certd's own API does) would otherwise refuse a retry as a replay.
    """
    doc = {
        "event": EVENT,
        "delivery": delivery,
        "attempt": attempt,
        "certificate": ctx.certificate,
        "serial": ctx.serial,
        "names": list(ctx.names),
        "not_after": rfc3339(ctx.leaf.not_valid_after_utc),
        "fingerprint": fingerprint(ctx.leaf),
        "timestamp": timestamp,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), or None if absent or unparseable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


class WebhookTarget:
    """POST a signed ``certificate.deployed`` event, retrying only what a retry can fix."""

    def __init__(
        self,
        name: str,
        config: WebhookDeployConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self._config = config
        self._url = _public_url(config.url)
        self._path = _wire_path(config.url)
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    def _secret(self) -> str:
        """Read on every deploy, so rotating the secret file needs no restart of certd."""
        path = self._config.secret_file
        try:
            secret = read_text(path).strip()
        except FileNotFoundError as exc:
            raise DeployError(f"deploy {self.name}: secret_file {path} does not exist", retryable=False) from exc
        except OSError as exc:
            raise DeployError(f"deploy {self.name}: cannot read secret_file {path}: {exc.strerror}") from exc
        if not secret:
            raise DeployError(f"deploy {self.name}: secret_file {path} is empty", retryable=False)
        return secret

    def _backoff(self, attempt: int) -> float:
        """Full jitter: spreads receivers' load when many certd replicas retry the same endpoint at once."""
        return self._rng.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * (2**attempt)))

    def _post(
        self, session: requests.Session, secret: str, ctx: DeployContext, delivery: str, attempt: int
    ) -> requests.Response:
        now = time.time()
        body = event_body(ctx, int(now), delivery, attempt)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "certd-webhook",
            "X-Certd-Event": EVENT,
            "X-Certd-Delivery": delivery,
            **signed_headers(secret, WEBHOOK_LABEL, "POST", self._path, body, now),
        }
        verify: str | bool = str(self._config.ca_bundle) if self._config.ca_bundle is not None else True
        return session.post(
            self._config.url,
            data=body,
            headers=headers,
            timeout=self._config.timeout.total_seconds(),
            verify=verify,
            allow_redirects=False,  # a redirect would re-send the signed event somewhere we were not told about
        )

    def deploy(self, ctx: DeployContext) -> str:
        secret = self._secret()
        attempts = self._config.retries + 1
        last = "no attempt made"
        delivery = str(uuid.uuid4())
        with requests.Session() as session:
            for attempt in range(attempts):
                wait: float | None = None
                try:
                    response = self._post(session, secret, ctx, delivery, attempt + 1)
                except requests.exceptions.SSLError as exc:
                    against = (f"ca_bundle {self._config.ca_bundle}" if self._config.ca_bundle is not None
                               else "the system trust store")
                    raise DeployError(
                        f"deploy {self.name}: TLS to {self._url} does not verify against {against}: "
                        f"{tls_reason(exc)}"
                    ) from exc
                except requests.exceptions.Timeout:
                    last = f"no answer within {self._config.timeout.total_seconds():g}s"
                except requests.exceptions.ConnectionError:
                    last = "connection failed"
                except requests.exceptions.RequestException as exc:
                    raise DeployError(f"deploy {self.name}: POST {self._url} failed: {type(exc).__name__}",
                                      retryable=False) from exc
                else:
                    status = response.status_code
                    response.close()
                    if 200 <= status < 300:
                        tries = f" after {attempt + 1} attempts" if attempt else ""
                        return f"webhook: POST {self._url} answered {status}{tries}"
                    if status != 429 and status < 500:
                        raise DeployError(
                            f"deploy {self.name}: POST {self._url} answered {status}; not retried (a 4xx means "
                            "the receiver refuses this request: check the URL and the shared secret)",
                            retryable=False,
                        )
                    last = f"answered {status}"
                    if status == 429:
                        after = _retry_after(response.headers.get("Retry-After"), time.time())
                        wait = min(after, RETRY_AFTER_CAP) if after is not None else None
                if attempt + 1 < attempts:
                    self._sleep(wait if wait is not None else self._backoff(attempt))
        raise DeployError(f"deploy {self.name}: POST {self._url} {last} (after {attempts} attempts)")


def build(name: str, config: WebhookDeployConfig) -> WebhookTarget:
    return WebhookTarget(name, config)
