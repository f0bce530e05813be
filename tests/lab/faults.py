"""Fault primitives for lab machines; Machine's methods call these (see README.md for semantics).

- link_down/link_up: the machine's own eth0, administratively. The machine sees it: its connected
  route goes, keepalived enters FAULT, addresses stay. This is "the cable pulled at the node".
- partition/heal: the machine's port is detached from the bridge (switch namespace); its eth0 stays
  up with carrier, so the machine only notices silence: a true partition (split-brain tests).
  ``partition(carrier=False)`` takes the switch-side veth down instead (eth0 shows NO-CARRIER).
- split/join (Lab level): groups of machines that cannot reach each other (bridge nftables).
- loss/clear_loss: nftables ``meta random`` drop in the machine's namespace, on eth0 only.
- delay/clear_delay: ``tc netem``; raises NotImplementedError where the kernel has no sch_netem
  (this CI kernel: lab-findings §7b). nftables cannot delay packets.
- throttle/clear_throttle: eth0 egress limited to a rate (tc tbf, which this kernel has); queueing
  adds latency under load, but an idle link stays fast: it is not a fixed delay.
- restart: every process in the machine ended by PID, eth0 reset to its base address, loss/delay
  cleared, neighbour cache flushed; the switch side (partition, split) is left as it was.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tests.lab.iproute import ip

if TYPE_CHECKING:
    from tests.lab.netns import Lab, Machine

LOSS_TABLE = "k3snoded_lab_loss"
SPLIT_TABLE = "k3snoded_lab_split"
_DIRECTIONS = {"in": ("in",), "out": ("out",), "both": ("in", "out")}


def _ip(m: Machine, *args: str, netns: str | None = None) -> None:
    ip(*args, netns=netns or m.netns)


def _nft(m: Machine | None, script: str, *, netns: str | None = None) -> None:
    ns = netns or (m.netns if m else None)
    assert ns is not None
    res = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"nft in {ns} failed: {res.stderr.strip()}\n{script}")


def link_down(m: Machine) -> None:
    _ip(m, "link", "set", m.interface, "down")


def link_up(m: Machine) -> None:
    _ip(m, "link", "set", m.interface, "up")


def partition(m: Machine, *, carrier: bool = True) -> None:
    if carrier:
        _ip(m, "link", "set", m.switch_port, "nomaster", netns=m.lab.switch_ns)
    else:
        _ip(m, "link", "set", m.switch_port, "down", netns=m.lab.switch_ns)


def heal(m: Machine) -> None:
    _ip(m, "link", "set", m.switch_port, "master", "br0", "up", netns=m.lab.switch_ns)


def split(lab: Lab, groups: Sequence[Sequence[Machine]]) -> None:
    """Machines in different groups cannot reach each other; machines in no group reach all."""
    rules = []
    for a, ga in enumerate(groups):
        for b, gb in enumerate(groups):
            if a != b and ga and gb:
                src = ", ".join(f'"{m.switch_port}"' for m in ga)
                dst = ", ".join(f'"{m.switch_port}"' for m in gb)
                rules.append(f"iifname {{ {src} }} oifname {{ {dst} }} drop")
    body = "\n    ".join(rules)
    _nft(
        None,
        f"table bridge {SPLIT_TABLE}\ndelete table bridge {SPLIT_TABLE}\n"
        f"table bridge {SPLIT_TABLE} {{\n  chain lab_fwd {{\n"
        f"    type filter hook forward priority 0; policy accept;\n    {body}\n  }}\n}}\n",
        netns=lab.switch_ns,
    )


def join(lab: Lab) -> None:
    _nft(
        None,
        f"table bridge {SPLIT_TABLE}\ndelete table bridge {SPLIT_TABLE}\n",
        netns=lab.switch_ns,
    )


def loss(m: Machine, percent: float, *, direction: str = "both") -> None:
    """Drop each eth0 packet with probability percent/100 (per direction)."""
    if not 0 <= percent <= 100:
        raise ValueError(f"loss percent must be 0..100, not {percent}")
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be one of {sorted(_DIRECTIONS)}, not {direction!r}")
    threshold = min(int(percent / 100 * 2**32), 2**32 - 1)
    cond = "" if percent >= 100 else f"meta random < {threshold} "
    chains = []
    for d in _DIRECTIONS[direction]:
        hook, match = ("input", "iifname") if d == "in" else ("output", "oifname")
        chains.append(
            f"  chain lab_{d} {{\n    type filter hook {hook} priority -10; policy accept;\n"
            f'    {match} "{m.interface}" {cond}drop\n  }}\n'
        )
    _nft(
        m,
        f"table inet {LOSS_TABLE}\ndelete table inet {LOSS_TABLE}\n"
        f"table inet {LOSS_TABLE} {{\n{''.join(chains)}}}\n",
    )


def clear_loss(m: Machine) -> None:
    _nft(m, f"table inet {LOSS_TABLE}\ndelete table inet {LOSS_TABLE}\n")


def delay(m: Machine, ms: int) -> None:
    res = m.run(
        ["tc", "qdisc", "replace", "dev", m.interface, "root", "netem", "delay", f"{int(ms)}ms"],
        check=False,
        timeout=10,
    )
    if res.returncode != 0:
        if "unknown" in res.stderr.lower() or "no such file" in res.stderr.lower():
            raise NotImplementedError(
                "packet delay needs tc netem, and this kernel has none (CONFIG_NET_SCH_NETEM, "
                "CONFIG_NFT_QUEUE and CONFIG_NET_SCH_FQ are all off, so neither netem, a "
                f"userspace queue nor EDT pacing can delay packets; tc said: {res.stderr.strip()})."
                " nftables can drop packets (loss) and tc tbf can limit the rate (throttle)"
            )
        raise RuntimeError(f"tc netem in {m.netns} failed: {res.stderr.strip()}")


def clear_delay(m: Machine) -> None:
    m.run(["tc", "qdisc", "del", "dev", m.interface, "root"], check=False, timeout=10)


def throttle(m: Machine, kbit: int, *, latency_ms: int = 1000) -> None:
    """Limit eth0 egress to kbit/s (tc tbf); packets queue up to latency_ms, then drop."""
    res = m.run(
        [
            "tc",
            "qdisc",
            "replace",
            "dev",
            m.interface,
            "root",
            "tbf",
            "rate",
            f"{int(kbit)}kbit",
            "burst",
            "1600",
            "latency",
            f"{int(latency_ms)}ms",
        ],
        check=False,
        timeout=10,
    )
    if res.returncode != 0:
        raise RuntimeError(f"tc tbf in {m.netns} failed: {res.stderr.strip()}")


def clear_throttle(m: Machine) -> None:
    clear_delay(m)


def restart(m: Machine, *, downtime: float = 0.0) -> None:
    m.stop_all()
    _ip(m, "link", "set", m.interface, "down")
    _ip(m, "addr", "flush", "dev", m.interface)
    _ip(m, "neigh", "flush", "all")
    m.run(["nft", "flush", "ruleset"], check=False, timeout=10)
    clear_delay(m)
    if downtime > 0:
        time.sleep(downtime)
    _ip(m, "addr", "add", f"{m.address}/24", "dev", m.interface)
    _ip(m, "link", "set", m.interface, "up")
