"""Signing of records, requests and responses: pure functions, every rejection reason."""

from __future__ import annotations

import contextlib
import os
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k3snoded.discovery.signing import (
    HEADER_NONCE,
    HEADER_SIG,
    HEADER_TS,
    RequestVerifier,
    derive_key,
    new_nonce,
    sign_record,
    sign_request,
    sign_response,
    token_password,
    verify_record,
    verify_response,
)
from k3snoded.errors import AuthenticationError

HASH = "a" * 64
KEY = derive_key("s3cret", "lab")
NOW = 1_700_000_000.0


def nonce() -> str:
    return new_nonce(os.urandom(16))


@pytest.mark.parametrize(
    ("token", "password"),
    [
        ("abc", "abc"),
        (" abc\n", "abc"),
        (f"K10{HASH}::server:abc", "abc"),
        ("K10::node:abc", "abc"),
        ("K10:::abc", "abc"),
        ("K10::server:a:b", "a:b"),
        ("abcdef.0123456789abcdef", "abcdef.0123456789abcdef"),
        (f"K10{HASH}::abcdef.0123456789abcdef", "abcdef.0123456789abcdef"),
    ],
)
def test_token_password_normalises_like_k3s(token: str, password: str) -> None:
    assert token_password(token) == password


@pytest.mark.parametrize("token", ["", "   ", "K10abc::server:x", "K10::server:", "K10::nocolon"])
def test_token_password_rejects_what_k3s_rejects(token: str) -> None:
    with pytest.raises(ValueError, match="token"):
        token_password(token)


def test_key_depends_on_password_and_cluster_only() -> None:
    assert derive_key(f"K10{HASH}::server:s3cret", "lab") == KEY
    assert len(KEY) == 32
    assert derive_key("s3cret", "other") != KEY
    assert derive_key("s3cret2", "lab") != KEY
    with pytest.raises(ValueError, match="cluster"):
        derive_key("s3cret", "")


def test_record_round_trip() -> None:
    rec = sign_record(KEY, {"n": "n1", "c": "lab", "r": "server"}, NOW)
    assert rec["ts"] == "1700000000.000"
    assert set(rec) == {"n", "c", "r", "ts", "sig"}
    out = verify_record(KEY, rec, NOW + 29, cluster="lab")
    assert out == {"n": "n1", "c": "lab", "r": "server", "ts": "1700000000.000"}


def test_record_sign_replaces_old_ts_and_sig() -> None:
    old = sign_record(KEY, {"n": "n1", "c": "lab"}, NOW - 100)
    new = sign_record(KEY, old, NOW)
    assert new["ts"] == "1700000000.000"
    verify_record(KEY, new, NOW, cluster="lab")


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda r: r.pop("sig"), "unsigned"),
        (lambda r: r.update(c="other"), "other cluster"),
        (lambda r: r.pop("c"), "other cluster"),
        (lambda r: r.update(r="agent"), "bad record signature"),
        (lambda r: r.update(extra="x"), "bad record signature"),
        (lambda r: r.pop("n"), "bad record signature"),
        (lambda r: r.update(sig="A" * 43), "bad record signature"),
        (lambda r: r.update(sig="short"), "bad record signature"),
        (lambda r: r.update(ts="1700000001.000"), "bad record signature"),
    ],
)
def test_record_rejections(mutate: object, reason: str) -> None:
    rec = sign_record(KEY, {"n": "n1", "c": "lab", "r": "server"}, NOW)
    mutate(rec)  # type: ignore[operator]
    with pytest.raises(AuthenticationError, match=reason):
        verify_record(KEY, rec, NOW, cluster="lab")


def test_record_from_other_cluster_or_key() -> None:
    other = derive_key("s3cret", "other")
    rec = sign_record(other, {"n": "n1", "c": "other"}, NOW)
    with pytest.raises(AuthenticationError, match="other cluster"):
        verify_record(KEY, rec, NOW, cluster="lab")
    # a stranger claiming our cluster name but lacking the token
    forged = sign_record(derive_key("guess", "lab"), {"n": "n1", "c": "lab"}, NOW)
    with pytest.raises(AuthenticationError, match="bad record signature"):
        verify_record(KEY, forged, NOW, cluster="lab")


def test_record_time_window() -> None:
    rec = sign_record(KEY, {"n": "n1", "c": "lab"}, NOW)
    verify_record(KEY, rec, NOW + 300, max_age=300, cluster="lab")
    verify_record(KEY, rec, NOW - 300, max_age=300, cluster="lab")
    with pytest.raises(AuthenticationError, match="stale"):
        verify_record(KEY, rec, NOW + 301, max_age=300, cluster="lab")
    with pytest.raises(AuthenticationError, match="future"):
        verify_record(KEY, rec, NOW - 301, max_age=300, cluster="lab")


def test_record_encoding_is_unambiguous() -> None:
    # {"a": "b=c"} and {"a=b": "c"} must not share a signature
    one = sign_record(KEY, {"c": "lab", "a": "bc"}, NOW)
    two = dict(one)
    del two["a"]
    two["ab"] = "c"
    with pytest.raises(AuthenticationError):
        verify_record(KEY, two, NOW, cluster="lab")


