"""k3s release names: parsing and ordering (k3snoded/versions.py)."""

from __future__ import annotations

import pytest

from k3snoded.versions import newest, older, oldest, parse_release, parse_version_output


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("v1.31.4+k3s1", "v1.31.5+k3s1"),
        ("v1.31.4+k3s1", "v1.31.4+k3s2"),
        ("v1.31.9+k3s3", "v1.32.0+k3s1"),
        ("v1.32.0-rc2+k3s1", "v1.32.0+k3s1"),
        ("v1.9.0+k3s1", "v1.10.0+k3s1"),  # numeric, not lexical
    ],
)
def test_release_order(a: str, b: str) -> None:
    assert older(a, b)
    assert not older(b, a)
    assert not older(a, a)


@pytest.mark.parametrize("text", ["", "1.31.4", "v1.31", "latest", "v1.31.4+rke2r1", "v1.31.x"])
def test_what_is_not_a_release(text: str) -> None:
    assert parse_release(text) is None
    assert not older(text, "v1.31.4+k3s1")
    assert not older("v1.31.4+k3s1", text)


def test_version_output_of_k3s() -> None:
    out = "k3s version v1.31.4+k3s1 (a1b2c3d4)\ngo version go1.22.9\n"
    assert parse_version_output(out) == "v1.31.4+k3s1"
    assert parse_version_output("garbage\n") is None
    assert parse_version_output("k3s version banana (x)\n") is None


def test_oldest_and_newest_ignore_what_is_not_a_release() -> None:
    vs = ["v1.31.5+k3s1", "", "v1.31.4+k3s1", "junk", "v1.32.0+k3s1"]
    assert oldest(vs) == "v1.31.4+k3s1"
    assert newest(vs) == "v1.32.0+k3s1"
    assert oldest(["", "x"]) is None
