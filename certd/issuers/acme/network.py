"""The ACME transport: ``acme``'s ``ClientNetwork`` with bounded retries that a busy client needs.

``acme`` retries a ``badNonce`` only once, and a busy client against a CA that rejects nonces (Pebble: 5% by
default) then fails now and then; this network retries ``badNonce`` a bounded number of times, retries 5xx and
connection errors with exponential backoff and jitter, honours a short ``Retry-After`` in place and leaves a long one
to the error (``errors.converted``), so the scheduler waits instead of the worker.

Like its parent it is not safe to share between threads (one nonce pool, one ``requests.Session``): the account
module gives every worker thread its own.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import requests
from acme import client as acme_client
from acme import errors as acme_errors
from acme import messages

from certd.issuers.acme.errors import retry_after_seconds

__all__ = ["AcmeNetwork"]

_BAD_NONCE_RETRIES = 10  # Pebble at 50% rejection: 10 in a row is ~1 in 1000 requests; bounded, not endless
_RETRY_IN_PLACE = 30.0  # seconds: a longer Retry-After goes back to the scheduler with the error


class AcmeNetwork(acme_client.ClientNetwork):
    """``ClientNetwork`` with bounded retries, and the last response kept for its ``Retry-After``.

    One per thread, like its parent, so ``last_response`` needs no lock.
    """

    def __init__(self, *args: Any, attempts: int, backoff: float, sleep: Callable[[float], None], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.last_response: requests.Response | None = None
        self._attempts = attempts
        self._backoff = backoff
        self._sleep = sleep

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        response: requests.Response = super()._send_request(method, url, *args, **kwargs)
        self.last_response = response
        return response

    def _pause(self, attempt: int, retry_after: float | None) -> None:
        delay = retry_after if retry_after is not None else self._backoff * 2**attempt
        self._sleep(delay * random.uniform(1.0, 1.25))  # noqa: S311 - jitter, not a secret

    def _with_retries(self, call: Callable[[], requests.Response]) -> requests.Response:
        bad_nonces = 0
        attempt = 0
        while True:
            self.last_response = None
            try:
                return call()
            except messages.Error as err:
                if err.code == "badNonce" and bad_nonces < _BAD_NONCE_RETRIES:
                    bad_nonces += 1
                    continue
                status = self.last_response.status_code if self.last_response is not None else 0
                if not self._retry_in_place(status, attempt):
                    raise
            except acme_errors.ClientError:
                status = self.last_response.status_code if self.last_response is not None else 0
                if status < 500 or attempt + 1 >= self._attempts:
                    raise
            except (requests.ConnectionError, requests.Timeout):
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
        return self._with_retries(lambda: self._post_once(*args, **kwargs))

    def get(self, *args: Any, **kwargs: Any) -> requests.Response:
        parent_get = super().get
        return self._with_retries(lambda: parent_get(*args, **kwargs))
