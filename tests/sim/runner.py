"""Running seeds: one (with its trace) or many (in parallel), and what a failure prints."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.sim.known import KNOWN_OPEN
from tests.sim.plan import GENERATION, Generation, make_plan
from tests.sim.world import World


@dataclass(frozen=True)
class Result:
    seed: int
    violation: str | None
    simulated: float  # seconds of virtual time
    machine_seconds: float  # simulated seconds x machines
    lines: int  # trace lines
    digest: str  # sha256 of the trace, to compare runs of one seed


def run_seed(
    seed: int, *, keep_trace: bool = False, generation: Generation = GENERATION
) -> tuple[Result, str]:
    plan = make_plan(seed, generation)
    # Role files are written (and fsynced) for real: on tmpfs that costs nothing.
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    workdir = Path(tempfile.mkdtemp(prefix=f"k3snoded-sim-{seed}-", dir=shm))
    try:
        world = World(plan, workdir)
        violation = world.run()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    trace = world.render() if keep_trace or violation else ""
    digest = hashlib.sha256()
    for t, who, text in world.lines:
        digest.update(f"{t:.6f} {who} {text.replace(str(workdir), '')}\n".encode())
    simulated = world.now
    return (
        Result(
            seed,
            violation,
            simulated,
            simulated * plan.machines,
            len(world.lines),
            digest.hexdigest(),
        ),
        trace,
    )


def replay_command(seed: int, generation: Generation = GENERATION) -> str:
    older = f" --generation {generation}" if generation != GENERATION else ""
    return f".venv/bin/python -m tests.sim --seed {seed}{older}"


def report(seed: int, violation: str, trace: str, generation: Generation = GENERATION) -> str:
    return (
        f"seed {seed}: {violation}\n{make_plan(seed, generation).describe()}\n--- trace\n"
        f"{trace}\n--- replay: {replay_command(seed, generation)}"
    )


def _one(seed: int) -> tuple[Result, str]:
    return run_seed(seed)


def run_many(seeds: Iterable[int], jobs: int) -> Iterator[tuple[Result, str]]:
    seeds = list(seeds)
    if jobs <= 1:
        for seed in seeds:
            yield run_seed(seed)
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        yield from pool.map(_one, seeds, chunksize=16)


def default_jobs() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), 4))


def sweep(start: int, count: int, jobs: int, *, quiet: bool = False) -> int:
    """Run seeds start..start+count-1; print failures (trace + replay) and a summary line."""
    began = time.monotonic()
    failures = known = 0
    machine_seconds = 0.0
    for result, trace in run_many(range(start, start + count), jobs):
        machine_seconds += result.machine_seconds
        if result.seed in KNOWN_OPEN:
            if result.violation:
                known += 1
                print(f"known open, seed {result.seed}: {result.violation}")
            else:
                failures += 1
                print(f"FAIL seed {result.seed} holds now: take it off tests/sim/known.py")
            continue
        if result.violation:
            failures += 1
            if failures <= 3:
                print(report(result.seed, result.violation, trace))
            print(f"FAIL seed {result.seed}: {result.violation}  ({replay_command(result.seed)})")
    elapsed = time.monotonic() - began
    if not quiet or failures:
        print(
            f"sim: {count} seeds ({start}..{start + count - 1}), {failures} invariant violations "
            f"(and {known} known open, tests/sim/known.py), "
            f"{elapsed:.1f} s, {machine_seconds / 3600:.0f} simulated machine-hours "
            f"({machine_seconds / 3600 / max(elapsed, 1e-9):.1f} per second, {jobs} jobs)"
        )
    return failures
