"""The VIP as an address on an interface, managed through netlink (pyroute2's AsyncIPRoute).

Idempotent: ``ensure_present``/``ensure_absent`` compare the wanted and the actual address and
act only on a difference, so a lost race ("File exists", "Cannot assign requested address")
is not an error. The VIP is added with the subnet's prefix, which makes the kernel mark it
secondary next to the interface's own (primary) address: source selection keeps using the
primary address, and removing the VIP never touches it. Optionally the VIP carries a short
kernel lifetime that its holder keeps refreshing (see ``ensure_present``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from types import TracebackType
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from k3snoded.errors import VrrpError

log = logging.getLogger(__name__)

_AF_INET = 2
_RTM_NEWADDR = 20
_NLMSG_ERROR = 2
_FOREVER = 0xFFFFFFFF
_ACK_TIMEOUT = 1.0  # seconds to wait for the kernel's ack of RTM_NEWADDR
_IFA_F_SECONDARY = 0x01
_IFF_UP = 0x01


@dataclass(frozen=True)
class InterfaceInfo:
    """What the speaker needs to know about its interface."""

    name: str
    index: int
    mac: bytes
    up: bool
    primary: IPv4Address | None  # the first non-secondary IPv4 address, if any


async def _collect(result: Any) -> list[Any]:
    """pyroute2 0.9 returns lists for some requests and async generators for dumps."""
    if hasattr(result, "__aiter__"):
        return [item async for item in result]
    return list(result)


class Netlink:
    """One rtnetlink socket for the speaker's lifetime. ``async with Netlink() as nl: ...``."""

    def __init__(self) -> None:
        self._ipr: Any = None

    async def __aenter__(self) -> Netlink:
        try:
            self._ipr = AsyncIPRoute()
            await self._ipr.__aenter__()
        except OSError as exc:
            raise VrrpError(f"cannot open a netlink socket: {exc}") from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ipr is not None:
            await self._ipr.__aexit__(exc_type, exc, tb)
            self._ipr = None

    @property
    def _r(self) -> Any:
        if self._ipr is None:
            raise VrrpError("netlink socket is not open")
        return self._ipr

    async def interface(self, name: str) -> InterfaceInfo:
        """The interface called ``name``; VrrpError if there is none."""
        try:
            found = await self._r.link_lookup(ifname=name)
            if not found:
                raise VrrpError(f"no interface {name!r}")
            index = int(found[0])
            (link,) = await _collect(await self._r.link("get", index=index))
            addrs = await self._addr_dump(index)
        except NetlinkError as exc:
            raise VrrpError(f"cannot read interface {name!r}: {exc}") from exc
        mac_text = link.get("address") or "00:00:00:00:00:00"
        primary = next(
            (a.ip for a, flags in addrs if not flags & _IFA_F_SECONDARY),
            None,
        )
        return InterfaceInfo(
            name=name,
            index=index,
            mac=bytes.fromhex(mac_text.replace(":", "")),
            up=bool(link["flags"] & _IFF_UP),
            primary=primary,
        )

    async def _addr_dump(self, index: int) -> list[tuple[IPv4Interface, int]]:
        rows = await _collect(await self._r.addr("dump", index=index, family=_AF_INET))
        out = []
        for row in rows:
            local = row.get("local") or row.get("address")
            if local:
                flags = int(row.get("flags") or row["flags"])
                out.append((IPv4Interface(f"{local}/{row['prefixlen']}"), flags))
        return out

    async def addresses(self, index: int) -> list[IPv4Interface]:
        """The IPv4 addresses on the interface, with their prefix lengths."""
        try:
            return [a for a, _ in await self._addr_dump(index)]
        except NetlinkError as exc:
            raise VrrpError(f"cannot list addresses of interface {index}: {exc}") from exc

    async def holds(self, index: int, vip: IPv4Interface) -> bool:
        """Whether the VIP's address is on the interface (any prefix length)."""
        return any(a.ip == vip.ip for a in await self.addresses(index))

    async def put(self, index: int, vip: IPv4Interface, lifetime: int | None = None) -> None:
        """Make the VIP present: one idempotent netlink ``replace`` (creates or updates).

        With ``lifetime`` (seconds), the address gets that valid and preferred lifetime on
        every call: the kernel deletes it by itself unless it is refreshed in time, so a
        holder that is SIGKILLed or frozen does not keep the address for ever.
        """
        extra = {} if lifetime is None else {"valid_lft": lifetime, "preferred_lft": lifetime}
        try:
            await self._r.addr(
                "replace",
                index=index,
                address=str(vip.ip),
                prefixlen=vip.network.prefixlen,
                **extra,
            )
        except NetlinkError as exc:
            raise VrrpError(f"cannot add {vip} to interface {index}: {exc}") from exc

    async def ensure_present(
        self, index: int, vip: IPv4Interface, lifetime: int | None = None
    ) -> bool:
        """Add the VIP unless it is there (refreshing its lifetime); True if this call added it."""
        present = await self.holds(index, vip)
        await self.put(index, vip, lifetime)
        return not present

    async def _delete(self, index: int, addr: IPv4Interface) -> bool:
        try:
            await self._r.addr(
                "del", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen
            )
        except NetlinkError as exc:
            if exc.code == errno.EADDRNOTAVAIL:
                return False
            raise VrrpError(f"cannot remove {addr} from interface {index}: {exc}") from exc
        return True

    async def ensure_absent(self, index: int, vip: IPv4Interface) -> bool:
        """Remove the VIP (whatever its prefix length) if it is there; True if removed.

        The usual case costs one request: delete with the VIP's own prefix. Only when that
        finds nothing are the addresses listed, for a copy with another prefix length.
        """
        if await self._delete(index, vip):
            return True
        removed = False
        for addr in await self.addresses(index):
            if addr.ip == vip.ip:
                removed = await self._delete(index, addr) or removed
        return removed


