"""A stand-in daemon for the adoption tests: runs one Supervisor until it is killed.

Usage: run_supervisor.py NAME RUN_DIR SPEC_JSON STATUS_FILE
SPEC_JSON: {"argv": [...], "env": {...}, "cwd": ..., "ready_url": ..., "ready_timeout": ...,
"stop_timeout": ...}. Appends one line per status change to STATUS_FILE ("<state> <pid> <ready>"):
not to stdout, which the child inherits and keeps open.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from k3snoded.supervisor import ChildSpec, ChildStatus, ProbeTls, Supervisor


async def _main(name: str, run_dir: Path, spec: ChildSpec, status_file: Path) -> None:
    def record(status: ChildStatus) -> None:
        with status_file.open("a") as f:
            f.write(f"{status.state.value} {status.pid} {status.ready}\n")

    supervisor = Supervisor(name, run_dir, ready_probe_interval=0.1)
    supervisor.on_change(record)
    supervisor.want(spec)
    await supervisor.run()


def main() -> None:
    name, run_dir, spec_json, status_file = sys.argv[1:5]
    data = json.loads(spec_json)
    tls = data.get("probe_tls")
    spec = ChildSpec.build(
        data["argv"],
        data["env"],
        cwd=Path(data["cwd"]) if data.get("cwd") else None,
        ready_url=data.get("ready_url"),
        ready_timeout=data.get("ready_timeout", 30.0),
        stop_timeout=data.get("stop_timeout", 5.0),
        probe_tls=None if not tls else ProbeTls(*(Path(tls[k]) for k in ("ca", "cert", "key"))),
    )
    asyncio.run(_main(name, Path(run_dir), spec, Path(status_file)))


if __name__ == "__main__":
    main()
