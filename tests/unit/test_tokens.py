"""Tokens: generation, k3s-compatible reading and normalisation, secret files, redaction."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from k3snoded.tokens import (
    TokenError,
    generate_token,
    normalize,
    read_token,
    redact,
    write_secret,
)

HASH = "a" * 64


def test_generate_token_is_strong_hex_and_unique() -> None:
    tokens = {generate_token() for _ in range(50)}
    assert len(tokens) == 50
    for token in tokens:
        assert len(token) == 64
        assert all(ch in "0123456789abcdef" for ch in token)
        assert normalize(token) == token


@pytest.mark.parametrize(
    ("token", "password"),
    [
        ("abc", "abc"),
        ("a:b", "a:b"),  # a short token is the password, colons and all
        (f"K10{HASH}::server:s3cret", "s3cret"),
        (f"K10{HASH}::node:s3cret", "s3cret"),
        ("K10::server:s3cret", "s3cret"),
        ("K10:::pw", "pw"),
        (f"K10{HASH}::abcdef.0123456789abcdef", "abcdef.0123456789abcdef"),
    ],
)
def test_normalize(token: str, password: str) -> None:
    assert normalize(token) == password


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "token must not be empty"),
        ("K10abc::server:pw", "invalid token CA hash length"),
        (f"K10{HASH}::nocolon", "invalid token format"),
        (f"K10{HASH}::server:", "invalid token format"),
        (f"K10{HASH}", "invalid token format"),
    ],
)
def test_normalize_rejects(token: str, message: str) -> None:
    with pytest.raises(TokenError, match=message):
        normalize(token)


def test_read_token_strips_like_k3s(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("  s3cret\n\n")
    assert read_token(path) == "s3cret"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b" \n", "is empty"),
        (b"\xff", "not UTF-8"),
        (b"two words", "whitespace"),
    ],
)
def test_read_token_errors(tmp_path: Path, content: bytes | None, reason: str) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TokenError, match=reason) as info:
        read_token(path)
    assert str(path) in str(info.value)


def test_read_token_directory(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match="not a regular file"):
        read_token(tmp_path)


def test_write_secret_mode_and_content(tmp_path: Path) -> None:
    path = tmp_path / "token"
    write_secret(path, "s3cret\n")
    assert path.read_text() == "s3cret\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read_token(path) == "s3cret"


def test_redact_hides_token_and_password() -> None:
    token = f"K10{HASH}::server:topsecret"
    text = f"argv --token {token} and later topsecret alone"
    out = redact(text, token)
    assert "topsecret" not in out
    assert HASH not in out
    assert out.count("<redacted>") == 2
    assert redact("nothing here", "") == "nothing here"
