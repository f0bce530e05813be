"""A stand-in daemon for the adoption tests: runs one Supervisor until it is killed.

Usage: run_supervisor.py RUN_DIR SPEC_JSON STATUS_FILE  (SPEC_JSON: {"argv": [...], "env": {...},
"ready_url": ..., "ready_timeout": ..., "stop_timeout": ...}). Appends one line per status change
to STATUS_FILE ("<state> <pid> <ready>"): not stdout, which the child inherits and keeps open.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from k3snoded.supervisor import ChildSpec, ChildStatus, Supervisor


async def _main(run_dir: Path, spec: ChildSpec, status_file: Path) -> None:
    def record(status: ChildStatus) -> None:
        with status_file.open("a") as f:
            f.write(f"{status.state.value} {status.pid} {status.ready}\n")

    supervisor = Supervisor("child", run_dir, ready_probe_interval=0.1)
    supervisor.on_change(record)
    supervisor.want(spec)
    await supervisor.run()


def main() -> None:
    data = json.loads(sys.argv[2])
    spec = ChildSpec.build(
        data["argv"],
        data["env"],
        ready_url=data.get("ready_url"),
        ready_timeout=data.get("ready_timeout", 30.0),
        stop_timeout=data.get("stop_timeout", 5.0),
    )
    asyncio.run(_main(Path(sys.argv[1]), spec, Path(sys.argv[3])))


if __name__ == "__main__":
    main()
