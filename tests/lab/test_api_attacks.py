"""A stranger on the LAN (the lab's client machine, without the token) attacks the peer API.

n1 serves the signed peer API with the daemon's listener (``discovery/listener.py``); n2 keeps
asking it, signed, twice a second. The attacker holds 1,000 idle connections, then 1,000 that
trickle their request head, then sends oversized and malformed requests, and replays a captured
signed request. n2 must keep getting answers, n1's memory must stay flat, and the replay must be
refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from k3snoded.discovery.peer_api import PEERS_PATH
from k3snoded.discovery.signing import derive_key, new_nonce, sign_request
from tests.lab.attacker import REPO, Attack
from tests.lab.fixtures import LabFactory, require_root
from tests.lab.netns import Machine
from tests.lab.test_mdns import announce, lab_factory, token

require_root()

pytestmark = pytest.mark.lab
__all__ = ["lab_factory", "token"]  # fixtures, imported for pytest

PROBE = r"""
import asyncio, json, sys, time
from k3snoded.discovery.peer_api import fetch_peers
from k3snoded.discovery.signing import derive_key

async def main(url, token_file, seconds):
    key = derive_key(open(token_file).read(), "lab")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            peers = await fetch_peers(url, key, "lab", request_timeout=3)
            ok, why = peers[0].name == "n1", ""
        except Exception as exc:
            ok, why = False, f"{type(exc).__name__}: {exc}"
        print(json.dumps({"t": t0, "ok": ok, "s": time.monotonic() - t0, "why": why}),
              flush=True)
        await asyncio.sleep(0.5)

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
"""


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _held(machine: Machine, pid: int) -> int:
    """Established connections to port 6480 that the server process has accepted (has an fd
    for); the kernel's accept queue is not counted."""
    out = machine.run(["ss", "-Htnp", "state", "established", "( sport = :6480 )"]).stdout
    return sum(1 for line in out.splitlines() if f"pid={pid}," in line)


def _probe(machine: Machine, url: str, token_path: Path, seconds: float) -> tuple[Path, int]:
    out = machine.lab.workdir / f"probe-{machine.name}.jsonl"
    with out.open("wb") as f:
        proc = machine.spawn(
            [sys.executable, "-c", PROBE, url, str(token_path), str(seconds)],
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    return out, proc.pid


def _probes(out: Path) -> list[dict[str, object]]:
    return [json.loads(ln) for ln in out.read_text().splitlines() if ln.startswith("{")]


def test_connection_floods_and_big_requests_leave_signed_requests_answered(
    lab_factory: LabFactory, tmp_path: Path, token: Path
) -> None:
    lab = lab_factory(2, with_client=True)
    attacker = lab.client
    assert attacker is not None
    n1, n2 = lab.machines
    server = announce(n1, tmp_path, token, "--listen", "--no-mdns", "--duration", "120")
    target = f"{n1.address}:6480"
    try:
        deadline = time.monotonic() + 15
        while not server.events("listening") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.events("listening"), server.out.read_text()
        time.sleep(1)
        before = _rss_kb(server.proc.pid)
        probe_out, _ = _probe(n2, f"http://{target}", token, 30)
        idle_attack = Attack(attacker, "api-idle", "--target", target, "--duration", "10")
        time.sleep(5)
        held_idle = _held(n1, server.proc.pid)
        idle = idle_attack.wait(60)
        during_idle = _rss_kb(server.proc.pid)
        slow_attack = Attack(attacker, "api-slow", "--target", target, "--duration", "10")
        time.sleep(5)
        held_slow = _held(n1, server.proc.pid)
        slow = slow_attack.wait(60)
        big_attack = Attack(attacker, "api-big", "--target", target)
        big_attack.wait(120)
        time.sleep(2)
        after = _rss_kb(server.proc.pid)
    finally:
        server.stop()
    probes = _probes(probe_out)
    failed = [p for p in probes if not p["ok"]]
    print(f"RSS KiB before {before}, during 1,000 idle {during_idle}, after {after}; "
          f"held {held_idle}/{held_slow}; idle {idle}, slow {slow}; probes {len(probes)}, "
          f"failed {len(failed)}")  # fmt: skip
    assert len(probes) >= 30, "the signed probe must have kept asking"
    assert len(failed) <= 1, failed
    assert max(float(str(p["s"])) for p in probes) < 3
    # The server holds at most the per-source cap for the attacker (plus the probe's one).
    assert held_idle <= 32 + 2 and held_slow <= 32 + 2, (held_idle, held_slow)
    for counters in (idle, slow):
        assert counters["closed_by_server"] > 900, counters
    assert (during_idle - before) / 1024 < 8, "1,000 idle connections must not cost memory"
    assert (after - before) / 1024 < 8, "memory must stay flat"
    answers = {e["what"].split(":")[0]: e["what"] for e in big_attack.events("answer")}
    assert "413" in answers["huge-length"], answers
    assert "400" in answers["get-with-body"] and "400" in answers["chunked"], answers
    assert "431" in answers["long-header"] or "400" in answers["long-header"], answers


def test_a_replayed_signed_request_is_refused(
    lab_factory: LabFactory, tmp_path: Path, token: Path
) -> None:
    lab = lab_factory(2, with_client=True)
    attacker = lab.client
    assert attacker is not None
    n1, n2 = lab.machines
    server = announce(n1, tmp_path, token, "--listen", "--no-mdns", "--duration", "60")
    try:
        deadline = time.monotonic() + 15
        while not server.events("listening") and time.monotonic() < deadline:
            time.sleep(0.1)
        # What n2 sends (and an attacker who sees it captures): a signed GET, byte for byte.
        key = derive_key(token.read_text(), "lab")
        headers = sign_request(key, "GET", PEERS_PATH, b"", time.time(), new_nonce(os.urandom(16)))
        raw = f"GET {PEERS_PATH} HTTP/1.1\r\nHost: {n1.address}:6480\r\nConnection: close\r\n"
        raw += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        captured = lab.workdir / "captured-request"
        captured.write_bytes(raw.encode())
        send = (
            "import socket,sys;s=socket.create_connection((sys.argv[1],6480),5);"
            "s.sendall(open(sys.argv[2],'rb').read());print(s.recv(100).split(b'\\r\\n')[0])"
        )
        first = n2.run([sys.executable, "-c", send, n1.address, str(captured)]).stdout
        assert "200" in first, first
        replay = Attack(attacker, "api-replay", "--target", f"{n1.address}:6480",
                        "--request-file", str(captured), "--count", "20")  # fmt: skip
        counters = replay.wait(60)
    finally:
        server.stop()
    assert counters["requests"] == 20 and counters["accepted"] == 0, counters
    statuses = [e["what"] for e in replay.events("answer")]
    assert statuses and all("401" in s for s in statuses), statuses
    assert "replayed request" in server.out.read_text()
