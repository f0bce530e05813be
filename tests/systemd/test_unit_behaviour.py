"""The unit's systemd behaviour on one machine: Type=notify, STATUS=, the watchdog, exit 78,
journald, /healthz, and what remove and purge do. A single k3s server on k3s's embedded
datastore (no shared datastore: the simplest useful install), one machine per distribution.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.lab.netns import Lab
from tests.systemd import node as nodes
from tests.systemd.conftest import Debs, suites
from tests.systemd.nspawn import SUITES, Booted, SystemdLab

pytestmark = pytest.mark.timeout(900)
BAD = "servers:\n  count: 0\n"


@pytest.fixture(scope="module", params=suites())
def single(request: pytest.FixtureRequest, debs: Debs) -> Iterator[Booted]:
    lab = Lab(1).up()
    try:
        (m,) = SystemdLab(lab, SUITES[request.param]).boot(lab.machines)
        nodes.setup_node(m, debs.deb, nodes.FleetSpec(endpoint="", vip=False))
        # The single-server config has no registration address (k3s's embedded datastore).
        m.write(
            "/etc/k3snoded/config.yaml",
            "cluster: {name: syslab, token_file: /etc/k3snoded/token}\n"
            "api: {listen: '0.0.0.0:6480'}\n",
            0o600,
        )
        yield m
    finally:
        lab.down()


def _show(m: Booted, *props: str) -> dict[str, str]:
    return m.show("k3snoded", *props)


def test_enable_now_returns_when_ready_and_status_shows_the_role(single: Booted) -> None:
    m = single
    took = nodes.enable_now(m)  # Type=notify: blocks until READY=1
    props = _show(m, "ActiveState", "SubState", "StatusText", "Type", "UnitFileState")
    assert props["ActiveState"] == "active", props
    assert props["Type"] == "notify"
    assert props["UnitFileState"] == "enabled"
    s = nodes.status(m)
    assert s is not None and s["k3s"]["ready"], "systemctl returned before k3s was ready"
    assert props["StatusText"].startswith("server, k3s ready"), props["StatusText"]
    assert took < 120


def test_healthz_and_livez_under_systemd(single: Booted) -> None:
    assert nodes.healthz(single, "healthz") == 200
    assert nodes.healthz(single, "livez") == 200


def test_journal_fields_are_queryable_and_k3s_lines_are_k3s(single: Booted) -> None:
    m = single
    out = m.journal("-u", "k3snoded", "K3SNODED_ROLE=server", "-o", "json")
    entries = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert entries, "no entry with K3SNODED_ROLE=server"
    assert all(e["SYSLOG_IDENTIFIER"] == "k3snoded" for e in entries)
    assert any(e.get("LOGGER", "").startswith("k3snoded") for e in entries)
    assert all(e.get("K3SNODED_NODE") == "n1" for e in entries)
    assert any("ready" in e["MESSAGE"] for e in entries)
    k3s = [
        json.loads(line)
        for line in m.journal("-u", "k3snoded", "-t", "k3s", "-o", "json").splitlines()
        if line.startswith("{")
    ]
    assert k3s, "no line attributed to k3s"
    assert any("level=" in e["MESSAGE"] for e in k3s)  # logrus lines of the stand-in
    ours = m.journal("-u", "k3snoded", "-t", "k3snoded", "-o", "cat")
    assert "level=info" not in ours, "k3s's lines are attributed to k3snoded"


def test_watchdog_restarts_a_frozen_daemon_and_k3s_is_adopted(single: Booted) -> None:
    m = single
    # The unit's 30 s watchdog, shortened by a drop-in (as an operator would) to keep CI short.
    m.write("/etc/systemd/system/k3snoded.service.d/watchdog.conf", "[Service]\nWatchdogSec=6s\n")
    m.systemctl("daemon-reload")
    m.systemctl("restart", "k3snoded")  # picks up WatchdogSec; k3s is kept (a restart)
    daemon = m.main_pid()
    s = nodes.status(m)
    assert s is not None
    k3s, role = s["k3s"]["pid"], s["node"]["role"]
    restarts = int(_show(m, "NRestarts")["NRestarts"])
    m.run(["kill", "-STOP", str(daemon)])
    m.wait(lambda: m.main_pid() not in (0, daemon), 60, "systemd to replace the frozen daemon")
    m.wait(lambda: _show(m, "ActiveState")["ActiveState"] == "active", 60, "active again")
    assert int(_show(m, "NRestarts")["NRestarts"]) == restarts + 1
    assert "watchdog timeout" in m.journal("-u", "k3snoded").lower()
    s = nodes.status(m)
    assert s is not None
    assert s["k3s"]["pid"] == k3s and s["k3s"]["adopted"]
    assert s["node"]["role"] == role
    m.run(["rm", "/etc/systemd/system/k3snoded.service.d/watchdog.conf"])
    m.systemctl("daemon-reload")


def test_exit_78_is_not_restarted_and_status_says_why(single: Booted) -> None:
    m = single
    good = m.read("/etc/k3snoded/config.yaml")
    k3s = nodes.k3s_pid(m)
    m.write("/etc/k3snoded/config.d/90-bad.yaml", BAD, 0o600)
    m.systemctl("restart", "k3snoded", check=False)
    m.wait(lambda: _show(m, "ActiveState")["ActiveState"] == "failed", 30, "failed")
    before = _show(m, "NRestarts", "ExecMainPID")
    time.sleep(7)  # longer than RestartSec=5s: a restart would have happened by now
    props = _show(m, "ActiveState", "Result", "ExecMainStatus", "NRestarts", "ExecMainPID")
    assert props["ActiveState"] == "failed", props
    assert props["Result"] == "exit-code" and props["ExecMainStatus"] == "78", props
    assert props["NRestarts"] == before["NRestarts"]
    assert props["ExecMainPID"] == before["ExecMainPID"]
    status = m.run(["systemctl", "status", "k3snoded", "--no-pager", "-l"], check=False).stdout
    assert "status=78/CONFIG" in status
    assert "90-bad.yaml" in status and "servers.count" in status
    # A restart job left k3s running; nothing stopped it, and the next good start adopts it.
    assert m.run(["kill", "-0", str(k3s)], check=False).returncode == 0
    m.run(["rm", "/etc/k3snoded/config.d/90-bad.yaml"])
    assert m.read("/etc/k3snoded/config.yaml") == good
    m.systemctl("start", "k3snoded")
    s = nodes.status(m)
    assert s is not None and s["k3s"]["pid"] == k3s and s["k3s"]["adopted"]


def test_remove_keeps_config_and_state_purge_removes_state(single: Booted) -> None:
    m = single
    data = "/var/lib/rancher/k3s/server/db/state.db"
    assert m.exists(data)
    m.write("/var/lib/k3snoded/marker", "node state", 0o600)
    m.run(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "remove", "-y", "k3snoded"])
    assert _show(m, "ActiveState")["ActiveState"] == "inactive"  # prerm stopped it
    assert not m.exists("/opt/k3snoded")  # nothing left by postinst's bytecode either
    for kept in ("/etc/k3snoded/config.yaml", "/etc/k3snoded/token", "/var/lib/k3snoded/marker"):
        assert m.exists(kept), kept
    k3s_data = m.run(["sha256sum", data]).stdout
    m.run(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "purge", "-y", "k3snoded"])
    assert not m.exists("/var/lib/k3snoded")
    assert m.exists("/etc/k3snoded/config.yaml") and m.exists("/etc/k3snoded/token")
    assert m.run(["sha256sum", data]).stdout == k3s_data  # k3s's data is the cluster's
    assert m.exists("/var/lib/rancher/k3s/server/token")
