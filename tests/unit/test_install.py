"""Pure parts of k3s installation: architectures, asset names, mirror layouts, checksum lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from k3snoded.config import K3sConfig
from k3snoded.errors import InstallError
from k3snoded.install import (
    CN_MIRROR,
    DEFAULT_VERSION,
    GITHUB_MIRROR,
    InstallMode,
    InstallSpec,
    asset_name,
    digest_list_name,
    expected_digest,
    machine_arch,
    release_url,
    spec_from_config,
)

A = "a" * 64
B = "b" * 64


@pytest.mark.parametrize(
    ("machine", "arch", "asset"),
    [
        ("x86_64", "amd64", "k3s"),
        ("aarch64", "arm64", "k3s-arm64"),
        ("armv7l", "armhf", "k3s-armhf"),
        ("s390x", "s390x", "k3s-s390x"),
    ],
)
def test_machine_arch_and_asset(machine: str, arch: str, asset: str) -> None:
    assert machine_arch(machine) == arch
    assert asset_name(arch) == asset


def test_unknown_architecture_is_refused() -> None:
    with pytest.raises(InstallError, match="mips"):
        machine_arch("mips")


def test_github_layout_keeps_the_plus() -> None:
    assert release_url(GITHUB_MIRROR, "v1.31.4+k3s1", "sha256sum-amd64.txt") == (
        "https://github.com/k3s-io/k3s/releases/download/v1.31.4+k3s1/sha256sum-amd64.txt"
    )


def test_cn_mirror_layout_dashes_the_version() -> None:
    # k3s-install.sh with INSTALL_K3S_MIRROR=cn logs
    # "Downloading binary rancher-mirror.rancher.cn/k3s/v1.27.4-k3s1/k3s".
    assert release_url(CN_MIRROR, "v1.27.4+k3s1", "k3s") == (
        "https://rancher-mirror.rancher.cn/k3s/v1.27.4-k3s1/k3s"
    )


def test_other_mirrors_get_the_plus_url_encoded() -> None:
    """install.sh URL-encodes '+' as %2B for hosts other than GitHub (and the CN mirror, which
    dashes it): a '+' in a path is taken literally by some servers and as a space by others."""
    assert (
        release_url("http://m.example/k3s/", "v1+k3s1", "k3s")
        == "http://m.example/k3s/v1%2Bk3s1/k3s"
    )
    assert release_url("http://m/{version}/bin", "v1+k3s1", "k3s") == "http://m/v1%2Bk3s1/bin/k3s"


@pytest.mark.parametrize(
    ("arch", "listed"),
    [
        ("amd64", "sha256sum-amd64.txt"),
        ("arm64", "sha256sum-arm64.txt"),
        ("armhf", "sha256sum-arm.txt"),
    ],
)
def test_digest_list_names(arch: str, listed: str) -> None:
    """The armhf binary is k3s-armhf but its list is sha256sum-arm.txt (install.sh ARCH=arm)."""
    assert digest_list_name(arch) == listed


def test_expected_digest_picks_the_exact_name() -> None:
    text = f"{B}  k3s-airgap-images-amd64.tar\n{A}  k3s\n{B} *k3s-arm64\n"
    assert expected_digest(text, "k3s", "list") == A
    assert expected_digest(text, "k3s-arm64", "list") == B


def test_expected_digest_upper_case_is_accepted() -> None:
    assert expected_digest(f"{A.upper()}  k3s\n", "k3s", "list") == A


def test_missing_line_is_refused() -> None:
    with pytest.raises(InstallError, match="has no sha256 line for k3s"):
        expected_digest(f"{A}  k3s-arm64\n", "k3s", "list")


def test_malformed_digest_is_refused() -> None:
    with pytest.raises(InstallError, match="no valid sha256"):
        expected_digest("deadbeef  k3s\n", "k3s", "list")


def test_spec_from_config() -> None:
    assert spec_from_config(K3sConfig()) == InstallSpec()
    k3s = K3sConfig(install=InstallMode.AUTO, mirror=CN_MIRROR, airgap_file=Path("/srv/k3s"))
    spec = spec_from_config(k3s)
    assert spec.mode is InstallMode.AUTO
    assert spec.mirror == CN_MIRROR
    assert spec.airgap_file == Path("/srv/k3s")
    assert spec.version == DEFAULT_VERSION == K3sConfig().version
    assert K3sConfig().mirror == GITHUB_MIRROR


def test_shipped_digests_file(tmp_path: Path) -> None:
    from k3snoded.install import SHIPPED_DIGESTS, read_shipped, shipped_digest

    listing = tmp_path / "sums.txt"
    listing.write_text(f"# comment\nv1.2.3+k3s1 {A} k3s\nv1.2.3+k3s1 {B} k3s-arm64  # note\nbad\n")
    shipped = read_shipped(listing)
    assert shipped_digest(shipped, "v1.2.3+k3s1", "k3s-arm64") == B
    assert shipped_digest(shipped, "v1.2.3+k3s1", "k3s-armhf") is None
    assert read_shipped(tmp_path / "missing") == ()
    assert SHIPPED_DIGESTS.exists()  # ships in the package (pyproject package-data)
    for version, asset, digest in read_shipped():
        assert version.startswith("v") and asset.startswith("k3s") and len(digest) == 64
