"""The speaker's socket hears only its own VRID: other routers' adverts on the segment are
dropped by a kernel filter (they used to wake the daemon ten times a second, to be discarded)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.lab.fixtures import LabFactory, lab_factory, require_root

require_root()

pytestmark = pytest.mark.lab
__all__ = ["lab_factory"]  # the fixture, imported for pytest

LISTEN = """
import json, socket, time
from ipaddress import IPv4Address
from k3snoded.vrrp.transport import VrrpSocket
s = VrrpSocket("eth0", socket.if_nametoindex("eth0"), IPv4Address("198.18.0.12"),
               multicast=True, vrid={vrid})
s.open()
seen, end = [], time.monotonic() + 4
while time.monotonic() < end:
    data = s.receive()
    if data is None:
        time.sleep(0.01)
        continue
    seen.append(data[(data[0] & 15) * 4 + 1])
print(json.dumps(seen))
"""

SEND = """
import socket, time
from ipaddress import IPv4Address
from k3snoded.vrrp import packet
from k3snoded.vrrp.transport import VrrpSocket
s = VrrpSocket("eth0", socket.if_nametoindex("eth0"), IPv4Address("198.18.0.11"), multicast=True)
s.open()
time.sleep(1.5)
for vrid in (52, 51, 7, 51, 52):
    a = packet.Advertisement(vrid, 100, 10, (IPv4Address("198.18.0.100"),))
    s.send(packet.encode(a, s.source, packet.VRRP_MULTICAST_GROUP), packet.VRRP_MULTICAST_GROUP)
    time.sleep(0.05)
"""


@pytest.mark.parametrize(("vrid", "expected"), [(51, [51, 51]), (None, [52, 51, 7, 51, 52])])
def test_only_our_vrid_reaches_the_speaker(
    lab_factory: LabFactory, vrid: int | None, expected: list[int]
) -> None:
    lab = lab_factory(2)
    sender, listener = lab.machines
    listening = listener.spawn(
        [sys.executable, "-c", LISTEN.format(vrid=vrid)], stdout=subprocess.PIPE
    )
    sender.run([sys.executable, "-c", SEND])
    out, _ = listening.communicate(timeout=15)
    assert json.loads(out) == expected