def test_request_round_trip_and_replay() -> None:
    verifier = RequestVerifier(KEY, window=30)
    n = nonce()
    headers = sign_request(KEY, "GET", "/v1/peers", b"", NOW, n)
    assert set(headers) == {HEADER_TS, HEADER_NONCE, HEADER_SIG}
    got = verifier.verify("get", "/v1/peers", b"", headers, NOW + 1)
    assert got.nonce == n
    with pytest.raises(AuthenticationError, match="replayed"):
        verifier.verify("GET", "/v1/peers", b"", headers, NOW + 2)
    # after the window the nonce is forgotten, and the timestamp alone refuses it
    with pytest.raises(AuthenticationError, match="stale"):
        verifier.verify("GET", "/v1/peers", b"", headers, NOW + 31)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"method": "POST"}, "bad request signature"),
        ({"path": "/v1/peers?x=1"}, "bad request signature"),
        ({"body": b"x"}, "bad request signature"),
        ({"key": derive_key("s3cret", "other")}, "bad request signature"),
        ({"now": NOW + 31}, "stale"),
        ({"now": NOW - 31}, "future"),
    ],
)
def test_request_rejections(change: dict[str, object], reason: str) -> None:
    headers = sign_request(KEY, "GET", "/v1/peers", b"", NOW, nonce())
    args: dict[str, object] = {"method": "GET", "path": "/v1/peers", "body": b"", "now": NOW}
    args.update(change)
    key = args.pop("key", KEY)
    verifier = RequestVerifier(key)  # type: ignore[arg-type]
    with pytest.raises(AuthenticationError, match=reason):
        verifier.verify(headers=headers, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("missing", [HEADER_TS, HEADER_NONCE, HEADER_SIG])
def test_request_missing_header(missing: str) -> None:
    headers = sign_request(KEY, "GET", "/v1/peers", b"", NOW, nonce())
    del headers[missing]
    with pytest.raises(AuthenticationError, match="unsigned"):
        RequestVerifier(KEY).verify("GET", "/v1/peers", b"", headers, NOW)


def test_replay_cache_is_bounded_and_evicts() -> None:
    verifier = RequestVerifier(KEY, window=30, max_nonces=3)
    for i in range(3):
        h = sign_request(KEY, "GET", "/", b"", NOW + i, nonce())
        verifier.verify("GET", "/", b"", h, NOW + i)
    assert len(verifier) == 3
    h = sign_request(KEY, "GET", "/", b"", NOW + 3, nonce())
    with pytest.raises(AuthenticationError, match="full"):
        verifier.verify("GET", "/", b"", h, NOW + 3)
    # 31 s later the first nonce has expired; a new request is accepted
    h = sign_request(KEY, "GET", "/", b"", NOW + 31, nonce())
    verifier.verify("GET", "/", b"", h, NOW + 31)
    assert len(verifier) == 3
    h = sign_request(KEY, "GET", "/", b"", NOW + 100, nonce())
    verifier.verify("GET", "/", b"", h, NOW + 100)
    assert len(verifier) == 1


def test_sign_request_refuses_bad_nonce() -> None:
    with pytest.raises(ValueError, match="nonce"):
        sign_request(KEY, "GET", "/", b"", NOW, "bad nonce!")
    with pytest.raises(ValueError, match="random"):
        new_nonce(b"short")


def test_response_round_trip_and_rejections() -> None:
    n = nonce()
    body = b'{"peers": []}'
    headers = sign_response(KEY, n, 200, body, NOW)
    verify_response(KEY, n, 200, body, headers, now=NOW + 5)
    with pytest.raises(AuthenticationError, match="bad response signature"):
        verify_response(KEY, nonce(), 200, body, headers, now=NOW)  # answers another request
    with pytest.raises(AuthenticationError, match="bad response signature"):
        verify_response(KEY, n, 200, body + b" ", headers, now=NOW)
    with pytest.raises(AuthenticationError, match="bad response signature"):
        verify_response(KEY, n, 401, body, headers, now=NOW)
    with pytest.raises(AuthenticationError, match="stale"):
        verify_response(KEY, n, 200, body, headers, now=NOW + 60)
    with pytest.raises(AuthenticationError, match="unsigned"):
        verify_response(KEY, n, 200, body, {}, now=NOW)


texts = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
header_values = st.one_of(
    st.none(),
    st.text(max_size=70),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "1700000000", "", " 1700000000.0 "]),
    st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=43, max_size=43),
)


@settings(max_examples=300)
@given(
    record=st.dictionaries(st.sampled_from(["c", "n", "ts", "sig", "a", "r"]) | texts, texts),
    now=st.floats(allow_nan=True, allow_infinity=True),
)
def test_random_records_only_raise_authentication_error(record: dict[str, str], now: float) -> None:
    with contextlib.suppress(AuthenticationError):
        verify_record(KEY, record, now, cluster="lab")


@settings(max_examples=300)
@given(
    ts=header_values,
    nonce_value=header_values,
    sig=header_values,
    method=texts,
    path=texts,
    body=st.binary(max_size=64),
    now=st.floats(allow_nan=True, allow_infinity=True),
)
def test_random_headers_only_raise_authentication_error(
    ts: str | None,
    nonce_value: str | None,
    sig: str | None,
    method: str,
    path: str,
    body: bytes,
    now: float,
) -> None:
    headers = {
        k: v
        for k, v in ((HEADER_TS, ts), (HEADER_NONCE, nonce_value), (HEADER_SIG, sig))
        if v is not None
    }
    with contextlib.suppress(AuthenticationError):
        RequestVerifier(KEY).verify(method, path, body, headers, now)
    with contextlib.suppress(AuthenticationError):
        verify_response(KEY, "n" * 22, 200, body, headers, now=now)


@settings(max_examples=100)
@given(
    fields=st.dictionaries(texts, texts),
    now=st.floats(min_value=0, max_value=4e9),
)
def test_any_signed_record_verifies(fields: dict[str, str], now: float) -> None:
    fields = {**fields, "c": "lab"}
    rec = sign_record(KEY, fields, now)
    out = verify_record(KEY, rec, now, cluster="lab")
    assert out == {k: v for k, v in rec.items() if k != "sig"}
