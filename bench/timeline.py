"""A per-machine timeline of one cold start, from the lab daemons' own logs.

The daemon's log lines carry whole seconds only, so a thread reads every machine's log file
every 20 ms and stamps each new line with the bench's monotonic clock (seconds since the
fleet's start). ``bench/formation.py --timeline FILE`` writes every stamped line to FILE and
prints, per machine, when each formation step first appeared in its log.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path

# (column, pattern): the first line matching the pattern in a machine's log marks the step.
STEPS: tuple[tuple[str, str], ...] = (
    ("start", r"k3snoded \S+ starting"),
    ("ds", r"datastore ready"),
    ("coord", r"acquired the coordinator lease"),
    ("decide", r"coordinator decision"),
    ("none", r"role none:"),
    ("boot", r"bootstrapping the cluster"),
    ("server", r"role server:"),
    ("agent", r"role agent:"),
    ("launch", r"started k3s \(pid"),
    ("notify", r"sent READY=1"),
    ("ready", r"k3s is ready"),
    ("booted", r"bootstrapped the cluster"),
    ("vrrp", r"running the VRRP speaker"),
    ("vip", r"added \S+ to "),
)


class LogTail:
    """Stamps the new lines of some log files as they appear (bounded: stopped by ``stop``)."""

    def __init__(self, files: dict[str, Path], t0: float, period: float = 0.02) -> None:
        self.files = files
        self.t0 = t0
        self.period = period
        self.lines: list[tuple[float, str, str]] = []  # (seconds since t0, machine, line)
        self._offsets = dict.fromkeys(files, 0)
        self._partial = dict.fromkeys(files, "")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> LogTail:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._poll()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._poll()

    def _poll(self) -> None:
        now = time.monotonic() - self.t0
        for name, path in self.files.items():
            try:
                with path.open("rb") as f:
                    f.seek(self._offsets[name])
                    data = f.read()
            except OSError:
                continue
            if not data:
                continue
            self._offsets[name] += len(data)
            text = self._partial[name] + data.decode(errors="replace")
            *complete, self._partial[name] = text.split("\n")
            self.lines.extend((now, name, line) for line in complete)


def steps(
    lines: Sequence[tuple[float, str, str]], names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per machine, the time of the first line matching each step."""
    out: dict[str, dict[str, float]] = {n: {} for n in names}
    compiled = [(col, re.compile(p)) for col, p in STEPS]
    for t, name, line in lines:
        seen = out.setdefault(name, {})
        for col, rx in compiled:
            if col not in seen and rx.search(line):
                seen[col] = t
    return out


LAUNCHED = re.compile(r"started k3s \(pid")
READY = re.compile(r"k3s is ready|k3s answers \S+ again; ready")


def formed(lines: Sequence[tuple[float, str, str]], names: Sequence[str]) -> tuple[float, float]:
    """Once the fleet was seen formed: when the last machine launched the k3s it runs now, and
    when the last one's k3s became ready (each machine's latest such line)."""
    launched: dict[str, float] = {}
    ready: dict[str, float] = {}
    for t, name, line in lines:
        if LAUNCHED.search(line):
            launched[name] = t
        elif READY.search(line):
            ready[name] = t
    missing = [n for n in names if n not in launched or n not in ready]
    if missing:
        raise RuntimeError(f"formed, but no k3s launch or readiness in the logs of {missing}")
    return max(launched[n] for n in names), max(ready[n] for n in names)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def table(per: dict[str, dict[str, float]]) -> str:
    cols = [c for c, _ in STEPS if any(c in s for s in per.values())]
    rows = ["machine " + " ".join(f"{c:>7}" for c in cols)]
    for name, seen in per.items():
        cells = " ".join(f"{seen[c]:7.2f}" if c in seen else f"{'':>7}" for c in cols)
        rows.append(f"{name:<7} {cells}")
    return "\n".join(rows)


def write(lines: Sequence[tuple[float, str, str]], path: Path) -> None:
    path.write_text("".join(f"{t:8.3f} {name:<4} {line}\n" for t, name, line in sorted(lines)))
