"""The ACME transport: ``acme``'s ``ClientNetwork`` with the bounded retries a busy client needs.

``acme`` retries a ``badNonce`` only once, and a busy client against a CA that rejects nonces (Pebble: 5% by
default) then fails now and then; this network retries ``badNonce`` a bounded number of times, retries 5xx and
connection errors with exponential backoff and jitter, honours a short ``Retry-After`` in place and leaves a long one
to the error (``errors.converted``), so the scheduler waits instead of the worker.

Only the library's public surface is used, so an ``acme`` upgrade cannot silently change what we override: the
retries wrap the public ``get``/``post``, and the response a failure came in (for its status and ``Retry-After``,
which ``messages.Error`` does not carry) is kept by a ``requests`` response hook on the network's ``session``.
The helpers below send what ``ClientV2`` has no method for (``replaces``, POST-as-GET polling, key change)
through that same public ``post``.

Like its parent it is not safe to share between threads (one nonce pool, one ``requests.Session``): the account
module gives every worker thread its own.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import requests
from acme import client as acme_client
from acme import errors as acme_errors
from acme import messages
from josepy.interfaces import JSONDeSerializable

from certd.errors import IssuerUnavailable
from certd.issuers.acme.errors import problem_text, retry_after_seconds

__all__ = ["AcmeNetwork", "AttemptDeadline", "attempt_deadline", "links", "post_as_get", "signed_post"]

# Each ``post`` of the library already tries twice on badNonce, so 7 more calls make at most 16 POSTs in a row:
# at Pebble's 50% fault-test rejection, about 1 failure in 65,000 requests (with 12 POSTs a 100-request batch
# failed about 1 run in 30); bounded, not endless.
_BAD_NONCE_RETRIES = 7
_RETRY_IN_PLACE = 30.0  # seconds: a longer Retry-After goes back to the scheduler with the error


class AttemptDeadline(IssuerUnavailable):
    """The whole attempt (``attempt_timeout``) ran out: a CA that answers slowly, or accepts and never answers."""


# The calling thread's attempt: ``deadline`` (monotonic end, what to say when it passes) and ``last`` (what the
# CA last answered wrongly, or what the attempt waits on). Per thread, not per network: the directory fetch,
# the account lookup and a registration made again use networks of their own, and the deadline bounds them all.
_ATTEMPT = threading.local()


@contextmanager
def attempt_deadline(seconds: float, said: str) -> Iterator[None]:
    """Every ACME request this thread makes inside the block: its timeout shrinks to what is left, and none
    starts (no retry sleeps) once the attempt is spent."""
    _ATTEMPT.deadline, _ATTEMPT.last = (time.monotonic() + seconds, said), None
    try:
        yield
    finally:
        _ATTEMPT.deadline, _ATTEMPT.last = None, None


class AcmeNetwork(acme_client.ClientNetwork):
    """``ClientNetwork`` with bounded retries, and the last response kept for its ``Retry-After``.

    One per thread, like its parent, so ``last_response`` needs no lock.
    """

    def __init__(self, *args: Any, attempts: int, backoff: float, sleep: Callable[[float], None], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._request_timeout = float(kw.get("timeout", 45))  # the parent's default, kept where we can read it
        self._recorder = _Recorder()
        self.session.hooks["response"].append(self._recorder)
        self._attempts = attempts
        self._backoff = backoff
        self._sleep = sleep

    @staticmethod
    def waiting_for(what: str) -> None:
        """What the attempt is waiting on (an order still ``processing``): said if the deadline passes."""
        _ATTEMPT.last = what

    @staticmethod
    def _deadline() -> tuple[float, str] | None:
        deadline: tuple[float, str] | None = getattr(_ATTEMPT, "deadline", None)
        return deadline

    @staticmethod
    def _ran_out(said: str) -> AttemptDeadline:
        """The deadline's error, with the answer that kept the attempt retrying: the cause, not only the clock."""
        last = getattr(_ATTEMPT, "last", None)
        return AttemptDeadline(f"{said}; the CA's last answer: {last}" if last else said)

    def _bounded(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Each request's timeout shrinks to what the attempt has left; none starts once it is spent."""
        deadline = self._deadline()
        if deadline is None:
            return kwargs
        left = deadline[0] - time.monotonic()
        if left <= 0:
            raise self._ran_out(deadline[1])
        return {**kwargs, "timeout": max(0.1, min(float(kwargs.get("timeout", self._request_timeout)), left))}

    @property
    def last_response(self) -> requests.Response | None:
        """The last response received (nonce HEADs included): the one a following exception came from."""
        return self._recorder.response

    @last_response.setter
    def last_response(self, response: requests.Response | None) -> None:
        self._recorder.response = response

    def _pause(self, attempt: int, retry_after: float | None) -> None:
        delay = retry_after if retry_after is not None else self._backoff * 2**attempt
        delay *= random.uniform(1.0, 1.25)  # noqa: S311 - jitter, not a secret
        deadline = self._deadline()
        if deadline is not None and time.monotonic() + delay >= deadline[0]:
            raise self._ran_out(deadline[1])
        self._sleep(delay)

    def _with_retries(self, call: Callable[[], requests.Response]) -> requests.Response:
        bad_nonces = 0
        attempt = 0
        while True:
            self.last_response = None
            try:
                return call()
            except messages.Error as err:
                _ATTEMPT.last = problem_text(err)
                if err.code == "badNonce" and bad_nonces < _BAD_NONCE_RETRIES:
                    bad_nonces += 1
                    continue
                status = self.last_response.status_code if self.last_response is not None else 0
                if not self._retry_in_place(status, attempt):
                    raise
            except acme_errors.ClientError as err:
                status = self.last_response.status_code if self.last_response is not None else 0
                _ATTEMPT.last = f"HTTP {status}: {err}"[:300]
                if status < 500 or attempt + 1 >= self._attempts:
                    raise
            except (requests.ConnectionError, requests.Timeout) as err:
                _ATTEMPT.last = "no answer (timed out)" if isinstance(err, requests.Timeout) else \
                    "the connection failed"
                if attempt + 1 >= self._attempts:
                    raise
            self._pause(attempt, retry_after_seconds(self.last_response))
            attempt += 1

    def _retry_in_place(self, status: int, attempt: int) -> bool:
        """5xx (and 503 with a short ``Retry-After``) are worth another try here; 429 never is."""
        if status < 500 or attempt + 1 >= self._attempts:
            return False
        wait = retry_after_seconds(self.last_response)
        return wait is None or wait <= _RETRY_IN_PLACE

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        """The library's signed POST, retried as the class says; ``ClientV2``'s methods come through here too."""
        parent_post = super().post
        return self._with_retries(lambda: parent_post(*args, **self._bounded(kwargs)))

    def get(self, *args: Any, **kwargs: Any) -> requests.Response:
        """The library's unsigned GET (directory, renewal info), retried as the class says."""
        parent_get = super().get
        return self._with_retries(lambda: parent_get(*args, **self._bounded(kwargs)))

    def head(self, *args: Any, **kwargs: Any) -> requests.Response:
        """The nonce HEAD, bounded by the attempt like every other request."""
        response: requests.Response = super().head(*args, **self._bounded(kwargs))
        return response


class _Recorder:
    """The session's response hook; a separate object so the session holds no reference back to the network,
    whose ``__del__`` closes the session as soon as the last reference goes."""

    def __init__(self) -> None:
        self.response: requests.Response | None = None

    def __call__(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.response = response


def signed_post(client: acme_client.ClientV2, url: str, obj: JSONDeSerializable | None) -> requests.Response:
    """POST ``obj`` signed by the client's account key, taking fresh nonces from the directory's ``newNonce``.

    For requests ``ClientV2`` has no method for; raises what ``post`` raises (``messages.Error`` for a problem
    document, ``acme.errors.ClientError`` for other failures), after the retries.
    """
    response: requests.Response = client.net.post(url, obj, new_nonce_url=client.directory["newNonce"])
    return response


def post_as_get(client: acme_client.ClientV2, url: str) -> requests.Response:
    """Fetch an ACME resource (order, authorization, certificate) with POST-as-GET (RFC 8555 section 6.3)."""
    return signed_post(client, url, None)


def links(response: requests.Response, relation: str) -> list[str]:
    """Every ``Link`` URL of ``relation`` in ``response``.

    Not ``response.links``: that keeps one link per relation, and a certificate can have several
    ``rel="alternate"`` chains (RFC 8555 section 7.4.2).
    """
    header = response.headers.get("Link")
    if not header:
        return []
    return [link["url"] for link in requests.utils.parse_header_links(header)
            if link.get("rel") == relation and "url" in link]
