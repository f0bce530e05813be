"""Seed-only discovery between machines (mDNS off): the signed peer API over the lab network."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.lab import fixtures
from tests.lab.fixtures import LabFactory, require_root
from tests.lab.test_mdns import Node, announce, wait_until

require_root()
lab_factory = fixtures.lab_factory


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("s3cret-seed-token\n")
    path.chmod(0o600)
    return path


@pytest.mark.lab
def test_seed_only_fleet_finds_itself_and_refuses_a_wrong_token(
    lab_factory: LabFactory, tmp_path: Path, token: Path
) -> None:
    lab = lab_factory(4)
    n1, n2, n3, n4 = lab.machines
    seed = f"http://{n1.address}:6480"
    wrong = tmp_path / "wrong"
    wrong.write_text("guessed\n")
    common = ["--no-mdns", "--seed-interval", "0.5"]
    nodes: list[Node] = [announce(n1, tmp_path, token, "--no-mdns", "--listen", "--role", "server")]
    try:
        wait_until(lambda: bool(nodes[0].events("listening")), 10, "n1 to listen")
        nodes += [
            announce(n2, tmp_path, token, *common, "--seed", seed),
            announce(n3, tmp_path, token, *common, "--seed", seed),
        ]
        impostor = announce(n4, tmp_path, wrong, *common, "--seed", seed)
        nodes.append(impostor)
        wait_until(
            lambda: set(nodes[1].seen()) == {"n1", "n3"} and set(nodes[2].seen()) == {"n1", "n2"},
            15,
            "n2 and n3 to find n1 and each other through the seed",
        )
        assert set(nodes[0].seen()) == {"n2", "n3"}  # the seed learned its callers
        assert nodes[1].seen()["n1"]["role"] == "server"
        assert nodes[1].seen()["n3"]["source"] == "seed"
        time.sleep(1.5)  # the impostor has polled several times by now
        assert impostor.seen() == {}
        assert "n4" not in nodes[0].seen()
        assert all("n4" not in n.seen() for n in nodes[1:3])
    finally:
        for node in nodes:
            node.stop()
