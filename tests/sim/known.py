"""Seeds of the current plan generation that break an invariant today, each with what it
shows: open defects, not accepted behaviour. A sweep reports them apart and fails when any
other seed breaks an invariant, or when one of these stops breaking it (then take it off this
list and keep it in test_sim.py as a regression). Replay: ``python -m tests.sim --seed N``."""

from __future__ import annotations

KNOWN_OPEN: dict[int, str] = {
    169: "a server demoted mid-upgrade (crashed) comes back as an agent on the new release, "
    "held by the version-skew rule; its upgrade waits 60 s for a readiness it cannot reach, is "
    "judged failed, and the rollout halts with the fleet on two releases",
    264: "a returning upgraded machine starts its agent while a server is mid-upgrade; that "
    "server's upgrade fails and rolls back, and the agent is stopped for the skew rule: a "
    "restart the daemon could have avoided by waiting for the server's release to settle",
    774: "an agent frozen (SIGSTOP) while its k3s stops for the upgrade finds the stop deadline "
    "passed when thawed: judged failed, the rollout halts",
    1078: "an agent's upgrade is judged on readiness while no server is ready (an agent cannot "
    "be ready without one): judged failed, the rollout halts, and the only server, broken, "
    "is not replaced within the bound",
}
