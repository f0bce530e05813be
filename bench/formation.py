"""Fleet formation figures (DESIGN §4), each beside its baseline measured in the same run.

1. Cold start: N machines (default 5: 3 server-capable + 2 agent-only; and 20: 5 + 15) all
   started at once on PostgreSQL. Printed: time until every machine has its role and its k3s
   launched, until every k3s is ready, and the baseline: k3s's own readiness along the guide's
   procedure done perfectly by hand on the same lab machines (first server alone until ready,
   then all other servers and agents at once). All machines of the lab share this host's two
   cores, so both figures include the same CPU contention. The overhead is the difference.
   The fleet's times are those of the daemons' own log lines (each machine's latest k3s
   launch and readiness), stamped as they appear; the daemons' status is asked every 0.5 s
   only to confirm that the fleet formed. Also checks that every server serves one cluster CA
   (no double bootstrap). ``--timeline FILE``: one cold start, every stamped log line to FILE
   and a table of when each machine reached each formation step (bench/timeline.py).
2. Datastore load at rest: statements per second per machine over a window, from the daemons'
   own counters. Target ≤ 1.

    .venv/bin/python bench/formation.py [--sizes 5,20] [--runs 3] [--rest 20] [--timeline F]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import timeline as tl
from tests.lab import dbs
from tests.lab.fleet import FAKE_K3S, PYTHON, Fleet
from tests.lab.netns import Lab

POLL = 0.5  # seconds between two rounds of status requests while the fleet forms
CA_CODE = (
    "import ssl,urllib.request,sys;"
    "c=ssl.create_default_context();c.check_hostname=False;c.verify_mode=ssl.CERT_NONE;"
    "sys.stdout.write(urllib.request.urlopen('https://127.0.0.1:6443/cacerts',"
    "context=c,timeout=5).read().decode())"
)


def manual_procedure(lab: Lab, endpoint: str, servers: int) -> float:
    """The baseline: the guide's procedure done perfectly by hand, with the same machines and
    the same CPU. The first stand-in k3s server alone until READY=1, then every other server
    and every agent at once until all sent READY=1. Seconds from the first exec."""
    import socket

    work = lab.workdir / "baseline"
    work.mkdir(exist_ok=True)
    token = work / "token"
    token.write_text("baseline-token\n")
    token.chmod(0o600)
    ds = endpoint.replace(":5432/k3s", ":5432/baseline")
    first = lab.machines[0]
    procs = []
    socks = []

    def start(i: int, role: str) -> socket.socket:
        m = lab.machines[i]
        d = work / m.name
        d.mkdir(exist_ok=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(str(d / "notify.sock"))
        s.settimeout(120)
        argv = [str(FAKE_K3S), role, "--data-dir", str(d / "k3s"), "--token-file", str(token)]
        argv += ["--node-name", f"b-{m.name}", "--node-ip", m.address]
        env = {"NOTIFY_SOCKET": str(d / "notify.sock"), "K3S_FAKE_ROOT": str(d)}
        if role == "server":
            env["K3S_DATASTORE_ENDPOINT"] = ds
        else:
            argv += ["--server", f"https://{first.address}:6443"]
        procs.append(m.spawn(argv, env=env))
        socks.append(s)
        return s

    def ready(s: socket.socket) -> None:
        while b"READY=1" not in s.recv(4096):
            pass

    try:
        t0 = time.monotonic()
        ready(start(0, "server"))
        rest = [start(i, "server" if i < servers else "agent") for i in range(1, len(lab.machines))]
        for s in rest:
            ready(s)
        return time.monotonic() - t0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        for s in socks:
            s.close()


def cold_start(
    n: int, eligible: int, servers: int, trace: Path | None = None
) -> tuple[float, float, float, int]:
    with Lab(n, with_db=True) as lab:
        lab.up()
        db = dbs.start(lab, "postgres")
        baseline = manual_procedure(lab, db.endpoint, servers)
        fleet = Fleet(
            lab, endpoint=db.endpoint, eligible=eligible, agents=n - eligible, servers=servers
        )
        names = [x.name for x in fleet.nodes]
        t0 = time.monotonic()
        tail = tl.LogTail({x.name: x.log_path for x in fleet.nodes}, t0).start()
        fleet.start_all()
        converged = False
        deadline = t0 + 180
        try:
            # Times come from the daemons' log lines (stamped within 20 ms); the status of
            # every machine is asked only every 0.5 s, to confirm the fleet formed: asking 20
            # daemons ten times a second took CPU from the formation it was timing.
            while not converged and time.monotonic() < deadline:
                time.sleep(POLL)
                converged = fleet.converged(fleet.statuses())
        finally:
            tail.stop()
        if not converged:
            raise SystemExit(f"N={n}: the fleet did not converge in 180 s\n{fleet.table()}")
        launched, ready = tl.formed(tail.lines, names)
        st = fleet.statuses()
        server_names = [x for x, s in st.items() if s and s["node"]["role"] == "server"]
        cas = {fleet.node(x).machine.run([str(PYTHON), "-c", CA_CODE]).stdout for x in server_names}
        if trace is not None:
            tl.write(tail.lines, trace)
            print(tl.table(tl.steps(tail.lines, names)))
            cpu = [tl.cpu_seconds(x.proc.pid) for x in fleet.nodes if x.proc is not None]
            print(f"the {len(cpu)} daemons' CPU until now: {sum(cpu):.2f} s (max {max(cpu):.2f})")
            print(f"launched {launched:.2f} s, ready {ready:.2f} s, baseline {baseline:.2f} s")
        fleet.stop_all()
        return launched, ready, baseline, len(cas)


def statements_at_rest(window: float, kind: dbs.Kind) -> tuple[float, float]:
    with Lab(5, with_db=True) as lab:
        lab.up()
        db = dbs.start(lab, kind)
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
    ap.add_argument(
        "--timeline",
        type=Path,
        help="one cold start of the first size only: every daemon's log line, stamped, to this "
        "file, and a table of when each machine reached each formation step",
    )
    args = ap.parse_args()
    if args.timeline:
        n = int(args.sizes.split(",")[0])
        eligible, servers = (3, 2) if n <= 5 else (5, 3)
        cold_start(n, eligible, servers, args.timeline)
        return 0
    for n in (int(x) for x in args.sizes.split(",")):
        eligible, servers = (3, 2) if n <= 5 else (5, 3)
        rows = [cold_start(n, eligible, servers) for _ in range(args.runs)]
        launched = statistics.median(r[0] for r in rows)
        ready = statistics.median(r[1] for r in rows)
        base = statistics.median(r[2] for r in rows)
        doubles = sum(1 for r in rows if r[3] != 1)
        overhead = ready - base
        print(
            f"cold start N={n:2d} ({eligible} server-capable, {servers} servers), "
            f"median of {args.runs}: roles decided + k3s launched {launched:.2f} s; "
            f"all ready {ready:.2f} s; the guide's procedure by hand on the same machines "
            f"{base:.2f} s; overhead {overhead:.2f} s (target <= 3 s); "
            f"double bootstraps {doubles}/{args.runs}"
        )
    for kind in ("postgres", "mysql"):
        mean, worst = statements_at_rest(args.rest, kind)
        print(
            f"datastore statements at rest ({kind}, 5 machines): {mean:.2f}/s per machine "
            f"(worst machine {worst:.2f}/s; target <= 1)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