class AddressWriter:
    """Adds or refreshes the VIP with one pre-encoded RTM_NEWADDR (replace) request.

    A master refreshes the VIP's lifetime several times a second. Through AsyncIPRoute a request
    costs about 1.2 ms of CPU (measured), which alone would be 0.5 % of a core; the same message,
    encoded once by pyroute2's ``ifaddrmsg`` and re-sent with a new sequence number on a plain
    netlink socket, costs about 6 us. Everything else (listing, removal) uses :class:`Netlink`.
    """

    def __init__(self, index: int, vip: IPv4Interface, lifetime: int | None) -> None:
        msg = ifaddrmsg()
        msg["family"] = _AF_INET
        msg["prefixlen"] = vip.network.prefixlen
        msg["index"] = index
        life = _FOREVER if lifetime is None else lifetime
        msg["attrs"] = [
            ("IFA_LOCAL", str(vip.ip)),
            ("IFA_ADDRESS", str(vip.ip)),
            ("IFA_CACHEINFO", {"ifa_preferred": life, "ifa_valid": life, "cstamp": 0, "tstamp": 0}),
        ]
        msg["header"]["type"] = _RTM_NEWADDR
        msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
        msg["header"]["sequence_number"] = 0
        msg.encode()
        self._message = bytes(msg.data)
        self._vip = vip
        self._seq = 0
        self._sock: socket.socket | None = None

    def open(self) -> None:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            sock.bind((0, 0))
        except OSError as exc:
            raise VrrpError(f"cannot open a netlink socket: {exc}") from exc
        sock.setblocking(False)
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def put(self) -> None:
        """Create the VIP or refresh its lifetime; VrrpError if the kernel refuses."""
        if self._sock is None:
            raise VrrpError("netlink socket is not open")
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        m = self._message
        try:
            self._sock.send(m[:8] + struct.pack("=I", self._seq) + m[12:])
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(_ACK_TIMEOUT):
                while True:
                    reply = await loop.sock_recv(self._sock, 4096)
                    if self._ack(reply):
                        return
        except (OSError, TimeoutError) as exc:
            raise VrrpError(f"cannot add {self._vip}: {exc or 'no answer'}") from exc

    def _ack(self, reply: bytes) -> bool:
        """True for our request's ack; raises on its error; False for anything else."""
        offset = 0
        while offset + 16 <= len(reply):
            length, kind, _flags, seq = struct.unpack_from("=IHHI", reply, offset)
            if kind == _NLMSG_ERROR and seq == self._seq and offset + 20 <= len(reply):
                (error,) = struct.unpack_from("=i", reply, offset + 16)
                if error:
                    raise VrrpError(f"cannot add {self._vip}: {errno.errorcode.get(-error, error)}")
                return True
            offset += max(length, 16)
        return False
