"""Property tests: k3s tokens with a CA hash (``tokens.parse_token``, ``secure_token``).

Any text gives a parsed token or ``TokenError``, never another exception; secure tokens
round-trip; the password part (the cluster secret) does not depend on the form; and the parser
agrees, token for token, with the stand-in k3s's own reading of ``pkg/clientaccess/token.go``
(``tests/fakes/k3s_stub/tokens.py``, written separately from the same source).
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from k3snoded.tokens import (
    Token,
    TokenError,
    is_ca_hash,
    normalize,
    parse_token,
    redact,
    secure_token,
)
from tests.fakes.k3s_stub import tokens as stand_in

HEX = "0123456789abcdef"
ca_hashes = st.text(alphabet=HEX, min_size=64, max_size=64)
users = st.text(alphabet=st.characters(blacklist_characters=":"), max_size=12)
passwords = st.text(min_size=1, max_size=40)
# Text shaped like tokens, so that the interesting branches are reached often.
pieces = st.sampled_from(["K10", "::", ":", ".", "abcdef", "0123456789abcdef", "a" * 64, "x"])
token_like = st.one_of(
    st.text(max_size=120),
    st.lists(st.one_of(pieces, st.text(max_size=8)), max_size=8).map("".join),
    st.builds(lambda h, rest: f"K10{h}{rest}", ca_hashes, st.text(max_size=40)),
)


@settings(max_examples=1500, deadline=None)
@given(token_like)
@example("K10user:pw")  # no "::": no hash, the rest is the credentials
@example("abcdef.0123456789abcdef")
@example("K10" + "A" * 64 + "::node:pw")  # any 64 characters parse; none of them can match
def test_any_text_parses_or_is_refused_with_k3s_wording(text: str) -> None:
    try:
        token = parse_token(text)
    except TokenError as exc:
        assert str(exc) in {
            "token must not be empty",
            "invalid token CA hash length",
            "invalid token format",
        }
        return
    assert token.password
    assert token.ca_hash == "" or len(token.ca_hash) == 64
    assert ":" not in token.username
    assert normalize(text) == token.password


@settings(max_examples=1500, deadline=None)
@given(token_like)
@example("K10::x")
@example("K10" + "a" * 64)
@example("a::b")
def test_the_parser_agrees_with_the_stand_in_k3s(text: str) -> None:
    try:
        ours: Token | None = parse_token(text)
    except TokenError as exc:
        ours, our_error = None, str(exc)
    try:
        theirs: stand_in.Token | None = stand_in.parse(text)
    except stand_in.TokenError as exc:
        theirs, their_error = None, str(exc)
    if ours is None or theirs is None:
        assert ours is None and theirs is None, (ours, theirs)
        assert our_error == their_error
        return
    assert (ours.ca_hash, ours.username, ours.password, ours.bootstrap) == (
        theirs.ca_hash,
        theirs.username,
        theirs.password,
        theirs.bootstrap,
    )


@settings(max_examples=800, deadline=None)
@given(st.one_of(st.just(""), ca_hashes), users, passwords)
def test_secure_tokens_round_trip(ca_hash: str, user: str, password: str) -> None:
    if not ca_hash:
        text = f"K10::{user}:{password}"
    else:
        text = secure_token(ca_hash, user, password)
        assert text.startswith("K10" + ca_hash + "::")
    assert parse_token(text) == Token(ca_hash, user, password)


@settings(max_examples=800, deadline=None)
@given(ca_hashes, st.sampled_from(["server", "node"]), passwords)
def test_the_cluster_secret_does_not_depend_on_the_form(
    ca_hash: str, user: str, password: str
) -> None:
    """k3s keys its datastore with the password only: the secure and the short form of a token
    are the same secret (a short token starting with K10 is read as a secure one)."""
    secure = secure_token(ca_hash, user, password)
    assert normalize(secure) == password
    if not password.startswith("K10"):
        assert normalize(password) == password


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_only_lower_case_hex_of_64_is_a_ca_hash(text: str) -> None:
    expected = len(text) == 64 and all(c in HEX for c in text)
    assert is_ca_hash(text) is expected
    if not expected:
        try:
            secure_token(text, "node", "pw")
        except ValueError:
            return
        raise AssertionError("secure_token accepted a hash k3s could never match")


secrets_ = st.text(alphabet=st.characters(blacklist_characters="<>"), min_size=4, max_size=40)


@settings(max_examples=500, deadline=None)
@given(ca_hashes, secrets_.filter(lambda p: p not in "<redacted>"), st.text(max_size=60))
def test_redaction_hides_the_password_of_a_secure_token(
    ca_hash: str, password: str, around: str
) -> None:
    token = secure_token(ca_hash, "node", password)
    out = redact(f"{around} --token {token} {around} {password}", token)
    assert password not in out
