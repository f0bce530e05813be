"""The VIP as an address on an interface, through rtnetlink.

Idempotent: ``ensure_present``/``ensure_absent`` compare the wanted and the actual address and
act only on a difference, so a lost race ("File exists", "Cannot assign requested address")
is not an error. The VIP is added with the subnet's prefix, which makes the kernel mark it
secondary next to the interface's own (primary) address: source selection keeps using the
primary address, and removing the VIP never touches it. Optionally the VIP carries a short
kernel lifetime that its holder keeps refreshing (see ``put``).

pyroute2 is used narrowly: its message classes (``ifaddrmsg``, ``ifinfmsg``) encode and decode
the requests, sent on our own netlink sockets. ``import pyroute2`` runs the package's
``__init__``, which imports every pyroute2 API (about 190 modules: 12.6 MB resident and 79 ms
of CPU, measured); the two message classes alone cost 1.8 MB and 10 ms, so ``_messages``
imports them without it (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import logging
import socket
import struct
import sys
import types
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from types import TracebackType
from typing import Any

from k3snoded.errors import VrrpError

log = logging.getLogger(__name__)

_AF_INET = 2
_RTM_NEWLINK, _RTM_GETLINK = 16, 18
_RTM_NEWADDR, _RTM_DELADDR, _RTM_GETADDR = 20, 21, 22
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_DUMP = 0x1, 0x4, 0x300
_NLM_F_REPLACE, _NLM_F_CREATE = 0x100, 0x400
_FOREVER = 0xFFFFFFFF
_ACK_TIMEOUT = 1.0  # seconds to wait for the kernel's answer
_IFA_F_SECONDARY = 0x01
_IFF_UP = 0x01


def _messages() -> tuple[Any, Any]:
    """pyroute2's ``ifaddrmsg`` and ``ifinfmsg``, imported without the package's ``__init__``.

    A bare package module stands in for ``pyroute2`` while the two modules load, and is
    removed again, so a later ``import pyroute2`` (tests, the lab) runs the real one."""
    stub = None
    if "pyroute2" not in sys.modules:
        spec = importlib.util.find_spec("pyroute2")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("pyroute2 is not installed")
        stub = types.ModuleType("pyroute2")
        stub.__path__ = list(spec.submodule_search_locations)
        stub.__spec__ = spec
        sys.modules["pyroute2"] = stub
    try:
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    finally:
        if stub is not None and sys.modules.get("pyroute2") is stub:
            del sys.modules["pyroute2"]
    return ifaddrmsg, ifinfmsg


_ifaddrmsg, _ifinfmsg = _messages()


class NetlinkError(OSError):
    """The kernel refused a request (``errno`` is its error)."""


@dataclass(frozen=True)
class InterfaceInfo:
    """What the speaker needs to know about its interface."""

    name: str
    index: int
    mac: bytes
    up: bool
    primary: IPv4Address | None  # the first non-secondary IPv4 address, if any


def _addr_message(kind: int, flags: int, index: int, vip: IPv4Interface, life: int | None) -> Any:
    msg = _ifaddrmsg()
    msg["family"] = _AF_INET
    msg["prefixlen"] = vip.network.prefixlen
    msg["index"] = index
    attrs: list[tuple[str, Any]] = [("IFA_LOCAL", str(vip.ip)), ("IFA_ADDRESS", str(vip.ip))]
    if life is not None:
        cache = {"ifa_preferred": life, "ifa_valid": life, "cstamp": 0, "tstamp": 0}
        attrs.append(("IFA_CACHEINFO", cache))
    msg["attrs"] = attrs
    msg["header"]["type"] = kind
    msg["header"]["flags"] = flags
    return msg


def _split(data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, sequence number, message) of each netlink message in a datagram."""
    out, offset = [], 0
    while offset + 16 <= len(data):
        length, kind, _flags, seq = struct.unpack_from("=IHHI", data, offset)
        if length < 16:
            break
        out.append((kind, seq, data[offset : offset + length]))
        offset += (length + 3) & ~3
    return out


def _error_of(message: bytes) -> int:
    """The (positive) errno of an NLMSG_ERROR, 0 for an ack."""
    if len(message) < 20:
        return errno.EPROTO
    return -int(struct.unpack_from("=i", message, 16)[0])


