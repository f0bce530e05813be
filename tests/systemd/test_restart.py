"""Restarting the daemon, upgrading the package, stopping the unit: under real systemd.

Two server-capable machines on PostgreSQL, both servers, one holding the VIP. The promise of
decision 0005 and packaging/README.md: ``systemctl restart k3snoded`` (what an operator runs
after an upgrade) never restarts k3s and never moves the VIP; ``systemctl stop k3snoded`` stops
k3s and releases the VIP (docs/operations.md).
"""

from __future__ import annotations

import time

import pytest

from tests.systemd import node as nodes
from tests.systemd.conftest import Debs, Pair
from tests.systemd.node import VIP
from tests.systemd.probes import Answers, HoldsAddress

pytestmark = pytest.mark.timeout(900)


def _watch(pair: Pair) -> tuple[HoldsAddress, HoldsAddress, Answers]:
    holder = pair.holder()
    other = pair.other(holder)
    return (
        HoldsAddress(holder.machine.netns, VIP).start(),
        HoldsAddress(other.machine.netns, VIP).start(),
        Answers(holder.machine.netns, "https://127.0.0.1:6443/ping", every=0.05).start(),
    )


def _restart_keeps_everything(pair: Pair, action: str) -> None:
    holder = pair.holder()
    other = pair.other(holder)
    k3s_before = nodes.k3s_pid(holder)
    other_k3s = nodes.k3s_pid(other)
    daemon_before = holder.main_pid()
    assert k3s_before is not None
    on_holder, on_other, api = _watch(pair)
    try:
        time.sleep(0.5)
        holder.systemctl("restart", "k3snoded")  # Type=notify: returns at the new READY=1
        holder.wait(lambda: holder.main_pid() not in (0, daemon_before), 60, "a new daemon")
        holder.wait(
            lambda: bool((s := nodes.status(holder)) and s["k3s"]["ready"]), 60, "k3s ready"
        )
        time.sleep(3.0)  # several VRRP master-down intervals of the other machine
    finally:
        for w in (on_holder, on_other, api):
            w.stop()
    s = nodes.status(holder)
    assert s is not None
    assert s["k3s"]["pid"] == k3s_before, f"{action}: k3s was restarted"
    assert s["k3s"]["adopted"], s["k3s"]
    assert s["node"]["role"] == "server"
    assert nodes.k3s_pid(other) == other_k3s
    assert on_holder.all_true(), f"{action}: VIP left the holder for {on_holder.false_runs()} s"
    assert not on_other.any_true(), f"{action}: the other machine took the VIP"
    assert api.samples and api.false_runs() == [], f"{action}: API down {api.false_runs()} s"


def test_systemctl_restart_keeps_k3s_and_the_vip(pair: Pair) -> None:
    _restart_keeps_everything(pair, "systemctl restart")


def test_package_upgrade_then_restart_keeps_k3s_and_the_vip(pair: Pair, debs: Debs) -> None:
    holder = pair.holder()
    daemon = holder.main_pid()
    k3s = nodes.k3s_pid(holder)
    api = Answers(holder.machine.netns, "https://127.0.0.1:6443/ping", every=0.05).start()
    try:
        out = nodes.install_package(holder, debs.newer)
    finally:
        api.stop()
    assert "restart" in out  # the hint to restart it by hand, one machine at a time
    assert holder.main_pid() == daemon, "the package restarted the daemon"
    assert nodes.k3s_pid(holder) == k3s
    assert api.false_runs() == []
    _restart_keeps_everything(pair, "upgrade + systemctl restart")
    installed = holder.run(["dpkg-query", "-W", "-f=${Version}", "k3snoded"]).stdout
    assert installed == debs.newer_version


def test_systemctl_stop_stops_k3s_and_releases_the_vip(pair: Pair) -> None:
    """docs/operations.md: stop means this machine stops serving (k3s stopped, VIP released at
    once to the other server); start brings it back and it adopts nothing (k3s is gone)."""
    holder = pair.holder()
    other = pair.other(holder)
    k3s = nodes.k3s_pid(holder)
    assert k3s is not None
    on_other = HoldsAddress(other.machine.netns, VIP).start()
    try:
        t0 = time.monotonic()
        holder.systemctl("stop", "k3snoded")
        stopped = time.monotonic() - t0
        other.wait(lambda: nodes.holds_vip(other), 10, "the VIP on the other server")
    finally:
        on_other.stop()
    assert holder.show("k3snoded", "ActiveState")["ActiveState"] == "inactive"
    assert holder.run(["kill", "-0", str(k3s)], check=False).returncode != 0, "k3s still runs"
    assert not nodes.holds_vip(holder)
    assert nodes.healthz(holder) == 0  # nothing listens any more
    assert stopped < 60, stopped
    # The VIP moved on the priority-0 advert, not after a master-down interval of silence.
    took = next(t for t, ok in on_other.samples if ok) - t0
    assert took < stopped + 1.0, took
    holder.systemctl("start", "k3snoded")
    s = nodes.status(holder)
    assert s is not None and s["k3s"]["ready"] and not s["k3s"]["adopted"]
    assert s["k3s"]["pid"] != k3s
