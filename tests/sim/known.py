"""Seeds of the current plan generation that break an invariant today, each with what it
shows: open defects, not accepted behaviour. A sweep reports them apart and fails when any
other seed breaks an invariant, or when one of these stops breaking it (then take it off this
list and keep it in test_sim.py as a regression). Replay: ``python -m tests.sim --seed N``."""

from __future__ import annotations

KNOWN_OPEN: dict[int, str] = {}
