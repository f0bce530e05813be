"""The systemd lab's two figures: boot to "k3snoded ready", and k3s's API during an upgrade.

    .venv/bin/python bench/systemd_lab.py [--runs 5] [--suite debian12|debian13] [--dist DIR]

1. Boot: a Debian container (systemd as PID 1) with the .deb installed, configured as a single
   server and the unit enabled before boot; time from starting systemd-nspawn to the unit being
   ``active`` (Type=notify: READY=1, k3s ready). Baseline in the same run: the same root,
   unit not enabled, to ``systemctl is-system-running`` = running. Median of ``--runs``.
2. Upgrade: two servers on PostgreSQL; on the VIP holder ``apt-get install`` a newer .deb and
   ``systemctl restart k3snoded`` (the documented upgrade); k3s's ``/ping`` on that machine is
   probed every 20 ms throughout. Unavailable time = the longest run of failed probes (target:
   0). Baseline: the same probe over an idle window of the same length just before.

Needs root, systemd-nspawn, debootstrap (scripts/setup.sh) and PostgreSQL (scripts/dbctl).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.lab import dbs  # noqa: E402
from tests.lab.netns import Lab  # noqa: E402
from tests.systemd import node as nodes  # noqa: E402
from tests.systemd.conftest import _build, _newer, _version  # noqa: E402
from tests.systemd.nspawn import SUITES, Booted, SystemdLab, cached_root  # noqa: E402
from tests.systemd.probes import Answers  # noqa: E402

SINGLE = "cluster: {name: bench, token_file: /etc/k3snoded/token}\n"


def _deb(dist: Path | None, work: Path) -> Path:
    version = _version()
    if dist is None:
        dist = work / "dist"
        dist.mkdir()
        _build(dist)
    return sorted(dist.glob(f"k3snoded_{version}_*.deb"))[0]


def _until(pred: object, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():  # type: ignore[operator]
            return time.monotonic() - t0
        time.sleep(0.05)
    raise TimeoutError(f"not within {timeout} s")


def boot_once(lab: Lab, root: Path, suite: str, deb: Path, enabled: bool, i: int) -> float:
    m = Booted(lab.machines[0], root, suite=suite)
    m.dir = lab.workdir / f"bench-{i}-{int(enabled)}"
    m.upper, m.work, m.merged = m.dir / "upper", m.dir / "work", m.dir / "merged"
    m.log_path = m.dir / "nspawn.log"
    try:
        m.prepare()
        if enabled:
            m.copy_in(deb, f"/root/{deb.name}")
            m.offline(["apt-get", "install", "-y", f"/root/{deb.name}"])
            nodes.install_fake_k3s(m)
            m.write("/etc/k3snoded/token", nodes.TOKEN + "\n", 0o600)
            m.write("/etc/k3snoded/config.yaml", SINGLE, 0o600)
            m.offline(["systemctl", "enable", "k3snoded"])
        t0 = time.monotonic()
        m.start()
        if enabled:
            _until(lambda: m.sh("systemctl is-active k3snoded", check=False).stdout.strip()
                   == "active", 180)  # fmt: skip
        else:
            _until(lambda: m.sh("systemctl is-system-running", check=False).stdout.strip()
                   in ("running", "degraded"), 180)  # fmt: skip
        return time.monotonic() - t0
    finally:
        m.shutdown()


def bench_boot(suite: str, deb: Path, runs: int) -> None:
    root = cached_root(suite)
    with Lab(1) as lab:
        ready = [boot_once(lab, root, suite, deb, True, i) for i in range(runs)]
        bare = [boot_once(lab, root, suite, deb, False, i) for i in range(runs)]
    med, base = statistics.median(ready), statistics.median(bare)
    print(
        f"boot to k3snoded ready ({suite}): median {med:.2f} s "
        f"(min {min(ready):.2f}, max {max(ready):.2f}, n={runs}); "
        f"baseline boot to running without k3snoded: median {base:.2f} s; ratio {med / base:.2f}"
    )


def bench_upgrade(suite: str, deb: Path, newer: Path) -> None:
    with Lab(2, with_db=True) as lab:
        db = dbs.start(lab, "postgres")
        booted = SystemdLab(lab, SUITES_BY_NAME[suite]).boot(lab.machines)
        spec = nodes.FleetSpec(endpoint=db.endpoint, servers=2)
        for m in booted:
            nodes.setup_node(m, deb, spec)
            nodes.enable_now(m, no_block=True)
        for m in booted:
            _until(lambda m=m: bool((s := nodes.status(m)) and s["k3s"]["ready"]), 240)
        _until(lambda: any(nodes.holds_vip(m) for m in booted), 60)
        holder = next(m for m in booted if nodes.holds_vip(m))
        url = "https://127.0.0.1:6443/ping"
        t0 = time.monotonic()
        probe = Answers(holder.machine.netns, url, every=0.02).start()
        nodes.install_package(holder, newer)
        holder.systemctl("restart", "k3snoded")
        _until(lambda: bool((s := nodes.status(holder)) and s["k3s"]["ready"]), 60)
        time.sleep(2)
        probe.stop()
        window = time.monotonic() - t0
        idle = Answers(holder.machine.netns, url, every=0.02).start()
        time.sleep(window)
        idle.stop()
    down = max(probe.false_runs(), default=0.0)
    base = max(idle.false_runs(), default=0.0)
    print(
        f"k3s API unavailable during upgrade + restart ({suite}): {down:.3f} s "
        f"({len(probe.samples)} probes over {window:.1f} s, "
        f"{sum(not ok for _, ok in probe.samples)} failed); "
        f"baseline idle window: {base:.3f} s ({len(idle.samples)} probes)"
    )


SUITES_BY_NAME = {v: v for v in SUITES.values()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--suite", choices=sorted(SUITES), default="debian12")
    p.add_argument("--dist", type=Path, help="directory with a built .deb (default: build one)")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench/systemd_lab.py needs root", file=sys.stderr)
        return 1
    suite = SUITES[args.suite]
    with tempfile.TemporaryDirectory(prefix="k3snoded-bench-") as tmp:
        work = Path(tmp)
        deb = _deb(args.dist, work)
        newer, _ = _newer(deb, work, _version())
        print(f"systemd lab bench, {time.strftime('%Y-%m-%d')}, {args.suite} ({suite}), {deb.name}")
        bench_boot(suite, deb, args.runs)
        bench_upgrade(suite, deb, newer)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except subprocess.CalledProcessError as err:
        print(err.stderr, file=sys.stderr)
        raise
