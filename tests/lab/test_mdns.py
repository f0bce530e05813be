"""Signed mDNS discovery between machines (network namespaces), with real zeroconf.

Every machine runs ``python -m k3snoded.discovery`` (announce or raw) and prints JSON events.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from k3snoded.discovery.announcement import peer_to_fields
from k3snoded.discovery.mdns import SERVICE_TYPE, instance_name
from k3snoded.discovery.signing import derive_key, sign_record
from k3snoded.model import Peer, Role
from tests.lab import fixtures
from tests.lab.fixtures import LabFactory, require_root
from tests.lab.netns import Machine

require_root()
lab_factory = fixtures.lab_factory

ROOT = Path(__file__).resolve().parents[2]
Event = dict[str, Any]


class Node:
    """One runner process inside a machine; its events are read from a file."""

    def __init__(self, machine: Machine, out: Path, argv: list[str]) -> None:
        self.machine = machine
        self.out = out
        self._file = out.open("w")
        self.proc = machine.spawn(
            [sys.executable, "-m", "k3snoded.discovery", *argv],
            stdout=self._file,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def events(self, kind: str | None = None) -> list[Event]:
        found = []
        for line in self.out.read_text().splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if kind is None or event["event"] == kind:
                    found.append(event)
        return found

    def seen(self) -> dict[str, Event]:
        """Peers by name, latest event wins; minus those that said goodbye afterwards."""
        peers: dict[str, Event] = {}
        for event in self.events():
            if event["event"] == "peer":
                peers[event["name"]] = event
            elif event["event"] == "gone":
                peers.pop(event["name"], None)
        return peers

    def rejects(self) -> dict[str, str]:
        return {e["instance"]: e["reason"] for e in self.events("reject")}

    def stop(self) -> None:
        self.machine.kill(self.proc, signal.SIGTERM)
        self.proc.wait(timeout=10)
        self._file.close()


def announce(
    machine: Machine, tmp: Path, token: Path, *extra: str, cluster: str = "lab", tag: str = ""
) -> Node:
    argv = [
        "announce",
        "--name",
        machine.name,
        "--cluster",
        cluster,
        "--token-file",
        str(token),
        "--address",
        machine.address,
        "--duration",
        "60",
        *extra,
    ]
    return Node(machine, tmp / f"{machine.name}{tag}.jsonl", argv)


def raw(machine: Machine, tmp: Path, instance: str, txt: dict[str, str]) -> Node:
    argv = ["raw", "--instance", instance, "--address", machine.address, "--duration", "60"]
    for k, v in txt.items():
        argv += ["--txt", f"{k}={v}"]
    return Node(machine, tmp / f"raw-{instance}.jsonl", argv)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("K10" + "a" * 64 + "::server:s3cret\n")
    path.chmod(0o600)
    return path


@pytest.mark.lab
def test_members_see_each_other_and_refuse_strangers(
    lab_factory: LabFactory, tmp_path: Path, token: Path
) -> None:
    lab = lab_factory(5)
    n1, n2, n3, n4, n5 = lab.machines
    wrong = tmp_path / "wrong-token"
    wrong.write_text("guessed\n")
    members = [
        announce(n1, tmp_path, token, "--role", "server"),
        announce(n2, tmp_path, token),
        announce(n3, tmp_path, token, "--update-after", "2", "--update-role", "agent"),
    ]
    impostor = announce(n4, tmp_path, wrong)  # our cluster's name, not our token
    foreigner = announce(n5, tmp_path, token, cluster="other")  # our token, another cluster
    # forged TXT records, registered with plain zeroconf
    key = derive_key(token.read_text(), "lab")
    fields = peer_to_fields(Peer("n9", "lab", (n4.address,), 6480, Role.SERVER))
    good = sign_record(key, fields, time.time())
    forged = {**good, "r": "agent"}  # altered after signing
    stale = sign_record(key, fields, time.time() - 1000)
    forgers = [
        raw(n4, tmp_path, "unsigned", fields),
        raw(n4, tmp_path, "forged", forged),
        raw(n5, tmp_path, "stale", stale),
    ]
    expected_rejects = {
        instance_name("n4", "lab", n4.address): "bad record signature",
        instance_name("n5", "other", n5.address): "other cluster",
        f"unsigned.{SERVICE_TYPE}": "unsigned record",
        f"forged.{SERVICE_TYPE}": "bad record signature",
        f"stale.{SERVICE_TYPE}": "stale record",
    }
    try:

        def settled() -> bool:
            return all(
                set(m.seen()) == {"n1", "n2", "n3"} - {m.machine.name}
                and len(m.rejects()) == len(expected_rejects)
                for m in members
            ) and all(m.seen().get("n3", {}).get("role") == "agent" for m in members[:2])

        wait_until(settled, 15, "members to see each other and refuse the strangers")
        for member in members:
            rejects = member.rejects()
            assert set(rejects) == set(expected_rejects), member.machine.name
            for instance, reason in expected_rejects.items():
                assert rejects[instance].startswith(reason), (instance, rejects[instance])
            seen = member.seen()
            assert all(p["cluster"] == "lab" for p in seen.values())
        assert members[1].seen()["n1"]["role"] == "server"
        assert members[1].seen()["n1"]["addresses"] == [n1.address]
        # the strangers learned nothing either
        assert impostor.seen() == {}
        assert foreigner.seen() == {}
        assert set(impostor.rejects()) >= {
            instance_name(m.name, "lab", m.address) for m in lab.machines[:3]
        }
        # a goodbye removes the peer at once; nothing else does (D3)
        members[0].stop()
        wait_until(
            lambda: all("n1" not in m.seen() for m in members[1:]), 5, "goodbye from n1 to arrive"
        )
        assert {"n2", "n3"} == set(members[2].seen()) | {"n3"}
    finally:
        for node in [*members[1:], impostor, foreigner, *forgers]:
            node.stop()
    # every refusal was reported once per instance, even though records were re-announced
    for member in members:
        reasons = [(e["instance"], e["reason"]) for e in member.events("reject")]
        assert len(reasons) == len(set(reasons)), member.machine.name


@pytest.mark.lab
def test_a_killed_node_stays_known(lab_factory: LabFactory, tmp_path: Path, token: Path) -> None:
    """D3: discovery never decides liveness; without a goodbye the peer stays in peers()."""
    lab = lab_factory(2)
    n1, n2 = lab.machines
    a = announce(n1, tmp_path, token)
    b = announce(n2, tmp_path, token)
    try:
        wait_until(lambda: "n1" in b.seen(), 10, "n2 to see n1")
        n1.kill(a.proc, signal.SIGKILL)
        a.proc.wait(timeout=5)
        time.sleep(2)
        assert "n1" in b.seen()
        assert b.events("gone") == []
    finally:
        b.stop()


@pytest.mark.lab
def test_resigning_keeps_records_fresh_for_late_joiners(
    lab_factory: LabFactory, tmp_path: Path, token: Path
) -> None:
    """With max_age 3 s, a node announcing for 5 s is still accepted: it re-signs every 1 s."""
    lab = lab_factory(2)
    n1, n2 = lab.machines
    timing = ["--resign-interval", "1", "--max-age", "3"]
    a = announce(n1, tmp_path, token, *timing)
    b: Node | None = None
    try:
        wait_until(lambda: bool(a.events("ready")), 10, "n1 to announce")
        time.sleep(5)
        b = announce(n2, tmp_path, token, *timing)
        wait_until(lambda: "n1" in b.seen() and "n2" in a.seen(), 10, "n1 and n2 to meet")
        time.sleep(2)  # re-announcements keep arriving and keep verifying
        assert b.rejects() == {}
        assert a.rejects() == {}
    finally:
        a.stop()
        if b is not None:
            b.stop()


NO_ADDRESS = r"""
import asyncio
from k3snoded.discovery.mdns import MdnsDiscovery
from k3snoded.discovery.signing import derive_key
from k3snoded.model import Peer

async def main():
    mdns = MdnsDiscovery(derive_key("t", "lab"), "lab", "198.18.0.77")
    try:
        await asyncio.wait_for(mdns.start(Peer("n1", "lab", ("198.18.0.77",), 6480)), 10)
        print("started")
    except OSError as exc:
        print("OSError", exc.errno)
    await mdns.close()
    await mdns.close()  # idempotent
    print("closed")

asyncio.run(main())
"""


@pytest.mark.lab
def test_start_without_the_address_raises_oserror(lab_factory: LabFactory) -> None:
    """The daemon starts discovery again once the address exists; nothing is left behind."""
    (n1,) = lab_factory(1).machines
    res = n1.run([sys.executable, "-c", NO_ADDRESS], env={"PYTHONPATH": str(ROOT)}, timeout=60)
    assert res.stdout.split() == ["OSError", "19", "closed"], res.stderr
