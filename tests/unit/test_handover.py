"""The pieces of a daemon restart that keeps k3s and the VIP (k3snoded/handover.py), and the
VRRP machine resuming as master. The whole thing under systemd: tests/systemd/test_restart.py."""

from __future__ import annotations

import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from k3snoded import handover
from k3snoded.model import VrrpState
from k3snoded.vrrp import machine
from k3snoded.vrrp.machine import MachineConfig, MachineState

# What `systemctl list-jobs --no-legend --full --plain` printed in the systemd lab (systemd 252).
RESTARTING = "131 k3snoded.service restart running\n132 foo.service start waiting\n"
STOPPING = "181 k3snoded.service stop running\n"


def test_job_type_of_our_unit() -> None:
    assert handover.job_type(RESTARTING, "k3snoded.service") == "restart"
    assert handover.job_type(STOPPING, "k3snoded.service") == "stop"
    assert handover.job_type(RESTARTING, "other.service") is None
    assert handover.job_type("", "k3snoded.service") is None


def test_own_unit_from_the_cgroup(tmp_path: Path) -> None:
    f = tmp_path / "cgroup"
    f.write_text("0::/system.slice/k3snoded.service\n")
    assert handover.own_unit(f) == "k3snoded.service"
    f.write_text("0::/user.slice/user-0.slice/session-1.scope\n")
    assert handover.own_unit(f) is None
    assert handover.own_unit(tmp_path / "absent") is None


def test_not_a_restart_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    assert handover.restart_requested() is False


def test_record_is_taken_once_and_only_for_its_address(tmp_path: Path) -> None:
    handover.write_record(tmp_path, "198.18.0.100", 20)
    assert (tmp_path / handover.RECORD).stat().st_mode & 0o777 == 0o600
    left = handover.take_record(tmp_path, "198.18.0.100")
    assert left is not None and 19 < left <= 20
    assert handover.take_record(tmp_path, "198.18.0.100") is None  # consumed
    handover.write_record(tmp_path, "198.18.0.100", 20)
    assert handover.take_record(tmp_path, "198.18.0.101") is None  # another address
    handover.write_record(tmp_path, "198.18.0.100", 0.01)
    time.sleep(0.02)
    assert handover.take_record(tmp_path, "198.18.0.100") is None  # expired


def test_hold_lifetime_ends_before_backups_take_over() -> None:
    # Backups wait 3 x HOLD_INTERVAL (+ skew) after the last advert: a daemon that never comes
    # back must not leave its VIP beside the new master's.
    assert handover.HOLD_LIFETIME < 3 * handover.HOLD_INTERVAL
    assert handover.HOLD_INTERVAL <= 40.95  # the 12-bit centisecond field of VRRPv3


CFG = MachineConfig(address=IPv4Address("198.18.0.11"), advert_interval=0.1)


def test_startup_with_resume_goes_straight_to_master() -> None:
    s = MachineState(priority=100, master_adver_interval=0.1)
    new, actions = machine.step(CFG, s, machine.Startup(resume=True))
    assert new.state is VrrpState.MASTER
    assert machine.AddVip() in actions and machine.SendAdvert(100) in actions
    assert machine.RemoveVip() not in actions


def test_startup_with_resume_but_unhealthy_is_a_normal_backup() -> None:
    s = MachineState(priority=100, healthy=False, master_adver_interval=0.1)
    new, actions = machine.step(CFG, s, machine.Startup(resume=True))
    assert new.state is VrrpState.BACKUP
    assert machine.RemoveVip() in actions


def test_a_backup_learns_the_long_hold_interval() -> None:
    s = MachineState(state=VrrpState.BACKUP, priority=100, master_adver_interval=0.1)
    advert = machine.AdvertReceived(100, IPv4Address("198.18.0.12"), handover.HOLD_INTERVAL)
    new, actions = machine.step(CFG, s, advert)
    assert new.master_adver_interval == handover.HOLD_INTERVAL
    assert actions == (machine.SetTimer(new.master_down_interval),)
    assert new.master_down_interval > 3 * handover.HOLD_INTERVAL
