"""Client-visible outage when the VIP holder goes away: k3snoded's speaker vs keepalived.

    .venv/bin/python bench/vip_failover.py [--runs 5] [--impl ours ka-0.1 ka-1] [--json FILE]

A lab of three servers (n1..n3, priorities 150/100/50, each running a tiny name server on
:6443 that answers with its name) and a client machine. Per run: n1 becomes the stable master,
the client starts a connect to VIP:6443 every 20 ms (1 s timeout each, bounded), then n1 is
hit with SIGTERM, SIGKILL, or a crash (SIGKILL + eth0 down). Outage = time from the fault to
the first answer from another server (lab-findings §3). Every implementation and scenario
runs in the same invocation on the same lab, so the ratios compare like with like.

keepalived's SIGKILL kills the parent and the VRRP child (SIGKILL of the parent alone is a
graceful stop, lab-findings §3). Targets (DESIGN §4): crash ≤ 0.5 s, graceful ≤ 0.15 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.lab import keepalived  # noqa: E402
from tests.lab.netns import Lab, LabError, Machine, ip  # noqa: E402
from tests.lab.test_vrrp_support import auth_args  # noqa: E402

VIP = "198.18.0.100"
PORT = 6443
PRIORITIES = (150, 100, 50)
SCENARIOS = ("sigterm", "sigkill", "crash")
IMPLS = {"ours": 0.1, "ka-0.1": 0.1, "ka-1": 1.0}  # name → advert interval
PY = str(ROOT / ".venv" / "bin" / "python")
HERE = str(Path(__file__).resolve())

# ---- the two helper programs (run inside lab machines) --------------------------------------


async def _serve(name: str, max_seconds: float) -> None:
    async def answer(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(name.encode() + b"\n")
        await w.drain()
        w.close()

    server = await asyncio.start_server(answer, "0.0.0.0", PORT, reuse_address=True)
    async with server:
        await asyncio.sleep(max_seconds)


async def _client(out: Path, max_seconds: float, settle: float) -> None:
    """Connect every 20 ms; stop `settle` s after the answering server changed, or at the limit."""
    results: list[tuple[float, float, str]] = []
    first: str | None = None
    switched_at: float | None = None

    async def one() -> None:
        nonlocal first, switched_at
        t0 = time.monotonic()
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(VIP, PORT), 1.0)
            name = (await asyncio.wait_for(r.readline(), 1.0)).decode().strip()
            w.close()
        except (OSError, TimeoutError) as exc:
            name = f"!{type(exc).__name__}"
        t1 = time.monotonic()
        results.append((t0, t1, name))
        if not name.startswith("!"):
            if first is None:
                first = name
            elif name != first and switched_at is None:
                switched_at = t1

    tasks: set[asyncio.Task[None]] = set()
    end = time.monotonic() + max_seconds
    while time.monotonic() < end:
        if switched_at is not None and time.monotonic() > switched_at + settle:
            break
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        await asyncio.sleep(0.02)
    if tasks:
        await asyncio.wait(tasks, timeout=2)
    out.write_text(json.dumps(results))


# ---- the orchestrator -------------------------------------------------------------------------


@dataclass
class Run:
    impl: str
    scenario: str
    outage: float | None
    failed: int


@dataclass
class Setup:
    lab: Lab
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    kas: list[keepalived.Keepalived] = field(default_factory=list)


def _holds(m: Machine) -> bool:
    return VIP in m.ipv4_addresses()


def _wait(what: str, check: Any, timeout: float) -> None:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _status(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data


def _start_ours(s: Setup) -> None:
    files = []
    for m, prio in zip(s.lab.machines, PRIORITIES, strict=True):
        st = s.lab.workdir / f"bench-{m.name}.json"
        st.unlink(missing_ok=True)
        files.append(st)
        argv = [PY, "-m", "k3snoded.vrrp", "--interface", "eth0", "--vip", f"{VIP}/24"]
        argv += ["--priority", str(prio), "--advert-interval", "0.1", "--status-file", str(st)]
        argv += auth_args(m)  # authenticated adverts, as the daemon sends them
        s.procs.append(m.spawn(argv, cwd=ROOT))
        if m is s.lab.machines[0]:
            _wait("n1 master", lambda: _holds(s.lab.machines[0]), 10)
    _wait("backups", lambda: all(_status(f).get("state") == "backup" for f in files[1:]), 10)


def _start_ka(s: Setup, advert: float) -> None:
    for m, prio in zip(s.lab.machines, PRIORITIES, strict=True):
        state = "MASTER" if m is s.lab.machines[0] else "BACKUP"
        cfg = keepalived.VrrpConfig(vip=f"{VIP}/24", priority=prio, advert_int=advert, state=state)
        ka = keepalived.start(m, cfg)
        s.kas.append(ka)
        if m is s.lab.machines[0]:
            _wait("n1 master", lambda: _holds(s.lab.machines[0]), 15)
    for ka in s.kas:
        ka.vrrp_pid()
    time.sleep(max(0.3, 2 * advert))


def _fault(s: Setup, impl: str, scenario: str) -> float:
    n1 = s.lab.machines[0]
    t = time.monotonic()
    if impl == "ours":
        n1.kill(s.procs[0], signal.SIGTERM if scenario == "sigterm" else signal.SIGKILL)
    elif scenario == "sigterm":
        n1.kill(s.kas[0].proc, signal.SIGTERM)
    else:
        s.kas[0].kill_both()
    if scenario == "crash":
        n1.link_down()
    return t


def _reset(s: Setup) -> None:
    for p in s.procs:
        if p.poll() is None:
            p.kill()
        p.wait(5)
    for ka in s.kas:
        if ka.proc.poll() is None:
            ka.kill_both()
    s.procs.clear()
    s.kas.clear()
    for m in s.lab.machines:
        ip("link", "set", "eth0", "up", netns=m.netns)
        if _holds(m):  # a killed speaker's copy may expire (kernel lifetime) meanwhile
            with contextlib.suppress(LabError):
                ip("addr", "del", f"{VIP}/24", "dev", "eth0", netns=m.netns)
    assert s.lab.client is not None
    ip("neigh", "flush", "all", netns=s.lab.client.netns)


def _one_run(s: Setup, impl: str, scenario: str, index: int) -> Run:
    assert s.lab.client is not None
    advert = IMPLS[impl]
    if impl == "ours":
        _start_ours(s)
    else:
        _start_ka(s, advert)
    out = s.lab.workdir / f"client-{impl}-{scenario}-{index}.json"
    limit = 1.0 + 10 * advert + 4.0
    client = s.lab.client.spawn(
        [PY, HERE, "client", str(out), "--max-seconds", str(limit)], cwd=ROOT
    )
    time.sleep(1.0)  # a stable master answering the client
    t_fault = _fault(s, impl, scenario)
    client.wait(limit + 5)
    results = json.loads(out.read_text())
    answers = [t1 for _t0, t1, name in results if name not in ("n1",) and not name.startswith("!")]
    after = [t for t in answers if t >= t_fault]
    failed = sum(1 for t0, _t1, name in results if name.startswith("!") and t0 >= t_fault)
    _reset(s)
    return Run(impl, scenario, (min(after) - t_fault) if after else None, failed)


def _fmt(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def _table(runs: list[Run], impls: list[str]) -> str:
    head = ["scenario", *(f"{i} outage s" for i in impls)]
    head += [f"ours/{i}" for i in impls if i != "ours" and "ours" in impls]
    rows = [head]
    for sc in SCENARIOS:
        med: dict[str, float] = {}
        row = [sc]
        for impl in impls:
            vals = [r.outage for r in runs if r.impl == impl and r.scenario == sc]
            ok = [v for v in vals if v is not None]
            if ok:
                med[impl] = statistics.median(ok)
            miss = len(vals) - len(ok)
            row.append(_fmt(ok) + (f" [{miss} no failover]" if miss else ""))
        for impl in impls:
            if impl != "ours" and "ours" in impls:
                have = "ours" in med and impl in med and med[impl] > 0
                row.append(f"{med['ours'] / med[impl]:.2f}" if have else "—")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _targets(runs: list[Run]) -> list[str]:
    out = []
    for sc, target in (("crash", 0.5), ("sigterm", 0.15)):
        vals = [r.outage for r in runs if r.impl == "ours" and r.scenario == sc]
        ok = [v for v in vals if v is not None]
        if ok and len(ok) == len(vals):
            med = statistics.median(ok)
            verdict = "PASS" if med <= target else "FAIL"
            out.append(f"target {sc} ≤ {target} s: median {med:.3f} s → {verdict}")
    return out


def orchestrate(runs: int, impls: list[str], scenarios: list[str], json_out: Path | None) -> int:
    results: list[Run] = []
    with Lab(3, with_client=True) as lab:
        for m in lab.machines:
            m.spawn([PY, HERE, "serve", m.name, "--max-seconds", "3600"], cwd=ROOT)
        s = Setup(lab)
        for i in range(runs):
            for impl in impls:
                for sc in scenarios:
                    try:
                        run = _one_run(s, impl, sc, i)
                    except (TimeoutError, OSError, ValueError, subprocess.SubprocessError) as exc:
                        print(f"run {i + 1}/{runs} {impl} {sc} failed: {exc}", flush=True)
                        _reset(s)
                        run = Run(impl, sc, None, 0)
                    results.append(run)
                    shown = f"{run.outage:.3f} s" if run.outage is not None else "no failover"
                    print(f"run {i + 1}/{runs} {impl:7} {sc:8} outage {shown}, "
                          f"{run.failed} failed connects", flush=True)  # fmt: skip
    print()
    print(f"client-visible outage, median (min-max) over {runs} runs; ratio = medians")
    print(_table(results, impls))
    for line in _targets(results):
        print(line)
    if json_out is not None:
        json_out.write_text(json.dumps([r.__dict__ for r in results], indent=1) + "\n")
    return 0 if all(r.outage is not None for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    serve = sub.add_parser("serve")
    serve.add_argument("name")
    serve.add_argument("--max-seconds", type=float, default=3600)
    client = sub.add_parser("client")
    client.add_argument("out", type=Path)
    client.add_argument("--max-seconds", type=float, default=10)
    client.add_argument("--settle", type=float, default=0.3)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--impl", nargs="+", choices=list(IMPLS), default=list(IMPLS))
    p.add_argument("--scenario", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.cmd == "serve":
        asyncio.run(_serve(args.name, args.max_seconds))
        return 0
    if args.cmd == "client":
        asyncio.run(_client(args.out, args.max_seconds, args.settle))
        return 0
    return orchestrate(args.runs, args.impl, args.scenario, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