class Netlink:
    """One rtnetlink socket for the speaker's lifetime. ``async with Netlink() as nl: ...``."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._seq = 0

    async def __aenter__(self) -> Netlink:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            sock.bind((0, 0))
        except OSError as exc:
            raise VrrpError(f"cannot open a netlink socket: {exc}") from exc
        sock.setblocking(False)
        self._sock = sock
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _request(self, msg: Any, *, dump: bool = False) -> list[bytes]:
        """Send one request; the replies up to its ack (or the dump's end). NetlinkError when
        the kernel refuses it, VrrpError when it does not answer."""
        sock = self._sock
        if sock is None:
            raise VrrpError("netlink socket is not open")
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        msg["header"]["sequence_number"] = self._seq
        msg["header"]["flags"] |= _NLM_F_REQUEST | (_NLM_F_DUMP if dump else _NLM_F_ACK)
        msg.encode()
        replies: list[bytes] = []
        loop = asyncio.get_running_loop()
        try:
            sock.send(bytes(msg.data))
            async with asyncio.timeout(_ACK_TIMEOUT):
                while True:
                    for kind, seq, message in _split(await loop.sock_recv(sock, 65536)):
                        if seq != self._seq:
                            continue  # an answer to an earlier request that timed out
                        if kind == _NLMSG_DONE:
                            return replies
                        if kind == _NLMSG_ERROR:
                            code = _error_of(message)
                            if code:
                                raise NetlinkError(code, errno.errorcode.get(code, str(code)))
                            return replies
                        replies.append(message)
        except TimeoutError as exc:
            raise VrrpError("netlink: no answer from the kernel") from exc
        except NetlinkError:
            raise
        except OSError as exc:
            raise VrrpError(f"netlink: {exc}") from exc

    async def interface(self, name: str) -> InterfaceInfo:
        """The interface called ``name``; VrrpError if there is none."""
        try:
            index = socket.if_nametoindex(name)
        except OSError as exc:
            raise VrrpError(f"no interface {name!r}") from exc
        req = _ifinfmsg()
        req["index"] = index
        req["header"]["type"] = _RTM_GETLINK
        req["header"]["flags"] = 0
        try:
            replies = await self._request(req)
            addrs = await self._addr_dump(index)
        except NetlinkError as exc:
            raise VrrpError(f"cannot read interface {name!r}: {exc}") from exc
        link = next((m for m in replies if struct.unpack_from("=H", m, 4)[0] == _RTM_NEWLINK), b"")
        if not link:
            raise VrrpError(f"cannot read interface {name!r}: no answer")
        info = _ifinfmsg(link)
        info.decode()
        mac_text = info.get_attr("IFLA_ADDRESS") or "00:00:00:00:00:00"
        primary = next((a.ip for a, flags in addrs if not flags & _IFA_F_SECONDARY), None)
        return InterfaceInfo(
            name=name,
            index=index,
            mac=bytes.fromhex(mac_text.replace(":", "")),
            up=bool(info["flags"] & _IFF_UP),
            primary=primary,
        )

    async def _addr_dump(self, index: int) -> list[tuple[IPv4Interface, int]]:
        req = _ifaddrmsg()
        req["family"] = _AF_INET
        req["header"]["type"] = _RTM_GETADDR
        req["header"]["flags"] = 0
        out = []
        for message in await self._request(req, dump=True):
            row = _ifaddrmsg(message)
            row.decode()
            local = row.get_attr("IFA_LOCAL") or row.get_attr("IFA_ADDRESS")
            if row["index"] == index and local:
                flags = int(row.get_attr("IFA_FLAGS") or row["flags"])
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
        flags = _NLM_F_CREATE | _NLM_F_REPLACE
        try:
            await self._request(_addr_message(_RTM_NEWADDR, flags, index, vip, lifetime))
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
            await self._request(_addr_message(_RTM_DELADDR, 0, index, addr, None))
        except NetlinkError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
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

    A master refreshes the VIP's lifetime several times a second. Through pyroute2's
    AsyncIPRoute a request cost about 1.2 ms of CPU (measured), which alone would be 0.5 % of a
    core; the same message, encoded once and re-sent with a new sequence number on a plain
    netlink socket, costs about 6 us. ``put`` waits for the kernel's ack (the first add, before
    gratuitous ARP); ``refresh`` only sends (no ack asked, so success is silent and a refusal
    is read back by the next ``refresh``): the speaker calls it with its adverts, without
    another wake-up. Everything else (listing, removal) uses :class:`Netlink`.
    """

    def __init__(self, index: int, vip: IPv4Interface, lifetime: int | None) -> None:
        flags = _NLM_F_REQUEST | _NLM_F_ACK | _NLM_F_CREATE | _NLM_F_REPLACE
        msg = _addr_message(
            _RTM_NEWADDR, flags, index, vip, _FOREVER if lifetime is None else lifetime
        )
        msg["header"]["sequence_number"] = 0
        msg.encode()
        self._message = bytes(msg.data)
        flags_at = 6  # struct nlmsghdr {u32 len; u16 type; u16 flags; u32 seq; u32 pid}
        quiet = struct.pack("=H", flags & ~_NLM_F_ACK)
        self._quiet = self._message[:flags_at] + quiet + self._message[flags_at + 2 :]
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

    def _send(self, template: bytes) -> socket.socket:
        if self._sock is None:
            raise VrrpError("netlink socket is not open")
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        self._sock.send(template[:8] + struct.pack("=I", self._seq) + template[12:])
        return self._sock

    async def put(self) -> None:
        """Create the VIP or refresh its lifetime; VrrpError if the kernel refuses."""
        try:
            sock = self._send(self._message)
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(_ACK_TIMEOUT):
                while True:
                    reply = await loop.sock_recv(sock, 4096)
                    if self._ack(reply):
                        return
        except (OSError, TimeoutError) as exc:
            raise VrrpError(f"cannot add {self._vip}: {exc or 'no answer'}") from exc

    def refresh(self) -> None:
        """Refresh the lifetime without waiting; VrrpError if an earlier refresh was refused
        (the caller then reconciles with ``put``)."""
        try:
            sock = self._send(self._quiet)
            while True:  # only refusals are ever queued: drain them without blocking
                for kind, _seq, message in _split(sock.recv(4096, socket.MSG_DONTWAIT)):
                    if kind == _NLMSG_ERROR and _error_of(message):
                        code = _error_of(message)
                        raise VrrpError(
                            f"cannot refresh {self._vip}: {errno.errorcode.get(code, code)}"
                        )
        except BlockingIOError:
            return
        except OSError as exc:
            raise VrrpError(f"cannot refresh {self._vip}: {exc}") from exc

    def _ack(self, reply: bytes) -> bool:
        """True for our request's ack; raises on its error; False for anything else."""
        for kind, seq, message in _split(reply):
            if kind == _NLMSG_ERROR and seq == self._seq and len(message) >= 20:
                error = _error_of(message)
                if error:
                    raise VrrpError(f"cannot add {self._vip}: {errno.errorcode.get(error, error)}")
                return True
        return False
