"""`k3snoded status` (human form) shows planned operations: the rollout per machine (version,
step, since), a pause with who and since when, machines in maintenance, the last switchover."""

from __future__ import annotations

import time

from k3snoded.describe import describe_status


def _status() -> dict[str, object]:
    return {
        "node": {"name": "n1", "role": "server", "preference": "auto"},
        "k3s": {"ready": True, "pid": 42, "restarts": 0},
        "coordinator": "n1",
        "operations": {
            "k3s_version": "v1.31.4+k3s1",
            "paused": {"by": "alice on n2 (control socket)", "since": time.time() - 120},
            "maintenance": ["n4"],
            "maintenance_here": None,
            "rollout": {
                "target": "v1.31.5+k3s1",
                "state": "running",
                "grants": ["n2"],
                "halted_node": None,
                "halted_error": None,
                "note": "upgrading server n2",
                "machines": [
                    {"name": "n1", "version": "v1.31.4+k3s1", "step": "", "since": None},
                    {
                        "name": "n2",
                        "version": "v1.31.4+k3s1",
                        "step": "draining",
                        "since": time.time() - 5,
                    },
                    {
                        "name": "n3",
                        "version": "v1.31.5+k3s1",
                        "step": "done",
                        "since": time.time() - 60,
                    },
                ],
            },
            "switchover": {
                "by": "bob",
                "at": time.time() - 30,
                "from": "n3",
                "to": "n1",
                "result": "VIP moved to n1 in 2 ms",
            },
        },
    }


def test_status_shows_the_rollout_per_machine_and_the_operations() -> None:
    text = describe_status(_status())
    assert "rollout   v1.31.5+k3s1  running: upgrading server n2" in text
    lines = text.splitlines()
    n2 = next(ln for ln in lines if ln.split()[:1] == ["n2"] and "draining" in ln)
    assert "v1.31.4+k3s1" in n2 and "5s" in n2
    assert any(ln.split()[:3] == ["n3", "v1.31.5+k3s1", "done"] for ln in lines)
    assert "paused    since" in text and "alice on n2" in text
    assert "maintenance n4" in text
    assert "switchover n3 -> n1 by bob: VIP moved to n1 in 2 ms" in text


def test_status_without_operations_says_nothing_of_them() -> None:
    s = _status()
    s["operations"] = {
        "k3s_version": "v1.31.4+k3s1",
        "paused": None,
        "maintenance": [],
        "rollout": None,
        "switchover": None,
    }
    text = describe_status(s)
    for word in ("rollout", "paused", "maintenance", "switchover"):
        assert word not in text
    assert "k3s       ready  pid 42  restarts 0  version v1.31.4+k3s1" in text


def test_a_halted_rollout_says_which_machine_and_why() -> None:
    s = _status()
    ops = s["operations"]
    assert isinstance(ops, dict)
    ops["rollout"] = {
        **ops["rollout"],
        "state": "halted",
        "grants": [],
        "halted_node": "n2",
        "halted_error": "k3s v1.31.5+k3s1 exited; rolled back to v1.31.4+k3s1",
    }
    text = describe_status(s)
    assert "rollout   v1.31.5+k3s1  HALTED on n2: k3s v1.31.5+k3s1 exited" in text
