"""Two VRRP masters under packet loss: k3snoded's speaker beside keepalived, same interval and loss.

Three machines (priorities 150/100/50, advert 0.1 s) settle with n1 as master; then every
machine drops ``--loss`` % of its eth0 packets both ways (nftables ``meta random``, 20 % by
default: an advert is lost end to end 36 % of the time, three in a row make a backup master)
for ``--seconds``. A sampler reads every machine's addresses every ~10 ms. Printed per
implementation: the time with two holders or more (in total, and its longest stretch), the
number of such episodes, and the VIP moves. keepalived runs unauthenticated (Debian's has no
auth_hmac); ours runs authenticated, as the daemon does by default.

    .venv/bin/python bench/vip_loss.py [--runs 3] [--loss 20] [--seconds 30]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.lab import keepalived  # noqa: E402
from tests.lab.netns import Lab  # noqa: E402
from tests.lab.test_vrrp_support import VIP, Sampler, holders, start_ours, wait_for  # noqa: E402

PRIORITIES = (150, 100, 50)


def episodes(sampler: Sampler, since: float) -> tuple[float, float, int, int]:
    """(total s with >= 2 holders, longest stretch, episodes, moves of the VIP) since."""
    samples = [s for s in sampler.samples if s[0] >= since]
    total = longest = 0.0
    count = moves = 0
    start: float | None = None
    last_single: frozenset[str] | None = None
    for (t, held), (t_next, _) in itertools.pairwise(samples):
        if len(held) >= 2:
            if start is None:
                start, count = t, count + 1
            total += t_next - t
        elif start is not None:
            longest, start = max(longest, t - start), None
        if len(held) == 1:
            if last_single is not None and held != last_single:
                moves += 1
            last_single = held
    return total, longest, count, moves


def one_run(impl: str, loss: float, seconds: float) -> tuple[float, float, int, int]:
    with Lab(3) as lab:
        lab.up()
        machines = lab.machines
        kas = []
        if impl == "ours":
            first = start_ours(machines[0], PRIORITIES[0])
            wait_for("n1 master", lambda: first.state() == "master", timeout=10)
            others = [start_ours(m, p) for m, p in zip(machines[1:], PRIORITIES[1:], strict=True)]
            wait_for("backups", lambda: all(s.state() == "backup" for s in others), timeout=10)
        else:
            for m, prio in zip(machines, PRIORITIES, strict=True):
                state = "MASTER" if m is machines[0] else "BACKUP"
                cfg = keepalived.VrrpConfig(vip=f"{VIP}/24", priority=prio, advert_int=0.1,
                                            state=state)  # fmt: skip
                kas.append(keepalived.start(m, cfg))
        wait_for("one holder", lambda: holders(machines) == {"n1"}, timeout=15)
        time.sleep(1.0)
        with Sampler(machines, max_seconds=seconds + 10) as sampler:
            time.sleep(0.5)
            since = time.monotonic()
            for m in machines:
                m.loss(loss)
            time.sleep(seconds)
            for m in machines:
                m.clear_loss()
            time.sleep(0.5)
        for ka in kas:
            ka.stop()
        return episodes(sampler, since)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--loss", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    results: dict[str, list[tuple[float, float, int, int]]] = {"ours": [], "keepalived": []}
    for i in range(args.runs):
        for impl, rows in results.items():
            r = one_run(impl, args.loss, args.seconds)
            rows.append(r)
            print(f"run {i + 1} {impl:10}: two holders {r[0]:.2f} s in all, longest {r[1]:.2f} s, "
                  f"{r[2]} episodes, {r[3]} moves", flush=True)  # fmt: skip
    for impl, rows in results.items():
        print(
            f"vip under {args.loss:.0f} % loss, {args.seconds:.0f} s, advert 0.1 s, {impl}: "
            f"two holders median {statistics.median(r[0] for r in rows):.2f} s in all "
            f"(longest stretch max {max(r[1] for r in rows):.2f} s), "
            f"{statistics.median(r[2] for r in rows):.0f} episodes, "
            f"{statistics.median(r[3] for r in rows):.0f} moves (median of {args.runs})"
        )
    ours = statistics.median(r[0] for r in results["ours"])
    ka = statistics.median(r[0] for r in results["keepalived"])
    print(f"ratio ours/keepalived (time with two holders): {ours / ka:.2f}" if ka else
          "keepalived had no two-holder time")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
