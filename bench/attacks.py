"""What a stranger on the LAN (no token) achieves against a formed fleet: attack x runs x effect.

    .venv/bin/python bench/attacks.py [--runs 1] [--only vrrp-forge-254,mdns-goodbye] [--json F]

One lab: n1..n3 may be servers (servers.count 2, VIP 198.18.0.100 with the default
authenticated VRRP), n4 is agent-only and learns the registration address from its peers'
signed announcements (the machine forged goodbyes used to stop), PostgreSQL on the db machine,
the daemon with the stand-in k3s everywhere. The lab's client machine is the attacker
(tests/lab/attacker*.py). Each attack runs ``--runs`` times on the same fleet; per run:

- **VIP unheld s**: sampled every ~10 ms, time during which no fleet machine held the VIP;
- **VIP moves**: changes of the set of holders (the attacker's machine included);
- **peers lost**: the most peers any daemon's status lost during the run (the agent's are its
  signed mDNS peers; servers' are datastore members);
- **token seen**: requests in which the attacker received credentials (a token's password:
  the cluster token's, or the agent token's agents join with since the CA pin);
- **RSS MiB**: the largest growth of a daemon's RSS over the run.

Baselines, in the same lab and run, the reproduced holes: priority-254 forgeries (10/s for 6 s)
against three speakers in ``registration.vip.authentication: none`` on VRID 52 / .101; and the
attacker's TLS server on the VIP while a k3s agent joins with the short token, as k3snoded
started agents before the CA pin (the stand-in run by hand on the agent machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from k3snoded.tokens import normalize
from tests.lab import dbs
from tests.lab.attacker import Attack
from tests.lab.fleet import FAKE_K3S, TOKEN, VIP, Fleet
from tests.lab.netns import Lab, Machine
from tests.lab.test_vrrp_support import Sampler, start_ours, wait_for

PASSWORD = normalize(TOKEN)
BASELINE_VIP = "198.18.0.101"
REFUSED = "token CA hash does not match the Cluster CA certificate hash"


@dataclass
class Run:
    attack: str
    unheld: float = 0.0
    moves: int = 0
    peers_lost: int = 0
    token_seen: int = 0
    rss_mib: float = 0.0
    notes: list[str] = field(default_factory=list)
    restarted: set[str] = field(default_factory=set)  # daemons the attack itself restarted


class Watch:
    """Status of every daemon every ~0.5 s in a thread: the fewest peers each one reported."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.fewest: dict[str, int] = {}
        self.agent_unready = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        end = time.monotonic() + 600
        while not self._stop.is_set() and time.monotonic() < end:
            for name, st in self.fleet.statuses().items():
                if st is None:
                    continue
                n = len(st.get("peers") or [])
                self.fewest[name] = min(self.fewest.get(name, n), n)
                if self.fleet.node(name).agent_only and not st["k3s"]["ready"]:
                    self.agent_unready += 1
            self._stop.wait(0.5)


def peer_counts(fleet: Fleet) -> dict[str, int]:
    return {n: len((st or {}).get("peers") or []) for n, st in fleet.statuses().items()}


