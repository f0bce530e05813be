"""``/healthz`` means "this machine is a ready k3s server" (what a load balancer in front of
port 6443 asks); ``/livez`` means "k3snoded answers". Real daemons with the stand-in k3s.

A server and an agent run in the same network namespace (different ports and directories), so
the agent really joins the server and becomes ready: only then does its ``/healthz`` say
something about agents, not about a k3s that is not running.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.harness import PYTHON, DaemonHarness

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

FETCH = (
    "import urllib.request,urllib.error,sys\n"
    "try:\n"
    "    r=urllib.request.urlopen(sys.argv[1],timeout=5); print(r.status, r.read().decode())\n"
    "except urllib.error.HTTPError as e:\n"
    "    print(e.code, e.read().decode())\n"
)


def get(netns: str, url: str) -> int:
    out = subprocess.run(
        ["ip", "netns", "exec", netns, str(PYTHON), "-c", FETCH, url],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    return int(out.split()[0])


def test_healthz_is_503_on_a_machine_without_k3s(tmp_path: Path) -> None:
    # An agent-only machine that has not learned a registration address runs no k3s at all.
    h = DaemonHarness(
        tmp_path,
        config={
            "node": {"role": "agent"},
            "registration": {"address": None},
            "discovery": {
                "mdns": False,
                "seeds": ["http://127.0.0.1:6499"],
            },  # nobody answers there
            "api": {"listen": "127.0.0.1:6480"},
        },
    )
    try:
        h.start()
        s = h.wait_for(lambda s: s["node"]["role"] == "none", what="role none")
        assert s["k3s"]["pid"] is None
        assert get(h.netns, "http://127.0.0.1:6480/healthz") == 503
        assert get(h.netns, "http://127.0.0.1:6480/livez") == 200
    finally:
        h.close()


def test_healthz_is_200_on_a_ready_server_and_503_on_a_ready_agent(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "a").mkdir()
    server = DaemonHarness(tmp_path / "s", config={"api": {"listen": "127.0.0.1:6480"}})
    agent = DaemonHarness(
        tmp_path / "a",
        name="t2",
        config={
            "node": {"role": "agent"},
            "registration": {"address": "127.0.0.1"},
            "api": {"listen": "127.0.0.1:6481"},
            "cluster": {"name": "test", "token_file": str(server.token_file)},
            # The agent learns the cluster CA hash from the server's signed answer (capin.py).
            "discovery": {"mdns": False, "seeds": ["http://127.0.0.1:6480"]},
        },
    )
    own_netns, agent.netns = agent.netns, server.netns  # the agent joins the server's namespace
    subprocess.run(["ip", "netns", "del", own_netns], check=False, timeout=30)
    try:
        server.start()
        server.wait_for(lambda s: s["k3s"]["ready"], timeout=60, what="server ready")
        agent.start()
        s = agent.wait_for(lambda s: s["k3s"]["ready"], timeout=60, what="agent ready")
        assert s["node"]["role"] == "agent"
        pin = server.status()["ca_pin"]
        assert (pin["source"], pin["agent_token"]) == ("k3s", True)  # a new single server
        assert s["ca_pin"] == {**pin, "source": "peers"}
        assert get(server.netns, "http://127.0.0.1:6480/healthz") == 200
        assert get(server.netns, "http://127.0.0.1:6481/healthz") == 503
        assert get(server.netns, "http://127.0.0.1:6481/livez") == 200
    finally:
        agent.close()
        server.close()
