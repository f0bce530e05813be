"""Moving the VIP on purpose, to a named ready server, with no second holder and no gap longer
than an advert interval.

VRRP decides who takes over when a holder releases the VIP: every backup waits its Skew_Time,
``(256 - priority) / 256`` of an advert interval, and the first to expire becomes master; its
advert then resets the others' timers. At equal priorities (the default, 100) every backup's
skew is the same 61 ms and the winner is a race. So the holder first asks the named server
(the target) to raise its priority to 254 (signed peer request ``vip-boost``, bounded in time):
its skew becomes 0.8 ms while the others keep 61 ms. Then the holder stands down: it removes
the VIP and only then sends its priority-0 advert (``vrrp/speaker.py``), so there is never a
second holder; the target takes over about a millisecond later and its first advert, at 254,
keeps the others backups. The holder waits until it hears the target as master, stops standing
down (unless the caller keeps it away: an upgrade, maintenance) and asks the target to return
to its configured priority.

If the target cannot be asked (no peer API, it refused, it is not a healthy backup), the holder
still releases the VIP the same way and the best backup by VRRP's rules takes it: the gap is
then one skew time (61 ms), still with no second holder.

With ``registration.vip.preempt: true`` the boosted target preempts the holder instead of
waiting for its release: for the flight time of one advert both hold the VIP.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

BOOST_FOR = 5.0  # seconds a target keeps the raised priority at most (if the holder vanishes)
WAIT_TAKEOVER = 2.0  # seconds the holder waits to hear the new master


@dataclass(frozen=True)
class Target:
    name: str
    address: str


class Vip(Protocol):
    """What a switchover needs of ``vip.VipKeeper``."""

    @property
    def holds(self) -> bool: ...

    @property
    def master(self) -> str | None: ...

    def hold(self, key: str, why: str) -> None: ...

    def release(self, key: str) -> None: ...


Ask = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]  # (node, request) -> answer


@dataclass(frozen=True)
class Outcome:
    moved: bool
    to: str  # the address of the new holder ("" if nobody took over in time)
    seconds: float  # from our release to hearing the new master
    sentence: str


async def hand_over(
    vip: Vip,
    targets: list[Target],
    ask: Ask | None,
    *,
    key: str,
    why: str,
    keep_away: bool,
) -> Outcome:
    """Release the VIP (held here) to the first of ``targets`` that accepts, or to VRRP's best
    backup. ``keep_away``: the VIP stays held away from this machine (``vip.release(key)``
    ends it); otherwise this machine becomes an ordinary backup again."""
    if not _holds(vip):
        if keep_away:
            vip.hold(key, why)
        return Outcome(False, "", 0.0, "this machine does not hold the VIP")
    chosen: Target | None = None
    refusals = []
    for target in targets:
        if ask is None:
            break
        try:
            answer = await ask(target.name, {"action": "vip-boost", "seconds": BOOST_FOR})
        except Exception as exc:  # OpsError, or anything a peer call raised
            refusals.append(f"{target.name}: {exc}")
            continue
        if answer.get("ok"):
            chosen = target
            break
        refusals.append(f"{target.name}: {answer.get('why', 'refused')}")
    if refusals:
        log.warning("switchover: %s", "; ".join(refusals))
    t0 = _now()
    vip.hold(key, why)
    deadline = t0 + WAIT_TAKEOVER
    new = ""
    while _now() < deadline:
        master = vip.master
        if master and not _holds(vip):
            new = master
            break
        await asyncio.sleep(0.005)
    took = _now() - t0
    if not keep_away:
        vip.release(key)
    if chosen is not None and ask is not None:
        try:
            await ask(chosen.name, {"action": "vip-unboost"})
        except Exception as exc:
            log.info("switchover: %s keeps its raised priority until it expires: %s", chosen, exc)
    if not new:
        return Outcome(False, "", took, "released the VIP; no master was heard within 2 s")
    to = chosen.name if chosen is not None and chosen.address == new else new
    wanted = "" if chosen is None or chosen.address == new else f" (not {chosen.name})"
    return Outcome(True, new, took, f"VIP moved to {to}{wanted} in {took * 1000:.0f} ms")


def _holds(vip: Vip) -> bool:
    """Read afresh each time (the speaker changes it between two reads)."""
    return vip.holds


def _now() -> float:
    """The event loop's clock (the simulator's virtual time under tests/sim)."""
    return asyncio.get_running_loop().time()