def rss_mib(fleet: Fleet) -> dict[str, float]:
    out = {}
    for n in fleet.nodes:
        if n.proc is None or n.proc.poll() is not None:
            continue
        for line in Path(f"/proc/{n.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out[n.name] = int(line.split()[1]) / 1024
    return out


def measured(fleet: Fleet, attacker: Machine, name: str, body: Callable[[Run], None]) -> Run:
    run = Run(name)
    machines = [n.machine for n in fleet.nodes] + [attacker]
    servers = [n.name for n in fleet.nodes if not n.agent_only]
    before_peers, before_rss = peer_counts(fleet), rss_mib(fleet)
    with Sampler(machines, max_seconds=300) as sampler, Watch(fleet) as watch:
        t0 = time.monotonic()
        body(run)
        time.sleep(3)  # effects that arrive late (confirmations, ARP) count too
    run.unheld = sampler.unheld(t0, among=servers)
    run.moves = sampler.moves(t0)
    if run.moves > 2:
        run.notes.append(f"holders: {_holders(sampler, t0)}")
    run.peers_lost = max((before_peers[n] - watch.fewest.get(n, before_peers[n]))
                         for n in before_peers if n not in run.restarted)  # fmt: skip
    after = rss_mib(fleet)
    run.rss_mib = max(
        (after[n] - before_rss[n] for n in after if n in before_rss and n not in run.restarted),
        default=0.0,
    )
    if watch.agent_unready:
        run.notes.append(f"agent k3s not ready in {watch.agent_unready} samples")
    if sampler.ever_held_by(attacker.name):
        run.notes.append("the attacker held the VIP")
    return run


def _holders(sampler: Sampler, since: float) -> str:
    """The successive sets of VIP holders, e.g. ``n1 → n1+client → n1``."""
    with sampler._lock:
        sets = [held for t, held in sampler.samples if t >= since]
    out: list[frozenset[str]] = []
    for held in sets:
        if not out or out[-1] != held:
            out.append(held)
    return " → ".join("+".join(sorted(h)) or "none" for h in out)


# ---- the attacks ------------------------------------------------------------------------------


def attacks(fleet: Fleet, attacker: Machine) -> dict[str, Callable[[Run], None]]:
    servers = [n for n in fleet.nodes if not n.agent_only]
    target = f"{servers[0].machine.address}:6480"

    def go(*argv: str, timeout: float = 120) -> dict[str, Any]:
        return Attack(attacker, *argv).wait(timeout)

    def forge_254(run: Run) -> None:
        go("vrrp-forge", "--vip", VIP, "--priorities", "254")

    def forge_all(run: Run) -> None:
        go("vrrp-forge", "--vip", VIP, "--priorities", "0-255", "--rate", "128", "--duration", "2")
        go("vrrp-forge", "--vip", VIP, "--trailer", "--rate", "50", "--duration", "2")
        go("vrrp-forge", "--vip", VIP, "--source", servers[1].machine.address,
           "--priorities", "254,0", "--rate", "50", "--duration", "2")  # fmt: skip

    def replay_adverts(run: Run) -> None:
        c = go("vrrp-replay", "--capture", "1.5", "--duration", "4")
        go("vrrp-replay", "--capture", "1", "--raise-priority", "--duration", "2")
        run.notes.append(f"{c['captured']} adverts captured, {c['sent']} replayed")

    def goodbyes(run: Run) -> None:
        a = go("mdns-goodbye", "--duration", "4")
        go("mdns-goodbye", "--all-records", "--duration", "4")
        time.sleep(5)  # a confirmation takes up to ~7 s
        run.notes.append(f"goodbyes for {a['instances']} instances")

    def flood(run: Run) -> None:
        go("mdns-flood", "--count", "10000")

    def replay_announcements(run: Run) -> None:
        go("mdns-replay", "--learn", "2", "--delay", "2", "--duration", "4")

    def api_idle(run: Run) -> None:
        run.notes.append(_with_probe(fleet, lambda: go("api-idle", "--target", target)))

    def api_slow(run: Run) -> None:
        run.notes.append(_with_probe(fleet, lambda: go("api-slow", "--target", target)))

    def api_big(run: Run) -> None:
        attack = Attack(attacker, "api-big", "--target", target)
        attack.wait(120)
        run.notes.append(", ".join(sorted({e["what"] for e in attack.events("answer")})))

    def api_replay(run: Run) -> None:
        raw = _captured_request(fleet, servers[0].machine)
        c = go("api-replay", "--target", target, "--request-file", str(raw), "--count", "20")
        run.notes.append(f"{c['accepted']} of {c['requests']} replays accepted")

    def arp_spoof(run: Run) -> None:
        agent = next(n for n in fleet.nodes if n.agent_only).machine
        attack = Attack(attacker, "arp-spoof", "--vip", VIP, "--duration", "6")
        spoofed = samples = 0
        while attack.proc.poll() is None:
            agent.run(["ping", "-c", "1", "-W", "1", VIP], check=False)
            samples += 1
            spoofed += _arp_of(agent, VIP) == attacker.mac
            time.sleep(0.3)
        attack.wait(30)
        run.notes.append(f"agent's ARP entry for the VIP was the attacker's in {spoofed}/{samples}")

    def tls_server(fresh: bool) -> Callable[[Run], None]:
        """The attacker answers at VIP:6443 while the agent daemon restarts; with ``fresh`` the
        agent's k3s state is gone first (a new or rebuilt agent machine joining)."""

        def attack_it(run: Run) -> None:
            attack = Attack(attacker, "tls-server", "--vip", VIP, "--duration", "45")
            agent = next(n for n in fleet.nodes if n.agent_only)
            run.notes.append(_held_for(attack, agent.machine, attacker))
            run.restarted.add(agent.name)
            agent.stop()
            logged = len(agent.log())
            if fresh:
                shutil.rmtree(agent.data_dir / "agent", ignore_errors=True)
            agent.start()
            deadline, refused_at = time.monotonic() + 40, None
            while time.monotonic() < deadline and attack.proc.poll() is None:
                if attack.events("credentials"):
                    break
                if refused_at is None and REFUSED in agent.log()[logged:]:
                    refused_at = time.monotonic()
                if refused_at is not None and time.monotonic() - refused_at > 6:
                    break  # three more of k3s's attempts (every 2 s): enough to see none sent
                time.sleep(0.5)
            attack.stop()  # it removes the VIP from its interface
            seen = attack.events("credentials")
            run.token_seen = len(seen)
            kinds = sorted({"cluster token" if e["secret"] == PASSWORD else "other" for e in seen})
            paths = sorted({e["path"] for e in attack.events("request")})
            run.notes.append(f"attacker served {paths or 'nothing'}")
            if kinds:
                run.notes.append(f"credentials received: {', '.join(kinds)}")
            refusals = agent.log()[logged:].count(REFUSED)
            if refusals:
                run.notes.append(f"the agent's k3s refused the attacker's CA {refusals} times")
            fleet.wait(fleet.converged, 120, "the agent back with the real servers")

        return attack_it

    return {
        "vrrp-forge-254": forge_254,
        "vrrp-forge-all": forge_all,
        "vrrp-replay": replay_adverts,
        "mdns-goodbye": goodbyes,
        "mdns-flood-10000": flood,
        "mdns-replay": replay_announcements,
        "api-idle-1000": api_idle,
        "api-slow-1000": api_slow,
        "api-big": api_big,
        "api-replay": api_replay,
        "arp-spoof": arp_spoof,
        "tls-vip-agent-restart": tls_server(fresh=False),
        "tls-vip-fresh-agent": tls_server(fresh=True),
    }


PROBE = r"""
import asyncio, sys, time
from k3snoded.discovery.peer_api import fetch_peers
from k3snoded.discovery.signing import derive_key
async def main(url, token_file, seconds):
    key, ok, bad = derive_key(open(token_file).read(), "lab"), 0, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            await fetch_peers(url, key, "lab", request_timeout=3); ok += 1
        except Exception:
            bad += 1
        await asyncio.sleep(0.5)
    print(ok, bad)
asyncio.run(main(*sys.argv[1:3], float(sys.argv[3])))
"""


def _with_probe(fleet: Fleet, attack: Callable[[], dict[str, Any]]) -> str:
    """Run the attack while n2 asks n1's peer API (signed) twice a second."""
    n1, n2 = fleet.nodes[0].machine, fleet.nodes[1].machine
    probe = n2.spawn(
        [sys.executable, "-c", PROBE, f"http://{n1.address}:6480", str(fleet.token_file), "12"],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    counters = attack()
    out, _ = probe.communicate(timeout=60)
    ok, bad = (int(x) for x in out.split())
    return f"signed requests answered {ok}/{ok + bad}; server closed {counters['closed_by_server']}"


def _captured_request(fleet: Fleet, server: Machine) -> Path:
    """A signed GET /v1/peers as a member sends it, sent once (accepted), for the replay."""
    import os

    from k3snoded.discovery.signing import derive_key, new_nonce, sign_request

    key = derive_key(TOKEN, "lab")
    headers = sign_request(key, "GET", "/v1/peers", b"", time.time(), new_nonce(os.urandom(16)))
    raw = f"GET /v1/peers HTTP/1.1\r\nHost: {server.address}:6480\r\nConnection: close\r\n"
    raw += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    path = fleet.workdir / f"captured-{time.monotonic_ns()}"
    path.write_bytes(raw.encode())
    send = (
        "import socket,sys;s=socket.create_connection((sys.argv[1],6480),5);"
        "s.sendall(open(sys.argv[2],'rb').read());s.recv(100)"
    )
    fleet.nodes[1].machine.run([sys.executable, "-c", send, server.address, str(path)])
    return path


def _held_for(attack: Attack, agent: Machine, attacker: Machine) -> str:
    """Wait (bounded) until the attacker serves on the VIP and the agent machine's ARP entry
    for the VIP names the attacker: the attack's precondition, stated in the notes."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not attack.events("serving"):
        time.sleep(0.2)
    while time.monotonic() < deadline:
        agent.run(["ping", "-c", "1", "-W", "1", VIP], check=False)
        if _arp_of(agent, VIP) == attacker.mac:
            return "the agent machine's ARP entry for the VIP was the attacker's"
        time.sleep(0.3)
    return "the attacker did NOT hold the agent machine's ARP entry for the VIP"


def _arp_of(machine: Machine, address: str) -> str | None:
    out = machine.run(["ip", "-j", "neigh", "show", address], check=False).stdout
    entries = json.loads(out or "[]")
    return str(entries[0].get("lladdr")) if entries and entries[0].get("lladdr") else None


def baseline(lab: Lab, attacker: Machine) -> Run:
    """The reproduced hole, unauthenticated: three speakers on VRID 52 / .101 of the same lab."""
    servers = lab.machines[:3]
    speakers = [start_ours(servers[0], 150, "--vrid", "52", vip=f"{BASELINE_VIP}/24",
                           tag="-base", authenticated=False)]  # fmt: skip
    wait_for("baseline master", lambda: speakers[0].state() == "master", timeout=10)
    for m, p in zip(servers[1:], (100, 50), strict=True):
        speakers.append(start_ours(m, p, "--vrid", "52", vip=f"{BASELINE_VIP}/24",
                                   tag="-base", authenticated=False))  # fmt: skip
    time.sleep(1)
    run = Run("baseline: vrrp-forge-254, authentication none")
    with Sampler([*servers, attacker], vip=BASELINE_VIP, max_seconds=60) as sampler:
        t0 = time.monotonic()
        Attack(attacker, "vrrp-forge", "--vip", BASELINE_VIP, "--vrid", "52",
               "--priorities", "254").wait(60)  # fmt: skip
        time.sleep(2)
    run.unheld = sampler.unheld(t0, among=[m.name for m in servers])
    run.moves = sampler.moves(t0)
    for s in speakers:
        s.stop()
    return run


def baseline_tls(fleet: Fleet, attacker: Machine) -> Run:
    """A k3s agent given the short token (no CA hash), started on the agent machine beside the
    fleet's, joins while the attacker answers at the VIP: what every fresh agent did before."""
    agent = next(n for n in fleet.nodes if n.agent_only)
    work = fleet.workdir / f"baseline-agent-{time.monotonic_ns()}"
    work.mkdir()
    token = work / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    run = Run("baseline: tls-vip-fresh-agent, a k3s agent with the short token")
    attack = Attack(attacker, "tls-server", "--vip", VIP, "--duration", "30")
    run.notes.append(_held_for(attack, agent.machine, attacker))
    argv = [
        str(FAKE_K3S),
        "agent",
        "--server",
        f"https://{VIP}:6443",
        "--token-file",
        str(token),
        "--data-dir",
        str(work / "k3s"),
        "--lb-server-port",
        "16444",
        "--node-name",
        "base",
    ]
    env = {"K3S_FAKE_ROOT": str(work / "root")}
    k3s = agent.machine.spawn(argv, env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(attack.events("credentials")) < 3:
            time.sleep(0.5)
    finally:
        agent.machine.kill(k3s, signal.SIGKILL)
        attack.stop()
    seen = attack.events("credentials")
    run.token_seen = len(seen)
    run.notes.append(
        f"the cluster token's password in {sum(e['secret'] == PASSWORD for e in seen)}"
    )
    fleet.wait(fleet.converged, 120, "the fleet settled after the baseline")
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated attack names")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    results: list[Run] = []
    with Lab(4, with_client=True, with_db=True) as lab:
        attacker = lab.client
        assert attacker is not None
        db = dbs.start(lab, "postgres")
        fleet = Fleet(lab, endpoint=db.endpoint, eligible=3, agents=1, servers=2,
                      agents_know_registration=False)  # fmt: skip
        fleet.start_all()
        fleet.wait(lambda st: fleet.converged(st) and len(fleet.vip_holders()) == 1, 120, "formed")
        time.sleep(3)
        table = attacks(fleet, attacker)
        names = [n for n in args.only.split(",") if n] or list(table)
        for name in names:
            for i in range(max(1, args.runs)):
                fleet.wait(lambda st: fleet.converged(st) and len(fleet.vip_holders()) == 1,
                           60, "the fleet settled")  # fmt: skip
                run = measured(fleet, attacker, name, table[name])
                results.append(run)
                print(f"{name} run {i + 1}: {run}", flush=True)
        base_tls = baseline_tls(fleet, attacker)
        print(f"baseline: {base_tls}", flush=True)
        base = baseline(lab, attacker)
        print(f"baseline: {base}", flush=True)
    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} "
        f"({len(__import__('os').sched_getaffinity(0))} cores)\n"
    )
    print(
        "| attack | runs | VIP unheld s | VIP moves | peers lost | token seen | RSS MiB | notes |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in dict.fromkeys(r.attack for r in results):
        rs = [r for r in results if r.attack == name]
        print(
            f"| {name} | {len(rs)} | {max(r.unheld for r in rs):.2f} | {max(r.moves for r in rs)} "
            f"| {max(r.peers_lost for r in rs)} | {max(r.token_seen for r in rs)} "
            f"| {max(r.rss_mib for r in rs):+.1f} | {'; '.join(rs[-1].notes)} |"
        )
    print(f"| {base.attack} | 1 | {base.unheld:.2f} | {base.moves} | - | - | - | the hole |")
    print(
        f"| {base_tls.attack} | 1 | - | - | - | {base_tls.token_seen} | - | the hole: "
        f"{'; '.join(base_tls.notes)} |"
    )
    pinned = [r.token_seen for r in results if r.attack == "tls-vip-fresh-agent"]
    if pinned:
        print(f"\ntoken seen by the attacker, pinned / short token: {max(pinned)} / "
              f"{base_tls.token_seen}")  # fmt: skip
    if args.json:
        rows = [r.__dict__ for r in [*results, base, base_tls]]
        Path(args.json).write_text(json.dumps(rows, indent=1, default=sorted))
    return 0


if __name__ == "__main__":
    sys.exit(main())
