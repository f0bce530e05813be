"""Fleet formation figures (DESIGN §4), each beside its baseline measured in the same run.

1. Cold start: N machines (default 5: 3 server-capable + 2 agent-only; and 20: 5 + 15) all
   started at once on PostgreSQL. Printed: time until every machine has its role and its k3s
   launched, until every k3s is ready, and the stand-in's own readiness (one k3s server started
   alone in the same lab, the baseline). The first server starts alone (D2), so the unavoidable
   chain is two k3s readinesses; the overhead is what k3snoded adds beyond that. Also checks
   that every server serves one cluster CA (no double bootstrap).
2. Datastore load at rest: statements per second per machine over a window, from the daemons'
   own counters. Target ≤ 1.

    .venv/bin/python bench/formation.py [--sizes 5,20] [--runs 3] [--rest 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.lab import dbs
from tests.lab.fleet import FAKE_K3S, PYTHON, Fleet
from tests.lab.netns import Lab

CA_CODE = (
    "import ssl,urllib.request,sys;"
    "c=ssl.create_default_context();c.check_hostname=False;c.verify_mode=ssl.CERT_NONE;"
    "sys.stdout.write(urllib.request.urlopen('https://127.0.0.1:6443/cacerts',"
    "context=c,timeout=5).read().decode())"
)


def standin_readiness(lab: Lab, endpoint: str) -> float:
    """Seconds from exec to READY=1 for one stand-in k3s server alone (the baseline)."""
    m = lab.machines[-1]
    work = lab.workdir / "baseline"
    work.mkdir(exist_ok=True)
    sock = work / "notify.sock"
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(sock))
    s.settimeout(60)
    token = work / "token"
    token.write_text("baseline-token\n")
    token.chmod(0o600)
    t0 = time.monotonic()
    proc = m.spawn(
        [str(FAKE_K3S), "server", "--data-dir", str(work / "k3s"), "--token-file", str(token)],
        env={
            "NOTIFY_SOCKET": str(sock),
            "K3S_FAKE_ROOT": str(work),
            "K3S_DATASTORE_ENDPOINT": endpoint.replace(":5432/k3s", ":5432/baseline"),
        },
    )
    try:
        while b"READY=1" not in s.recv(4096):
            pass
        return time.monotonic() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        s.close()


def cold_start(n: int, eligible: int, servers: int) -> tuple[float, float, float, int]:
    with Lab(n, with_db=True) as lab:
        lab.up()
        db = dbs.start(lab, "postgres")
        baseline = standin_readiness(lab, db.endpoint)
        fleet = Fleet(
            lab, endpoint=db.endpoint, eligible=eligible, agents=n - eligible, servers=servers
        )
        t0 = time.monotonic()
        fleet.start_all()
        launched = ready = 0.0
        deadline = t0 + 180
        while time.monotonic() < deadline:
            st = fleet.statuses()
            now = time.monotonic() - t0
            if not launched and all(
                s is not None and s["node"]["role"] != "none" and s["k3s"]["pid"]
                for s in st.values()
            ):
                launched = now
            if fleet.converged(st):
                ready = now
                break
            time.sleep(0.1)
        if not ready:
            raise SystemExit(f"N={n}: the fleet did not converge in 180 s\n{fleet.table()}")
        st = fleet.statuses()
        server_names = [x for x, s in st.items() if s and s["node"]["role"] == "server"]
        cas = {fleet.node(x).machine.run([str(PYTHON), "-c", CA_CODE]).stdout for x in server_names}
        fleet.stop_all()
        return launched, ready, baseline, len(cas)


def statements_at_rest(window: float) -> tuple[float, float]:
    with Lab(5, with_db=True) as lab:
        lab.up()
        db = dbs.start(lab, "postgres")
        fleet = Fleet(lab, endpoint=db.endpoint, eligible=5, agents=0, servers=2)
        fleet.start_all()
        fleet.wait(fleet.converged, timeout=90, what="fleet formed")
        time.sleep(3)

        def counts() -> dict[str, int]:
            return {n: int(s["counters"]["statements"]) for n, s in fleet.statuses().items() if s}

        a = counts()
        t0 = time.monotonic()
        time.sleep(window)
        b = counts()
        elapsed = time.monotonic() - t0
        rates = [(b[n] - a[n]) / elapsed for n in a]
        fleet.stop_all()
        return statistics.mean(rates), max(rates)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="5,20")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rest", type=float, default=20.0)
    args = ap.parse_args()
    for n in (int(x) for x in args.sizes.split(",")):
        eligible, servers = (3, 2) if n <= 5 else (5, 3)
        rows = [cold_start(n, eligible, servers) for _ in range(args.runs)]
        launched = statistics.median(r[0] for r in rows)
        ready = statistics.median(r[1] for r in rows)
        base = statistics.median(r[2] for r in rows)
        doubles = sum(1 for r in rows if r[3] != 1)
        overhead = ready - 2 * base
        print(
            f"cold start N={n:2d} ({eligible} server-capable, {servers} servers), "
            f"median of {args.runs}: roles decided + k3s launched {launched:.2f} s; "
            f"all ready {ready:.2f} s; stand-in k3s alone {base:.2f} s; "
            f"overhead beyond two k3s readinesses {overhead:.2f} s (target <= 3 s); "
            f"double bootstraps {doubles}/{args.runs}"
        )
    mean, worst = statements_at_rest(args.rest)
    print(
        f"datastore statements at rest: {mean:.2f}/s per machine (worst machine {worst:.2f}/s; "
        f"target <= 1)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
