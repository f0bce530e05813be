"""``python -m tests.sim``: run many seeds (``--seeds N [--start S]``) or replay one with its
trace (``--seed S``). Exit status 1 when any invariant broke."""

from __future__ import annotations

import argparse
import sys

from tests.sim.plan import GENERATION, make_plan, parse_generation
from tests.sim.runner import default_jobs, replay_command, run_seed, sweep


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__)
    p.add_argument("--seeds", type=int, default=2000, help="how many seeds to run (2000)")
    p.add_argument("--start", type=int, default=0, help="first seed (0)")
    p.add_argument("--seed", type=int, help="replay this seed and print its trace")
    p.add_argument("--jobs", type=int, default=default_jobs(), help="worker processes")
    p.add_argument(
        "--generation",
        type=parse_generation,
        default=GENERATION,
        help="plan generator (older seeds): a number, or the later fault kinds by name",
    )
    args = p.parse_args()
    if args.seed is not None:
        result, trace = run_seed(args.seed, keep_trace=True, generation=args.generation)
        print(make_plan(args.seed, args.generation).describe())
        print(trace)
        replay = replay_command(args.seed, args.generation)
        print(f"--- {result.violation or 'every invariant held'}  ({replay})")
        return 1 if result.violation else 0
    return 1 if sweep(args.start, args.seeds, args.jobs) else 0


if __name__ == "__main__":
    sys.exit(main())
