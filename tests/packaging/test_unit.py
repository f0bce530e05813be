"""The systemd unit: systemd-analyze verify is silent, and the settings that matter are there.

``systemd-analyze verify`` only *warns* about unknown keys or bad values and still exits 0
(lab-findings §6), so any output on stderr counts as failure. It also insists that ExecStart
exists, so the unit is verified as a copy whose ExecStart points at an existing binary (the
installed unit is verified as is in test_deb_lifecycle).
"""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from tests.packaging.conftest import REPO, need_tools

UNIT = REPO / "systemd" / "k3snoded.service"


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def verifiable_copy(tmp_path: Path, text: str | None = None) -> Path:
    text = UNIT.read_text() if text is None else text
    text = text.replace("ExecStart=/usr/bin/k3snoded ", "ExecStart=/bin/true ")
    copy = tmp_path / "k3snoded.service"
    copy.write_text(text)
    return copy


def settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for line in UNIT.read_text().splitlines():
        if line.startswith(("#", "[")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        out[key.strip()].append(value.strip())
    return out


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(s|min)?", value)
    assert m, value
    return float(m.group(1)) * (60 if m.group(2) == "min" else 1)


def test_verify_prints_nothing(tmp_path: Path) -> None:
    need_tools("systemd-analyze")
    proc = verify(verifiable_copy(tmp_path))
    assert proc.stderr == ""
    assert proc.returncode == 0


def test_verify_would_catch_a_bad_key(tmp_path: Path) -> None:
    """The check above can fail: a typo only warns, with exit status 0."""
    need_tools("systemd-analyze")
    broken = UNIT.read_text().replace("Restart=always", "Restart=sometimes\nFooBar=1")
    proc = verify(verifiable_copy(tmp_path, broken))
    assert "sometimes" in proc.stderr or "FooBar" in proc.stderr


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("KillMode", "process"),
        ("Delegate", "yes"),
        ("LimitNOFILE", "1048576"),
        ("LimitNPROC", "infinity"),
        ("LimitCORE", "infinity"),
        ("TasksMax", "infinity"),
        ("TimeoutStartSec", "infinity"),
        ("Restart", "always"),
        ("RestartSec", "5s"),
        ("RestartPreventExitStatus", "78"),
        ("ConditionPathExists", "/etc/k3snoded/config.yaml"),
        ("RuntimeDirectory", "k3snoded"),
        ("RuntimeDirectoryMode", "0700"),
        ("RuntimeDirectoryPreserve", "yes"),
        ("StateDirectory", "k3snoded"),
        ("StateDirectoryMode", "0700"),
        ("UMask", "0077"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("WantedBy", "multi-user.target"),
    ],
)
def test_setting(key: str, value: str) -> None:
    assert settings()[key] == [value]


def test_exec_lines() -> None:
    s = settings()
    assert s["ExecStart"] == ["/usr/bin/k3snoded run $K3SNODED_ARGS"]
    assert s["ExecStartPre"] == ["-/sbin/modprobe br_netfilter", "-/sbin/modprobe overlay"]
    assert "network-online.target" in s["After"][0]
    assert "network-online.target" in s["Wants"][0]


def test_stop_timeout_exceeds_the_daemons_own() -> None:
    from k3snoded.config import K3sConfig

    assert seconds(settings()["TimeoutStopSec"][0]) >= 2 * K3sConfig().stop_timeout


def test_watchdog_is_set() -> None:
    assert 10 <= seconds(settings()["WatchdogSec"][0]) <= 120


def test_exit_code_matches_ex_config() -> None:
    from k3snoded.errors import EX_CONFIG

    assert settings()["RestartPreventExitStatus"] == [str(EX_CONFIG)]


def test_no_mount_namespace_sandboxing() -> None:
    """Settings that would hide kubelet's mounts from the host or cripple containers."""
    s = settings()
    for key in (
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "NoNewPrivileges",
        "SystemCallFilter",
        "CapabilityBoundingSet",
        "RestrictNamespaces",
    ):
        assert key not in s, key
