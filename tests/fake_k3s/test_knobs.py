"""The stand-in's test knobs (tests/fakes/README.md): crash, the knob file and its alias."""

from __future__ import annotations

import time
from pathlib import Path

from tests.fake_k3s.harness import Launcher, new_node


def test_crash_after(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    s = k3s.start(node.server_args("--token", "pw"), {**node.env, "K3S_FAKE_CRASH_AFTER": "2"})
    s.wait_log("k3s is up and running")
    assert s.wait_exit(10) == 1
    assert "level=fatal" in s.log()


def test_knob_file_in_data_dir(k3s: Launcher, tmp_path: Path) -> None:
    """k3snoded scrubs K3S_* from the child: the knobs also come from <data-dir>/fake-k3s.env."""
    node = new_node(tmp_path, "s1")
    data = tmp_path / "data"
    data.mkdir()
    (data / "fake-k3s.env").write_text(
        f"# knobs\nK3S_FAKE_ROOT={node.root}\nK3S_FAKE_READY_DELAY=1\n"
    )
    started = time.monotonic()
    s = k3s.start(node.server_args("--token", "pw", "--data-dir", str(data)), {})
    s.wait_log("k3s is up and running")
    assert time.monotonic() - started >= 1.0
    assert (node.root / "etc/rancher/k3s/k3s.yaml").exists()


def test_knob_alias_survives_a_k3s_scrub(k3s: Launcher, tmp_path: Path) -> None:
    """FAKE_K3S_<X> is read as K3S_FAKE_<X>: it passes through k3snoded's K3S_* scrub."""
    node = new_node(tmp_path, "s1")
    env = {"FAKE_K3S_ROOT": str(node.root), "FAKE_K3S_READY_DELAY": "1"}
    started = time.monotonic()
    s = k3s.start(node.server_args("--token", "pw"), env)
    s.wait_log("k3s is up and running")
    assert time.monotonic() - started >= 1.0
    assert (node.server_dir / "token").exists()
    assert (node.root / "etc/rancher/node/password").exists()


def test_datastore_latency_slows_startup(k3s: Launcher, tmp_path: Path) -> None:
    node = new_node(tmp_path, "s1")
    env = {**node.env, "K3S_FAKE_DATASTORE_LATENCY": "0.2"}
    started = time.monotonic()
    s = k3s.start(node.server_args("--token", "pw"), env)
    s.wait_log("k3s is up and running")
    # ping, 8 DDL statements, compact_rev_key, bootstrap list/create, node password...
    assert time.monotonic() - started >= 2.0
