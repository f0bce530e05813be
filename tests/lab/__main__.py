"""Command line for the lab (run as root from the repository root).

    python -m tests.lab up N [--name lab] [--db mysql|postgres] [--client]
    python -m tests.lab status [NAME]
    python -m tests.lab exec [--name lab] MACHINE CMD...
    python -m tests.lab down [NAME] | --orphans

``up`` leaves the lab running and records it in /run/k3snoded-lab/NAME.json, which ``down`` reads.
``down --orphans`` removes every recorded lab whose owning process is gone (crashed test runs and
labs made by ``up``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from tests.lab import dbs, procs
from tests.lab.netns import Lab, LabError, list_namespaces, saved_labs

DEFAULT_NAME = "lab"


def _up(args: argparse.Namespace) -> int:
    lab = Lab(args.n, name=args.name, with_client=args.client, with_db=args.db is not None)
    lab.up()
    try:
        if args.db:
            db = dbs.start(lab, args.db)
            lab.extra["db"] = args.db
            lab.extra["endpoint"] = db.endpoint
    except BaseException:
        lab.down()
        raise
    lab.detach()
    _print_status(lab)
    return 0


def _print_status(lab: Lab) -> None:
    existing = set(list_namespaces())
    owner = "detached" if lab.detached else f"owner pid {lab.owner_pid}"
    if not lab.detached and not procs.alive(lab.owner_pid):
        owner += " (gone: orphan)"
    print(f"lab {lab.prefix}: {len(lab.all_machines)} machines, {owner}, workdir {lab.workdir}")
    if lab.extra.get("endpoint"):
        print(f"  datastore: {lab.extra['endpoint']}")
    for m in lab.all_machines:
        if m.netns not in existing:
            print(f"  {m.name:<7} {m.netns:<18} MISSING")
            continue
        addrs = ",".join(sorted(m.ipv4_addresses())) or "-"
        print(f"  {m.name:<7} {m.netns:<18} {m.mac}  {addrs:<32} {len(m.pids())} processes")


def _status(args: argparse.Namespace) -> int:
    names = [args.name] if args.name else saved_labs()
    if not names:
        print("no labs")
    for name in names:
        _print_status(Lab.attach(name))
    return 0


def _exec(args: argparse.Namespace) -> int:
    lab = Lab.attach(args.name)
    m = lab.machine(args.machine)
    if not args.cmd:
        print("exec: give a command", file=sys.stderr)
        return 2
    os.execvp("ip", ["ip", "netns", "exec", m.netns, *args.cmd])


def _down_one(name: str) -> None:
    lab = Lab.attach(name)
    kind = lab.extra.get("db")
    if kind in dbs.PORTS:
        try:
            dbs.stop(lab, kind)
        except Exception as exc:  # the servers are ended by PID below anyway
            print(f"lab {name}: stopping {kind} failed: {exc}", file=sys.stderr)
    lab.down()
    print(f"lab {name}: down")


def _down(args: argparse.Namespace) -> int:
    if args.orphans:
        names = [
            n
            for n in saved_labs()
            if not procs.alive(Lab.attach(n).owner_pid) or Lab.attach(n).detached
        ]
    else:
        names = [args.name or DEFAULT_NAME]
    for name in names:
        _down_one(name)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.lab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("up", help="bring up N machines and leave them running")
    p.add_argument("n", type=int)
    p.add_argument("--name", default=DEFAULT_NAME)
    p.add_argument("--db", choices=sorted(dbs.PORTS))
    p.add_argument("--client", action="store_true")
    p.set_defaults(fn=_up)
    p = sub.add_parser("status", help="show recorded labs")
    p.add_argument("name", nargs="?")
    p.set_defaults(fn=_status)
    p = sub.add_parser("exec", help="run a command inside a machine")
    p.add_argument("--name", default=DEFAULT_NAME)
    p.add_argument("machine")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p.set_defaults(fn=_exec)
    p = sub.add_parser("down", help="tear a lab down")
    p.add_argument("name", nargs="?")
    p.add_argument(
        "--orphans", action="store_true", help="every recorded lab whose owner process is gone"
    )
    p.set_defaults(fn=_down)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        rc: int = args.fn(args)
    except (LabError, ValueError, KeyError, PermissionError, FileNotFoundError) as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
