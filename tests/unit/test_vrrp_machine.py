"""The pure VRRPv3 state machine (RFC 5798 section 6.4), table by table."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

import pytest

from k3snoded.model import VrrpState
from k3snoded.vrrp.machine import (
    Action,
    AddVip,
    AdvertReceived,
    CancelTimer,
    Event,
    HealthChanged,
    MachineConfig,
    MachineState,
    PriorityChanged,
    RemoveVip,
    SendAdvert,
    SendGarp,
    SetTimer,
    Shutdown,
    Startup,
    TimerFired,
    step,
)

ME = IPv4Address("198.18.0.12")
LOWER = IPv4Address("198.18.0.11")
HIGHER = IPv4Address("198.18.0.13")
CFG = MachineConfig(address=ME, advert_interval=0.1)
PRE = replace(CFG, preempt=True)

INIT = MachineState(priority=100, master_adver_interval=0.1)
BACKUP = replace(INIT, state=VrrpState.BACKUP, master=HIGHER)
MASTER = replace(INIT, state=VrrpState.MASTER, master=ME)

SKEW_100 = (256 - 100) * 0.1 / 256  # 0.0609375
DOWN_100 = 3 * 0.1 + SKEW_100


def approx_timer(delay: float) -> SetTimer:
    """A SetTimer that compares equal to any delay within float rounding of ``delay``."""
    return SetTimer(pytest.approx(delay))  # type: ignore[arg-type]


def adv(prio: int, src: IPv4Address = HIGHER, interval: float = 0.1) -> AdvertReceived:
    return AdvertReceived(priority=prio, source=src, interval=interval)


def test_timing_formulas() -> None:
    s = replace(INIT, priority=100, master_adver_interval=1.0)
    assert s.skew_time == pytest.approx(156 / 256)
    assert s.master_down_interval == pytest.approx(3 + 156 / 256)
    assert replace(s, priority=254).skew_time == pytest.approx(2 / 256)


TABLE: list[tuple[str, MachineConfig, MachineState, Event, VrrpState, tuple[Action, ...]]] = [
    # Initialize
    (
        "start → backup, wait master-down",
        CFG,
        INIT,
        Startup(),
        VrrpState.BACKUP,
        (RemoveVip(), approx_timer(DOWN_100)),
    ),
    ("timer ignored in initialize", CFG, INIT, TimerFired(), VrrpState.INITIALIZE, ()),
    ("advert ignored in initialize", CFG, INIT, adv(200), VrrpState.INITIALIZE, ()),
    ("shutdown in initialize is a no-op", CFG, INIT, Shutdown(), VrrpState.INITIALIZE, ()),
    # Backup
    (
        "backup: master-down fires → master",
        CFG,
        BACKUP,
        TimerFired(),
        VrrpState.MASTER,
        (SendAdvert(100), AddVip(), SendGarp(), SetTimer(0.1)),
    ),
    (
        "backup: higher advert resets timer",
        CFG,
        BACKUP,
        adv(200),
        VrrpState.BACKUP,
        (approx_timer(DOWN_100),),
    ),
    (
        "backup, no preempt: lower advert still resets timer",
        CFG,
        BACKUP,
        adv(50),
        VrrpState.BACKUP,
        (approx_timer(DOWN_100),),
    ),
    ("backup, preempt: lower advert discarded", PRE, BACKUP, adv(50), VrrpState.BACKUP, ()),
    (
        "backup, preempt: equal advert resets timer",
        PRE,
        BACKUP,
        adv(100),
        VrrpState.BACKUP,
        (approx_timer(DOWN_100),),
    ),
    (
        "backup: priority 0 → timer = skew",
        CFG,
        BACKUP,
        adv(0),
        VrrpState.BACKUP,
        (approx_timer(SKEW_100),),
    ),
    ("backup: shutdown", CFG, BACKUP, Shutdown(), VrrpState.INITIALIZE, (CancelTimer(),)),
    # Master
    (
        "master: adver timer → advert",
        CFG,
        MASTER,
        TimerFired(),
        VrrpState.MASTER,
        (SendAdvert(100), SetTimer(0.1)),
    ),
    (
        "master: higher priority → backup (last advert, release)",
        CFG,
        MASTER,
        adv(150, LOWER),
        VrrpState.BACKUP,
        (SendAdvert(100), RemoveVip(), approx_timer(DOWN_100)),
    ),
    (
        "master: lower-priority master → assert, re-announce",
        CFG,
        MASTER,
        adv(50, HIGHER),
        VrrpState.MASTER,
        (SendAdvert(100), SendGarp(), SetTimer(0.1)),
    ),
    (
        "master: equal priority, higher address wins",
        CFG,
        MASTER,
        adv(100, HIGHER),
        VrrpState.BACKUP,
        (SendAdvert(100), RemoveVip(), approx_timer(DOWN_100)),
    ),
    (
        "master: equal priority, lower address loses",
        CFG,
        MASTER,
        adv(100, LOWER),
        VrrpState.MASTER,
        (SendAdvert(100), SendGarp(), SetTimer(0.1)),
    ),
    (
        "master: priority 0 from another → advert now",
        CFG,
        MASTER,
        adv(0),
        VrrpState.MASTER,
        (SendAdvert(100), SetTimer(0.1)),
    ),
    (
        "master: shutdown → priority 0, release",
        CFG,
        MASTER,
        Shutdown(),
        VrrpState.INITIALIZE,
        (CancelTimer(), SendAdvert(0), RemoveVip()),
    ),
    (
        "master: priority change → advert now",
        CFG,
        MASTER,
        PriorityChanged(80),
        VrrpState.MASTER,
        (SendAdvert(80), SetTimer(0.1)),
    ),
    ("backup: priority change, no action", CFG, BACKUP, PriorityChanged(80), VrrpState.BACKUP, ()),
    # Health
    (
        "master unhealthy → priority 0, release",
        CFG,
        MASTER,
        HealthChanged(False),
        VrrpState.BACKUP,
        (CancelTimer(), SendAdvert(0), RemoveVip()),
    ),
    (
        "backup unhealthy → no timer",
        CFG,
        BACKUP,
        HealthChanged(False),
        VrrpState.BACKUP,
        (CancelTimer(),),
    ),
    ("healthy again, no change", CFG, BACKUP, HealthChanged(True), VrrpState.BACKUP, ()),
    (
        "unhealthy backup: timer never takes over",
        CFG,
        replace(BACKUP, healthy=False),
        TimerFired(),
        VrrpState.BACKUP,
        (CancelTimer(),),
    ),
    (
        "unhealthy backup: adverts tracked, no timer",
        CFG,
        replace(BACKUP, healthy=False),
        adv(50),
        VrrpState.BACKUP,
        (),
    ),
    (
        "unhealthy backup: priority 0 ignored",
        CFG,
        replace(BACKUP, healthy=False),
        adv(0),
        VrrpState.BACKUP,
        (),
    ),
    (
        "backup healthy again → timer",
        CFG,
        replace(BACKUP, healthy=False),
        HealthChanged(True),
        VrrpState.BACKUP,
        (approx_timer(DOWN_100),),
    ),
    (
        "unhealthy start → backup without timer",
        CFG,
        replace(INIT, healthy=False),
        Startup(),
        VrrpState.BACKUP,
        (RemoveVip(), CancelTimer()),
    ),
]


@pytest.mark.parametrize(
    ("name", "config", "state", "event", "want_state", "want_actions"),
    TABLE,
    ids=[row[0] for row in TABLE],
)
def test_transition_table(
    name: str,
    config: MachineConfig,
    state: MachineState,
    event: Event,
    want_state: VrrpState,
    want_actions: tuple[Action, ...],
) -> None:
    new, actions = step(config, state, event)
    assert new.state is want_state, name
    assert actions == want_actions, name
    assert new.transitions == state.transitions + (want_state is not state.state)


def test_backup_learns_master_interval_and_address() -> None:
    new, actions = step(CFG, BACKUP, adv(200, HIGHER, interval=1.0))
    assert new.master_adver_interval == 1.0
    assert new.master == HIGHER
    assert actions == (approx_timer(3 + SKEW_100 * 10),)


def test_master_yielding_learns_interval_and_master() -> None:
    new, _ = step(CFG, MASTER, adv(200, LOWER, interval=0.5))
    assert new.master == LOWER
    assert new.master_adver_interval == 0.5


def test_priority_zero_clears_master_and_highest_backup_is_first() -> None:
    fast, a_fast = step(CFG, replace(BACKUP, priority=200), adv(0))
    slow, a_slow = step(CFG, replace(BACKUP, priority=50), adv(0))
    assert fast.master is None and slow.master is None
    assert isinstance(a_fast[0], SetTimer) and isinstance(a_slow[0], SetTimer)
    assert a_fast[0].delay < a_slow[0].delay


def test_effective_priority_and_unhealthy_master_advertises_zero() -> None:
    assert replace(MASTER, healthy=False).effective_priority == 0
    new, _ = step(CFG, MASTER, HealthChanged(False))
    assert new.master is None and not new.healthy
    # A standing-down backup yields to everyone, even with preemption on.
    new2, actions = step(PRE, new, adv(1))
    assert new2.master == HIGHER and actions == ()


def test_full_life_counts_transitions() -> None:
    s = INIT
    for event in (Startup(), TimerFired(), adv(200, HIGHER), TimerFired(), Shutdown()):
        s, _ = step(CFG, s, event)
    assert s.state is VrrpState.INITIALIZE
    assert s.transitions == 5  # init→backup→master→backup→master→init
    assert s.reason == "shut down: released the address"


def test_two_machines_converge_on_one_master() -> None:
    """Both time out at once (equal priority): the exchange of adverts leaves one master."""
    a_cfg = MachineConfig(address=LOWER, advert_interval=0.1)
    b_cfg = MachineConfig(address=HIGHER, advert_interval=0.1)
    a, _ = step(a_cfg, step(a_cfg, INIT, Startup())[0], TimerFired())
    b, _ = step(b_cfg, step(b_cfg, INIT, Startup())[0], TimerFired())
    assert a.state is b.state is VrrpState.MASTER
    a, _ = step(a_cfg, a, adv(100, HIGHER))
    b, _ = step(b_cfg, b, adv(100, LOWER))
    assert (a.state, b.state) == (VrrpState.BACKUP, VrrpState.MASTER)
