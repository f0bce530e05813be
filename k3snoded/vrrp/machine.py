"""The VRRPv3 state machine of RFC 5798 section 6.4, as a pure function. No I/O, no clock.

``step(config, state, event) -> (state, actions)``: events come in (start, shutdown, the one
timer fired, an advertisement arrived, priority or health changed), actions come out (send an
advert, add or remove the VIP, send gratuitous ARP, set or cancel the timer). The speaker
performs the actions; tests drive this table by table.

Only one timer is ever armed: Master_Down_Timer in Backup, Adver_Timer in Master, none in
Initialize. ``SetTimer`` replaces whatever was armed.

Deliberate choices, within the RFC:

- We are never the address owner: priorities are 1..254, so Initialize always goes to Backup.
- Preemption is off by default (``preempt=False``): a machine that recovers does not take the
  address back from a healthy master, so a flapping server causes one move, not two.
- Health: an unhealthy speaker *stands down*. A master sends a priority-0 advertisement and
  releases the address (backups take over after their skew time); a backup never takes over
  while unhealthy. When healthy again it behaves like a freshly started backup.
- When the priority changes while Master, an advertisement with the new priority goes out at
  once, so preempting backups learn about it without waiting an interval.
- Two masters (a healed partition): the one that yields sends one last advert, and the winner,
  hearing a lower-priority master, advertises at once and sends gratuitous ARP again, so
  clients that followed the loser come back (keepalived: ``garp_lower_prio_repeat``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from ipaddress import IPv4Address

from k3snoded.model import VrrpState

# ---------------------------------------------------------------------------------------------
# Configuration and state


@dataclass(frozen=True)
class MachineConfig:
    """What does not change while the speaker runs."""

    address: IPv4Address  # our primary address: the tie-break on equal priority
    advert_interval: float  # Advertisement_Interval, seconds
    preempt: bool = False
    accept_mode: bool = True  # recorded for status; the VIP is a local address (see speaker)


@dataclass(frozen=True)
class MachineState:
    """Everything the machine remembers between events."""

    state: VrrpState = VrrpState.INITIALIZE
    priority: int = 100  # configured (or health-lowered by the daemon) priority, 1..254
    healthy: bool = True
    master_adver_interval: float = 1.0  # learned from the master's adverts in Backup
    master: IPv4Address | None = None  # who we believe is master (ourselves when Master)
    transitions: int = 0
    reason: str = "not started"  # one sentence: why the last thing happened

    @property
    def effective_priority(self) -> int:
        """The priority we advertise and compare with: 0 while standing down."""
        return self.priority if self.healthy else 0

    @property
    def skew_time(self) -> float:
        """Skew_Time = ((256 - Priority) * Master_Adver_Interval) / 256."""
        return ((256 - self.priority) * self.master_adver_interval) / 256

    @property
    def master_down_interval(self) -> float:
        """Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time."""
        return 3 * self.master_adver_interval + self.skew_time


# ---------------------------------------------------------------------------------------------
# Events


@dataclass(frozen=True)
class Startup:
    resume: bool = False  # the previous daemon handed the address over (k3snoded/handover.py)


@dataclass(frozen=True)
class Shutdown:
    pass


@dataclass(frozen=True)
class TimerFired:
    pass


@dataclass(frozen=True)
class AdvertReceived:
    priority: int
    source: IPv4Address
    interval: float  # the advert's Max Adver Int, seconds


@dataclass(frozen=True)
class PriorityChanged:
    priority: int


@dataclass(frozen=True)
class HealthChanged:
    healthy: bool


Event = Startup | Shutdown | TimerFired | AdvertReceived | PriorityChanged | HealthChanged

# ---------------------------------------------------------------------------------------------
# Actions


@dataclass(frozen=True)
class SendAdvert:
    priority: int


@dataclass(frozen=True)
class AddVip:
    pass


@dataclass(frozen=True)
class RemoveVip:
    pass


@dataclass(frozen=True)
class SendGarp:
    pass


@dataclass(frozen=True)
class SetTimer:
    delay: float


@dataclass(frozen=True)
class CancelTimer:
    pass


Action = SendAdvert | AddVip | RemoveVip | SendGarp | SetTimer | CancelTimer

Step = tuple[MachineState, tuple[Action, ...]]

# ---------------------------------------------------------------------------------------------
# Transitions


def _to(s: MachineState, new: VrrpState, master: IPv4Address | None, reason: str) -> MachineState:
    moved = s.transitions + (1 if new is not s.state else 0)
    return replace(s, state=new, transitions=moved, master=master, reason=reason)


def _become_master(config: MachineConfig, s: MachineState, reason: str) -> Step:
    new = _to(s, VrrpState.MASTER, config.address, reason)
    return new, (
        SendAdvert(s.effective_priority),
        AddVip(),
        SendGarp(),
        SetTimer(config.advert_interval),
    )


def _become_backup(s: MachineState, interval: float, master: IPv4Address | None, why: str) -> Step:
    new = _to(replace(s, master_adver_interval=interval), VrrpState.BACKUP, master, why)
    timer: Action = SetTimer(new.master_down_interval) if new.healthy else CancelTimer()
    return new, (RemoveVip(), timer)


def _outranks(advert: AdvertReceived, config: MachineConfig, s: MachineState) -> bool:
    """RFC 6.4.3: higher priority wins; on equal priority the higher primary address wins."""
    ours = s.effective_priority
    if advert.priority != ours:
        return advert.priority > ours
    return int(advert.source) > int(config.address)


def step(config: MachineConfig, s: MachineState, event: Event) -> Step:
    """One RFC 5798 section 6.4 transition. Returns the new state and the actions to perform."""
    match event:
        case Startup(resume=resume):
            return _on_startup(config, s, resume)
        case Shutdown():
            return _on_shutdown(s)
        case TimerFired():
            return _on_timer(config, s)
        case AdvertReceived():
            return _on_advert(config, s, event)
        case PriorityChanged(priority=p):
            return _on_priority(config, replace(s, priority=p))
        case HealthChanged(healthy=h):
            return _on_health(config, s, h)
    raise AssertionError(f"unknown event {event!r}")  # pragma: no cover


def _on_startup(config: MachineConfig, s: MachineState, resume: bool = False) -> Step:
    if s.state is not VrrpState.INITIALIZE:
        return s, ()
    if resume and s.healthy:  # backups are waiting out the long interval we advertised last
        s = replace(s, master_adver_interval=config.advert_interval)
        return _become_master(config, s, "resumed as master: the previous daemon handed over")
    # Priority 255 (address owner) would go straight to Master; we are never the owner.
    return _become_backup(
        replace(s, master_adver_interval=config.advert_interval),
        config.advert_interval,
        None,
        "started: waiting the master-down interval for a master's advertisement",
    )


def _on_shutdown(s: MachineState) -> Step:
    if s.state is VrrpState.MASTER:
        new = _to(s, VrrpState.INITIALIZE, None, "shut down: released the address")
        return new, (CancelTimer(), SendAdvert(0), RemoveVip())
    if s.state is VrrpState.BACKUP:
        new = _to(s, VrrpState.INITIALIZE, None, "shut down")
        return new, (CancelTimer(),)
    return s, ()


def _on_timer(config: MachineConfig, s: MachineState) -> Step:
    if s.state is VrrpState.MASTER:
        return s, (SendAdvert(s.effective_priority), SetTimer(config.advert_interval))
    if s.state is VrrpState.BACKUP:
        if not s.healthy:  # standing down: never take over (the timer should not be armed)
            return s, (CancelTimer(),)
        return _become_master(config, s, "no advertisement within the master-down interval")
    return s, ()


def _on_advert(config: MachineConfig, s: MachineState, a: AdvertReceived) -> Step:
    if s.state is VrrpState.BACKUP:
        if a.priority == 0:
            # The master is leaving: take over after Skew_Time (the best backup is first).
            new = replace(s, master=None, reason=f"{a.source} released the address")
            return new, ((SetTimer(s.skew_time),) if s.healthy else ())
        if not config.preempt or a.priority >= s.effective_priority:
            new = replace(s, master_adver_interval=a.interval, master=a.source)
            return new, ((SetTimer(new.master_down_interval),) if new.healthy else ())
        # Preempt: a lower-priority master's advert is discarded, so our timer runs out.
        return s, ()
    if s.state is VrrpState.MASTER:
        if a.priority == 0:
            # Another master released: assert ourselves at once (RFC 6.4.3).
            return s, (SendAdvert(s.effective_priority), SetTimer(config.advert_interval))
        if _outranks(a, config, s):
            why = f"{a.source} outranks us (priority {a.priority} vs {s.effective_priority})"
            new, actions = _become_backup(s, a.interval, a.source, why)
            # Not in the RFC: one last advert with our priority tells the winner that we held
            # the address too (a healed partition), so it re-announces it to the clients that
            # followed us (below). Backups just take it as a master's advert.
            return new, (SendAdvert(s.effective_priority), *actions)
        # Another master that we outrank (a healed partition, a thawed process). The RFC
        # discards the advert; like keepalived (garp_lower_prio_repeat) we also advertise at
        # once, so it yields now, and re-announce the address to the clients that followed it.
        return s, (SendAdvert(s.effective_priority), SendGarp(), SetTimer(config.advert_interval))
    return s, ()


def _on_priority(config: MachineConfig, s: MachineState) -> Step:
    if s.state is VrrpState.MASTER and s.healthy:
        return s, (SendAdvert(s.effective_priority), SetTimer(config.advert_interval))
    return s, ()


def _on_health(config: MachineConfig, s: MachineState, healthy: bool) -> Step:
    if healthy == s.healthy:
        return s, ()
    s = replace(s, healthy=healthy)
    if s.state is VrrpState.INITIALIZE:
        return s, ()
    if not healthy:
        if s.state is VrrpState.MASTER:
            new = _to(s, VrrpState.BACKUP, None, "unhealthy: released the address")
            return new, (CancelTimer(), SendAdvert(0), RemoveVip())
        return replace(s, reason="unhealthy: will not take over"), (CancelTimer(),)
    # Healthy again, in Backup: wait for a master's advertisement like a fresh start.
    new = replace(s, reason="healthy again: will take over if no master advertises")
    return new, (SetTimer(new.master_down_interval),)
