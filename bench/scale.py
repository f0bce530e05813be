"""The fleet at scale: 10, 100 and 1,000 members on one real PostgreSQL and one real MariaDB.

Each member is the real ``k3snoded.fleet.FleetRoles`` (heartbeat, reads, coordinator lease,
``election.decide``, role writes) on the real datastore code (``open_datastore``: one
connection and one worker thread per member, as in the daemon), with a stand-in supervisor
whose k3s is ready ``--ready-delay`` s after it is wanted, and no VIP. Members run in a few
worker processes (``--per-process``). The databases are private instances started with
``scripts/dbctl`` on their own ports and directory (``max_connections`` 1,200), so the shared
test servers are not touched, and stopped at the end.

Per size: formation (every member assigned, the servers ready), then a window at rest that
prints statements/s and rows read/s per member and in total (the members' own counters, and
the server's: PostgreSQL ``xact_commit`` and rows fetched from ``k3snoded_members``; MariaDB
``Com_*`` and ``Handler_read_*``), the coordinator's decision time (``election.decide`` alone,
and the whole coordinator step of the cycle that wrote the decision), then a server's member is
crashed (its task cancelled, nothing released) and the time until another member is assigned
server and reports its k3s ready is printed beside ``dead_after`` + 5 s. Fleet shape: 5
server-capable members, the rest agents (node.role agent), ``servers.count`` 3; every other
setting at its default.

    .venv/bin/python bench/scale.py [--sizes 10,100,1000] [--db postgres,mysql] [--rest 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PY = str(ROOT / ".venv" / "bin" / "python")
DBCTL = str(ROOT / "scripts" / "dbctl")
PORTS = {"postgres": 55432, "mysql": 53306}
DB_DIR = "/var/tmp/k3snoded-scale"
ELIGIBLE, COUNT = 5, 3


def _dbctl(*args: str) -> str:
    env = {
        **os.environ,
        "DB_DIR": DB_DIR,
        "PG_PORT": str(PORTS["postgres"]),
        "MYSQL_PORT": str(PORTS["mysql"]),
        "PG_MAX_CONNECTIONS": "1200",
        "MYSQL_MAX_CONNECTIONS": "1200",
    }
    out = subprocess.run(
        [DBCTL, *args], check=False, env=env, capture_output=True, text=True, timeout=300
    )
    if out.returncode:
        raise SystemExit(f"dbctl {' '.join(args)} failed: {out.stderr}")
    return out.stdout


def endpoint(kind: str, database: str) -> str:
    if kind == "postgres":
        return f"postgres://k3s:k3s@127.0.0.1:{PORTS[kind]}/{database}?sslmode=disable"
    return f"mysql://k3s:k3s@tcp(127.0.0.1:{PORTS[kind]})/{database}"


class Db:
    """The orchestrator's own connection: fresh databases, the fleet's state, server counters."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.database = ""
        if kind == "postgres":
            import psycopg2

            self.admin = psycopg2.connect(
                host="127.0.0.1", port=PORTS[kind], user="k3s", password="k3s", dbname="postgres"
            )
        else:
            import pymysql

            self.admin = pymysql.connect(
                host="127.0.0.1", port=PORTS[kind], user="k3s", password="k3s", autocommit=True
            )
        if kind == "postgres":
            self.admin.autocommit = True
        self.conn: Any = None

    def fresh(self, database: str) -> None:
        self.database = database
        with self.admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {database}")
            cur.execute(f"CREATE DATABASE {database}")
        if self.kind == "postgres":
            import psycopg2

            self.conn = psycopg2.connect(
                host="127.0.0.1", port=PORTS["postgres"], user="k3s", password="k3s",
                dbname=database,
            )  # fmt: skip
            self.conn.autocommit = True
        else:
            import pymysql

            self.conn = pymysql.connect(
                host="127.0.0.1", port=PORTS["mysql"], user="k3s", password="k3s",
                database=database, autocommit=True,
            )  # fmt: skip

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())

    def fleet(self) -> dict[str, tuple[str | None, str, bool]]:
        """name -> (assigned, running role, ready)."""
        try:
            rows = self.query("SELECT name, assigned, role, ready FROM k3snoded_members")
        except Exception:  # the table appears with the first member
            return {}
        return {str(n): (a, str(r), bool(ok)) for n, a, r, ok in rows}

    def counters(self) -> tuple[float, float]:
        """(statements, member rows read) so far, as the server counts them."""
        if self.kind == "postgres":
            (xacts,) = self.query(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database "
                f"WHERE datname = '{self.database}'"
            )[0]
            fetched = self.query(
                "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) "
                "FROM pg_stat_user_tables WHERE relname = 'k3snoded_members'"
            )
            return float(xacts), float(fetched[0][0]) if fetched else 0.0
        status = dict(self.query("SHOW GLOBAL STATUS"))
        statements = sum(
            float(status.get(k, 0))
            for k in ("Com_select", "Com_insert", "Com_update", "Com_delete", "Com_do")
        )
        rows = sum(float(v) for k, v in status.items() if str(k).startswith("Handler_read_"))
        return statements, rows

    def close(self) -> None:
        for c in (self.conn, self.admin):
            with contextlib.suppress(Exception):
                c.close()


