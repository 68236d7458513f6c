"""The signed-request scheme as pure functions: the exact message, what it binds, what it refuses."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from certd.core.signing import API_LABEL, WEBHOOK_LABEL, WINDOW, BadSignature, message, sign, signed_headers, verify

KEY = "k3y-for-signing-tests"
NOW = 1_800_000_000.0
PATH = "/v1/certificates/a/renew?if_due=true"


def test_message_is_exactly_the_documented_bytes() -> None:
    assert message(API_LABEL, "POST", PATH, "1800000000", b'{"x":1}') == (
        b"certd-api-v1\nPOST\n/v1/certificates/a/renew?if_due=true\n1800000000\n" + b'{"x":1}')
    mac = hmac.new(KEY.encode(), b"certd-webhook-v1\nPOST\n/hook?t=1\n1800000000\n", hashlib.sha256).hexdigest()
    assert sign(KEY, WEBHOOK_LABEL, "POST", "/hook?t=1", 1800000000, b"") == "v1=" + mac
    assert sign(f"  {KEY}\n", API_LABEL, "GET", "/x", 1, b"") == sign(KEY, API_LABEL, "GET", "/x", 1, b"")


def test_a_good_signature_verifies_and_canonical_form_is_lower_case() -> None:
    headers = signed_headers(KEY, API_LABEL, "POST", PATH, b"", NOW)
    canonical, at = verify(KEY, API_LABEL, "POST", PATH, headers["X-Certd-Timestamp"],
                           headers["X-Certd-Signature"].upper().replace("V1=", "v1="), b"", NOW)
    assert canonical == headers["X-Certd-Signature"] and at == int(NOW)


@pytest.mark.parametrize(
    ("label", "method", "path", "body"),
    [
        (API_LABEL, "POST", "/v1/certificates/b/renew?if_due=true", b""),  # another certificate
        (API_LABEL, "POST", "/v1/certificates/a/deploy", b""),  # another action
        (API_LABEL, "POST", "/v1/certificates/a/renew?if_due=false", b""),  # another query
        (API_LABEL, "POST", "/v1/certificates/a/renew", b""),  # query dropped
        (API_LABEL, "GET", PATH, b""),  # another method
        (API_LABEL, "POST", PATH, b"{}"),  # another body
        (WEBHOOK_LABEL, "POST", PATH, b""),  # a webhook's signature for the same request
    ],    ids=["other-certificate", "other-action", "other-query", "query-dropped", "other-method", "other-body",
         "webhook-label"],
)
def test_signature_binds_label_method_path_query_and_body(label: str, method: str, path: str, body: bytes) -> None:
    headers = signed_headers(KEY, API_LABEL, "POST", PATH, b"", NOW)
    with pytest.raises(BadSignature, match="does not match"):
        verify(KEY, label, method, path, headers["X-Certd-Timestamp"], headers["X-Certd-Signature"], body, NOW)


@pytest.mark.parametrize(
    ("stamp", "signature", "reason"),
    [
        ("²", None, "ASCII digits"),  # str.isdigit() says True, int() raises
        ("١٨٠٠٠٠٠٠٠٠", None, "ASCII digits"),
        (" 1800000000", None, "ASCII digits"),
        ("1800000000.5", None, "ASCII digits"),
        ("-1", None, "ASCII digits"),
        ("9" * 13, None, "ASCII digits"),
        ("", None, "ASCII digits"),
        (str(int(NOW) - WINDOW - 1), None, "away from this host's clock"),
        (str(int(NOW) + WINDOW + 1), None, "away from this host's clock"),
        ("1800000000", "sha256=" + "0" * 64, "sha256= signature form"),
        ("1800000000", "v1=" + "0" * 63, "not v1=<64 hex digits>"),
        ("1800000000", "v2=" + "0" * 64, "not v1=<64 hex digits>"),
    ],    ids=["superscript", "arabic-indic-digits", "leading-space", "fraction", "negative", "13-digits", "empty",
         "too-old", "too-new", "sha256-form", "short-mac", "v2"],
)
def test_malformed_or_stale_is_refused_with_a_reason(stamp: str, signature: str | None, reason: str) -> None:
    sig = signature or sign(KEY, API_LABEL, "POST", PATH, 1800000000, b"")
    with pytest.raises(BadSignature, match=reason):
        verify(KEY, API_LABEL, "POST", PATH, stamp, sig, b"", NOW)


def test_the_old_sha256_form_is_refused_even_when_its_mac_is_right() -> None:
    old = "sha256=" + hmac.new(KEY.encode(), b"1800000000." + b"{}", hashlib.sha256).hexdigest()
    with pytest.raises(BadSignature, match="no longer accepted"):
        verify(KEY, API_LABEL, "POST", PATH, "1800000000", old, b"{}", NOW)


def test_edges_of_the_window_are_accepted() -> None:
    for stamp in (int(NOW) - WINDOW, int(NOW) + WINDOW):
        verify(KEY, API_LABEL, "POST", PATH, str(stamp), sign(KEY, API_LABEL, "POST", PATH, stamp, b""), b"", NOW)


def test_non_ascii_paths_must_be_percent_encoded_by_the_signer() -> None:
    with pytest.raises(ValueError, match="percent-encode"):
        sign(KEY, API_LABEL, "POST", "/v1/certificates/é/renew", 1, b"")
    assert sign(KEY, API_LABEL, "POST", b"/v1/certificates/%C3%A9/renew", 1, b"").startswith("v1=")


def test_the_verification_snippet_in_the_docs_agrees_with_certd() -> None:
    import time
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "daemon.md").read_text()
    (code,) = [b.split("\n", 1)[1] for b in text.split("```")[1::2] if "def signature_ok" in b]
    namespace: dict[str, object] = {}
    exec(code, namespace)
    ok = namespace["signature_ok"]
    assert callable(ok)
    headers = signed_headers(KEY, API_LABEL, "POST", PATH, b"{}", time.time())
    assert ok(KEY, API_LABEL, "POST", PATH, headers, b"{}")
    assert not ok(KEY, API_LABEL, "POST", "/v1/certificates/b/renew", headers, b"{}")
    assert not ok(KEY, WEBHOOK_LABEL, "POST", PATH, headers, b"{}")
    hook = signed_headers(KEY, WEBHOOK_LABEL, "POST", "/hook?x=1", b"", time.time())
    assert ok(KEY, WEBHOOK_LABEL, "POST", "/hook?x=1", hook, b"")
