"""k3snoded as an operator runs it, inside a systemd lab machine.

``install(machine, deb)`` is what the README tells an operator: ``apt-get install ./….deb``,
the token, one ``/etc/k3snoded/config.yaml`` (the same on every machine) and a drop-in with what
differs per machine, then ``systemctl enable --now k3snoded``. The stand-in k3s is installed
where the config says k3s is (``/usr/local/bin/k3s``, the default ``k3s.binary``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.systemd.nspawn import REPO, Booted

VIP = "198.18.0.100"
TOKEN = "systemd-lab-token-5c1e0d9a7b3f4e21"
K3S_BINARY = "/usr/local/bin/k3s"


@dataclass(frozen=True)
class FleetSpec:
    endpoint: str  # "" = no shared datastore
    servers: int = 2
    vip: bool = True


def common_config(spec: FleetSpec) -> dict[str, Any]:
    return {
        "cluster": {"name": "syslab", "token_file": "/etc/k3snoded/token"},
        "datastore": {"endpoint": spec.endpoint},
        "servers": {"count": spec.servers},
        "registration": {
            "address": VIP,
            "vip": {"enabled": spec.vip, "interface": "eth0", "prefix": 24},
        },
        "api": {"listen": "0.0.0.0:6480"},
    }


def machine_config(m: Booted, *, agent_only: bool) -> dict[str, Any]:
    node: dict[str, Any] = {
        "node": {"name": m.name, "address": m.machine.address, "interface": "eth0"}
    }
    if agent_only:
        node["node"]["role"] = "agent"
        node["datastore"] = {"endpoint": ""}
    return node


def install_package(m: Booted, deb: Path) -> str:
    m.copy_in(deb, f"/root/{deb.name}")
    proc = m.run(
        ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", f"/root/{deb.name}"],
        timeout=300,
    )
    return proc.stdout + proc.stderr


def install_fake_k3s(m: Booted) -> None:
    m.write(K3S_BINARY, f'#!/bin/sh\nexec "{REPO}/tests/fakes/k3s" "$@"\n', 0o755)


def configure(m: Booted, spec: FleetSpec, *, agent_only: bool = False) -> None:
    m.write("/etc/k3snoded/token", TOKEN + "\n", 0o600)
    m.write("/etc/k3snoded/config.yaml", yaml.safe_dump(common_config(spec)), 0o600)
    m.write(
        "/etc/k3snoded/config.d/50-machine.yaml",
        yaml.safe_dump(machine_config(m, agent_only=agent_only)),
        0o600,
    )


def setup_node(m: Booted, deb: Path, spec: FleetSpec, *, agent_only: bool = False) -> None:
    """Everything before ``systemctl enable --now``."""
    install_package(m, deb)
    install_fake_k3s(m)
    configure(m, spec, agent_only=agent_only)


def enable_now(m: Booted, *, no_block: bool = False) -> float:
    """``systemctl enable --now k3snoded``; returns how long the command took (Type=notify:
    it returns once the daemon sent READY=1, unless no_block)."""
    t0 = time.monotonic()
    m.systemctl("enable", "--now", *(["--no-block"] if no_block else []), "k3snoded", timeout=300)
    return time.monotonic() - t0


def status(m: Booted) -> dict[str, Any] | None:
    proc = m.run(["k3snoded", "status", "--json"], check=False, timeout=30)
    if proc.returncode != 0:
        return None
    try:
        data: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        return None
    return data


def k3s_pid(m: Booted) -> int | None:
    s = status(m)
    return None if s is None else s["k3s"]["pid"]


def holds_vip(m: Booted) -> bool:
    return VIP in m.machine.ipv4_addresses()


def healthz(m: Booted, path: str = "healthz") -> int:
    script = (
        "import urllib.request,urllib.error,sys\n"
        "try:\n"
        f"    print(urllib.request.urlopen('http://127.0.0.1:6480/{path}',timeout=5).status)\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code)\n"
        "except OSError:\n"
        "    print(0)\n"
    )
    return int(m.run(["python3", "-c", script], check=False).stdout.strip() or 0)
