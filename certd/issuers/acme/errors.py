"""Where ``acme``, ``requests`` and ``josepy`` errors become certd's, so nothing else has to know their types.

Every failure leaves the issuer as an ``IssuerError`` naming the issuer, the certificate, the step and the CA's
problem document (type and detail), never a key or an EAB secret: the operator reads it in ``certd renew`` and in
events, and the scheduler reads ``retryable``/``retry_after`` from it. Keeping the conversion in one place keeps
those reasons the same whichever step failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import requests
from acme import errors as acme_errors
from acme import messages
from josepy.errors import DeserializationError

from certd.errors import CertdError, IssuerError, IssuerUnavailable, RateLimited, tls_reason

__all__ = ["converted", "problem_text", "retry_after_seconds", "status_of"]

_RATE_LIMIT_DEFAULT = timedelta(hours=1)  # a 429 without Retry-After: wait long enough not to make it worse
_RETRYABLE_CODES = ("connection", "dns", "incorrectResponse")  # validation failures a later attempt may not repeat


def retry_after_seconds(response: requests.Response | None) -> float | None:
    """``Retry-After`` as seconds from now (delta-seconds or an HTTP date), if the server sent one.

    The library's own ``ClientV2.retry_after`` returns a naive local time and invents a default; certd needs to
    know whether the CA said anything at all, to tell "wait here" from "give it back to the scheduler".
    """
    if response is None:
        return None
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(int(value)))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def status_of(response: requests.Response | None) -> int:
    """The HTTP status of ``response``, 0 when there was none (nothing answered)."""
    return int(response.status_code) if response is not None else 0


def problem_text(error: messages.Error) -> str:
    """A problem document as one line, ``code: detail (subproblems)``, as operators see it in errors and events."""
    text = f"{error.code or error.typ}: {error.detail or error.description or 'no detail given'}"
    subs = getattr(error, "subproblems", None) or ()
    parts = []
    for sub in subs:
        ident = getattr(getattr(sub, "identifier", None), "value", None)
        parts.append(f"{ident + ': ' if ident else ''}{getattr(sub, 'detail', '')}")
    return f"{text} ({'; '.join(parts)})" if parts else text


@contextmanager
def converted(
    where: str,
    *,
    directory: str,
    ca_bundle: Path | None,
    last_response: Callable[[], requests.Response | None],
) -> Iterator[None]:
    """Re-raise whatever the block raises as a certd error whose message starts with ``where``.

    ``last_response`` is asked only once something failed: the response the problem document came in carries the
    status and ``Retry-After`` that ``messages.Error`` itself does not.
    A ``CertdError`` raised inside gets ``where`` in front unless it already names an ACME issuer, so nested
    steps do not repeat the prefix.
    """
    try:
        yield
    except CertdError as err:
        if err.message.startswith("ACME "):
            raise
        raise type(err)(f"{where}: {err.message}", reason=err.reason, retryable=err.retryable,
                        retry_after=err.retry_after) from err
    except messages.Error as err:
        raise _from_problem(where, err, last_response()) from err
    except requests.exceptions.SSLError as exc:
        raise IssuerError(f"{where}: TLS to {directory} does not verify"
                          f"{' against ' + str(ca_bundle) if ca_bundle else ''}"
                          f": {tls_reason(exc)}", reason="TLSVerifyFailed") from exc
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise IssuerUnavailable(f"{where}: cannot reach {directory}: {type(exc).__name__}") from exc
    except acme_errors.ClientError as exc:
        raise IssuerUnavailable(f"{where}: unexpected answer from the CA: {str(exc)[:200]}") from exc
    except acme_errors.Error as exc:
        raise IssuerError(f"{where}: {type(exc).__name__}: {str(exc)[:200]}") from exc
    except DeserializationError as exc:
        raise IssuerError(f"{where}: the CA's answer is not valid ACME: {str(exc)[:200]}",
                          reason="NotAcme") from exc


def _from_problem(where: str, err: messages.Error, response: requests.Response | None) -> IssuerError:
    """A problem document as the certd error the scheduler can act on: wait, retry soon, or give up."""
    message = f"{where}: {problem_text(err)}"
    wait = retry_after_seconds(response)
    retry_after = timedelta(seconds=wait) if wait is not None else None
    code = err.code or "problem"
    if code == "rateLimited":
        return RateLimited(message, reason="rateLimited", retry_after=retry_after or _RATE_LIMIT_DEFAULT)
    if status_of(response) >= 500 or code in ("serverInternal", "badNonce"):
        return IssuerUnavailable(message, reason=code, retry_after=retry_after)
    return IssuerError(message, reason=code, retryable=code in _RETRYABLE_CODES)