# ---- the worker: members in one process ----------------------------------------------------


def worker(args: argparse.Namespace) -> int:
    from bench.scale_member import run_members

    asyncio.run(run_members(args))
    return 0


# ---- the orchestrator ---------------------------------------------------------------------------


def _snapshots(work: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for f in work.glob("snap-*.json"):
        with contextlib.suppress(OSError, ValueError):
            out.update(json.loads(f.read_text()))
    return out


def _wait(what: str, check: Any, timeout: float, poll: float = 0.2) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if check():
            return time.monotonic() - t0
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _formed(db: Db, n: int) -> bool:
    rows = db.fleet()
    if len(rows) < n or any(a is None for a, _r, _ok in rows.values()):
        return False
    servers = [ok and r == "server" for a, r, ok in rows.values() if a == "server"]
    return len(servers) == COUNT and all(servers)


def run_size(
    kind: str,
    n: int,
    rest: float,
    per_process: int,
    ready_delay: float,
    baseline: bool = False,
    kills: int = 2,
) -> str:
    db = Db(kind)
    db.fresh(f"scale_{n}")
    work = Path(f"/tmp/k3snoded-scale-{os.getpid()}-{kind}-{n}")
    work.mkdir(parents=True, exist_ok=True)
    for f in work.glob("*"):
        f.unlink()
    procs = []
    try:
        for first in range(0, n, per_process):
            argv = [PY, __file__, "worker", "--endpoint", endpoint(kind, db.database)]
            argv += ["--first", str(first), "--count", str(min(per_process, n - first))]
            argv += ["--eligible", str(ELIGIBLE), "--servers", str(COUNT), "--work", str(work)]
            argv += ["--ready-delay", str(ready_delay), *(["--baseline"] if baseline else [])]
            err = (work / f"err-{first}.log").open("wb")
            procs.append(subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err))
        formed = _wait(f"{n} members formed", lambda: _formed(db, n), 120 + n / 5)
        time.sleep(max(5.0, 2 * 3.0))  # the coordinator's last decision settles
        a, sa, ta = _snapshots(work), db.counters(), time.monotonic()
        time.sleep(rest)
        b, sb, tb = _snapshots(work), db.counters(), time.monotonic()
        dt = tb - ta
        names = [x for x in b if x in a]
        st = {x: (b[x]["statements"] - a[x]["statements"]) / dt for x in names}
        rows = {x: (b[x]["rows"] - a[x]["rows"]) / dt for x in names}
        coord = next(x for x in names if b[x]["coordinator"])
        agents = [x for x in names if x != coord]
        decide_ms = [v for x in names for v in b[x]["decide_ms"]]
        # Crash a server that is not the coordinator, at a random phase of its heartbeat
        # cycle, and wait for a ready replacement; twice (5 server-capable, 3 seats).
        replace_s: list[float] = []
        dead: set[str] = set()
        for _ in range(kills):
            time.sleep(random.uniform(0.0, 3.0))
            fleet = db.fleet()
            victim = sorted(
                x for x, (a_, _r, _ok) in fleet.items() if a_ == "server" and x != coord
            )[0]
            dead.add(victim)
            (work / "kill").write_text("\n".join(sorted(dead)))

            def replaced(victim: str = victim) -> bool:
                rows_ = db.fleet()
                ready = [
                    x for x, (a_, r, ok) in rows_.items() if a_ == "server" and r == "server" and ok
                ]
                return victim not in ready and len(ready) == COUNT

            try:
                replace_s.append(_wait(f"a replacement for {victim}", replaced, 60.0, poll=0.1))
            except TimeoutError:
                replace_s.append(float("inf"))  # printed as "inf": not replaced in 60 s
                break
        time.sleep(1.0)
        c = _snapshots(work)
        step_ms = c[coord]["decision_step_ms"] if c.get(coord) else []
        server_st = (sb[0] - sa[0]) / dt
        server_rows = (sb[1] - sa[1]) / dt
        return (
            f"scale {kind:8} N={n:4d}{' BASELINE every member reads every row' if baseline else ''}"
            f": formed in {formed:5.1f} s; at rest per member "
            f"{statistics.mean(st[x] for x in agents):.2f} st/s (max {max(st.values()):.2f}, "
            f"coordinator {st[coord]:.2f}), rows read "
            f"{statistics.mean(rows[x] for x in agents):.1f}/s "
            f"(coordinator {rows[coord]:.0f}/s); total {sum(st.values()):.0f} st/s, "
            f"{sum(rows.values()):.0f} rows/s; server counted {server_st:.0f} st/s, "
            f"{server_rows:.0f} member rows examined/s; decide() "
            f"{statistics.median(decide_ms) if decide_ms else 0:.1f} ms median "
            f"(max {max(decide_ms) if decide_ms else 0:.1f}); replacement decision steps "
            f"{', '.join(f'{x:.0f}' for x in step_ms[-kills:])} ms; dead server replaced in "
            f"{', '.join(f'{x:.1f}' for x in replace_s)} s (target <= dead_after + 5 = 15 s)"
        )
    finally:
        (work / "stop").write_text("")
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        db.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    w = sub.add_parser("worker")
    w.add_argument("--endpoint", required=True)
    w.add_argument("--first", type=int, required=True)
    w.add_argument("--count", type=int, required=True)
    w.add_argument("--eligible", type=int, default=ELIGIBLE)
    w.add_argument("--servers", type=int, default=COUNT)
    w.add_argument("--work", type=Path, required=True)
    w.add_argument("--ready-delay", type=float, default=1.0)
    w.add_argument("--baseline", action="store_true")
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--db", default="postgres,mysql")
    ap.add_argument("--rest", type=float, default=30.0)
    ap.add_argument("--per-process", type=int, default=125)
    ap.add_argument("--ready-delay", type=float, default=1.0)
    ap.add_argument(
        "--baseline",
        default="",
        help="sizes also run with every member reading every row (the code before the change)",
    )
    ap.add_argument("--keep-dbs", action="store_true", help="leave the private servers running")
    args = ap.parse_args()
    if args.cmd == "worker":
        return worker(args)
    kinds = args.db.split(",")
    for kind in kinds:
        _dbctl("start", kind)
    try:
        for kind in kinds:
            for n in (int(x) for x in args.sizes.split(",")):
                print(run_size(kind, n, args.rest, args.per_process, args.ready_delay), flush=True)
            for n in (int(x) for x in args.baseline.split(",") if x):
                line = run_size(kind, n, args.rest, args.per_process, args.ready_delay, True)
                print(line, flush=True)
    finally:
        if not args.keep_dbs:
            for kind in kinds:
                _dbctl("stop", kind)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
