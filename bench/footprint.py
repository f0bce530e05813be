"""Resident memory and idle CPU of a running k3snoded, beside keepalived measured in the same run.

k3snoded runs as a server of a one-machine fleet on PostgreSQL (heartbeats, coordinator lease,
the VRRP speaker at its default 0.1 s advert, mDNS, the peer API), with the stand-in k3s ready.
keepalived (VRRPv3, the same 0.1 s advert, a different VRID) runs in a second machine of the same
lab. Both are sampled from /proc over the same window. k3snoded's figure is the daemon plus its
helper process (the VIP guard), not k3s. Targets (issue 14): ≤ 40 MB RSS and ≤ 4x keepalived's
CPU at 0.1 s adverts (stretch: 25 MB, 2x); without the VIP, idle CPU ≤ 0.1 % of a core.

    .venv/bin/python bench/footprint.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.lab import dbs, keepalived
from tests.lab.fleet import Fleet
from tests.lab.netns import Lab

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time of the process's live threads in ns resolution (schedstat); utime + stime
    counts 10 ms clock ticks: 0.03 % of a 30 s window, a third of the idle target."""
    total = 0.0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0]) / 1e9
        return total
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def wakeups(pid: int) -> int:
    """Voluntary context switches of the process's threads: each is a sleep and a wake-up."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def guard_pids(daemon: int) -> list[int]:
    """The daemon's helper processes (the VIP guard), found among its children."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == daemon and b"k3snoded-vip-guard" in cmdline:
            out.append(int(stat.parent.name))
    return out


def private_mb(pid: int) -> tuple[float, float]:
    """(PSS, USS) in MB from smaps_rollup: shared libraries counted proportionally / not at all."""
    pss = uss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key == "Pss":
            pss = int(rest.split()[0])
        elif key in ("Private_Clean", "Private_Dirty"):
            uss += int(rest.split()[0])
    return pss / 1024, uss / 1024


def sample(pids: list[int], seconds: float) -> tuple[float, float, float, float, float]:
    """(peak summed RSS MB, CPU % of one core, PSS MB, USS MB at the end, wake-ups/s) over
    the window."""
    start = {p: cpu_seconds(p) for p in pids}
    woke = {p: wakeups(p) for p in pids}
    t0 = time.monotonic()
    peak = 0.0
    while time.monotonic() - t0 < seconds:
        peak = max(peak, sum(rss_mb(p) for p in pids))
        time.sleep(1.0)
    elapsed = time.monotonic() - t0
    used = sum(cpu_seconds(p) - start[p] for p in pids)
    rate = sum(wakeups(p) - woke[p] for p in pids) / elapsed
    pss = sum(private_mb(p)[0] for p in pids)
    uss = sum(private_mb(p)[1] for p in pids)
    return peak, 100.0 * used / elapsed, pss, uss, rate


Sample = tuple[float, float, float, float, float]


def measure(seconds: float, *, vip: bool) -> dict[str, Sample]:
    """One lab: a one-server fleet (VIP on or off) and, with the VIP, keepalived beside it."""
    import threading

    with Lab(2, with_db=True) as lab:
        lab.up()
        db = dbs.start(lab, "postgres")
        fleet = Fleet(lab, endpoint=db.endpoint, eligible=1, agents=0, servers=1, vip=vip)
        fleet.start_all()
        fleet.wait(fleet.converged, timeout=60, what="the server ready")
        node = fleet.nodes[0]
        assert node.proc is not None
        time.sleep(1.0)  # the VIP guard starts with the speaker
        targets: dict[str, list[int]] = {"k3snoded": [node.proc.pid, *guard_pids(node.proc.pid)]}
        ka = None
        if vip:
            ka = keepalived.start(
                lab.machines[1],
                keepalived.VrrpConfig(vip="198.18.0.200/24", vrid=52, priority=150, advert_int=0.1),
            )
            targets["keepalived"] = [ka.pid, ka.vrrp_pid()]
            k3s_pid = (node.status() or {}).get("k3s", {}).get("pid")
            if k3s_pid:
                targets["stand-in k3s"] = [k3s_pid]
        time.sleep(3)  # let start-up settle: we measure the idle steady state
        print(f"sampling {seconds:.0f} s of steady state (VIP {'on' if vip else 'off'}) ...")
        results: dict[str, Sample] = {}

        def run(name: str, pids: list[int]) -> None:
            results[name] = sample(pids, seconds)

        threads = [threading.Thread(target=run, args=item) for item in targets.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if ka is not None:
            ka.stop()
        return results


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    with_vip = measure(args.seconds, vip=True)
    without = measure(args.seconds, vip=False)
    d_rss, d_cpu, d_pss, d_uss, d_wake = with_vip["k3snoded"]
    n_rss, n_cpu, n_pss, n_uss, n_wake = without["k3snoded"]
    k_rss, k_cpu, k_pss, k_uss, k_wake = with_vip["keepalived"]
    print(
        f"footprint k3snoded + VIP guard, server + VIP master (advert 0.1 s): RSS {d_rss:5.1f} MB "
        f"(PSS {d_pss:.1f}, USS {d_uss:.1f})  CPU {d_cpu:5.2f} % of a core, "
        f"{d_wake:.1f} wake-ups/s"
    )
    print(
        f"footprint k3snoded, server, VIP disabled            : RSS {n_rss:5.1f} MB "
        f"(PSS {n_pss:.1f}, USS {n_uss:.1f})  CPU {n_cpu:5.2f} % of a core, "
        f"{n_wake:.1f} wake-ups/s"
    )
    print(
        f"baseline  keepalived, master (advert 0.1 s)          : RSS {k_rss:5.1f} MB "
        f"(PSS {k_pss:.1f}, USS {k_uss:.1f})  CPU {k_cpu:5.2f} % of a core (2 processes), "
        f"{k_wake:.1f} wake-ups/s"
    )
    if "stand-in k3s" in with_vip:
        s_rss, s_cpu, _, _, _ = with_vip["stand-in k3s"]
        print(f"(stand-in k3s, for context: RSS {s_rss:.1f} MB, CPU {s_cpu:.2f} %)")
    print(
        f"ratio k3snoded/keepalived: RSS {d_rss / max(k_rss, 0.01):.1f}x, "
        f"CPU {d_cpu / max(k_cpu, 0.001):.1f}x"
    )
    ratio = d_cpu / max(k_cpu, 0.001)
    print(
        f"target RSS <= 40 MB (stretch 25): {'met' if d_rss <= 40.0 else 'MISSED'}; "
        f"target CPU <= 4x keepalived (stretch 2x): {'met' if ratio <= 4 else 'MISSED'}; "
        f"target idle CPU without the VIP <= 0.1 %: {'met' if n_cpu <= 0.1 else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
