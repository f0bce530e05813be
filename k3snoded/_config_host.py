"""Facts about this machine that supply config defaults: host name, interface, IPv4 address.

Private to ``k3snoded.config``. ``detect_host()`` reads the real machine (``/proc/net/route``
for the default route, ``SIOCGIFFLAGS``/``SIOCGIFADDR`` ioctls for state and primary address);
tests pass a ``HostFacts`` instead. Detection never raises: what cannot be found is left empty,
and validation complains only if something needs it.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

_SIOCGIFFLAGS = 0x8913
_SIOCGIFADDR = 0x8915
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
_RTF_UP = 0x1
_PROC_ROUTE = Path("/proc/net/route")


@dataclass(frozen=True)
class Interface:
    name: str
    up: bool
    loopback: bool
    ipv4: str  # the primary IPv4 address, "" if none


@dataclass(frozen=True)
class HostFacts:
    """What the defaults are computed from. ``interfaces`` keeps the kernel's index order."""

    hostname: str = ""
    default_route_interface: str = ""
    interfaces: tuple[Interface, ...] = ()

    def default_interface(self) -> str:
        """The default route's interface, else the first up non-loopback one, else ""."""
        if self.default_route_interface:
            return self.default_route_interface
        for iface in self.interfaces:
            if iface.up and not iface.loopback:
                return iface.name
        return ""

    def address_of(self, name: str) -> str:
        """The primary IPv4 address of interface ``name``, "" if unknown."""
        for iface in self.interfaces:
            if iface.name == name:
                return iface.ipv4
        return ""


def detect_host() -> HostFacts:
    """Read this machine's host name, default-route interface and interface addresses."""
    try:
        hostname = socket.gethostname()
    except OSError:
        hostname = ""
    return HostFacts(
        hostname=hostname,
        default_route_interface=_default_route_interface(_PROC_ROUTE),
        interfaces=tuple(_interfaces()),
    )


def _default_route_interface(route_file: Path) -> str:
    """The interface of the IPv4 default route with the lowest metric, from /proc/net/route."""
    try:
        lines = route_file.read_text().splitlines()[1:]
    except OSError:
        return ""
    best: tuple[int, str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination, flags, metric = int(fields[1], 16), int(fields[3], 16), int(fields[6])
            mask = int(fields[7], 16)
        except ValueError:
            continue
        if destination == 0 and mask == 0 and flags & _RTF_UP:
            candidate = (metric, fields[0])
            if best is None or candidate < best:
                best = candidate
    return best[1] if best else ""


def _interfaces() -> list[Interface]:
    try:
        names = socket.if_nameindex()
    except OSError:
        return []
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return []
    with sock:
        result = []
        for _index, name in names:
            flags = _ioctl_flags(sock, name)
            result.append(
                Interface(
                    name=name,
                    up=bool(flags & _IFF_UP),
                    loopback=bool(flags & _IFF_LOOPBACK),
                    ipv4=_ioctl_ipv4(sock, name),
                )
            )
        return result


def _ifreq(name: str) -> bytes:
    return struct.pack("256s", name.encode()[:15])


def _ioctl_flags(sock: socket.socket, name: str) -> int:
    try:
        out = fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, _ifreq(name))
    except OSError:
        return 0
    return int(struct.unpack_from("H", out, 16)[0])


def _ioctl_ipv4(sock: socket.socket, name: str) -> str:
    try:
        out = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, _ifreq(name))
    except OSError:  # EADDRNOTAVAIL: no IPv4 address
        return ""
    return str(ipaddress.IPv4Address(out[20:24]))
