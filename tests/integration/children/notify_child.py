"""A small supervised child for the supervisor tests: READY=1 on NOTIFY_SOCKET, /ping over HTTPS.

Behaviour by flag:
  --port N               serve GET /ping over HTTPS (self-signed) on 127.0.0.1:N
  --ready-delay S        send READY=1 S seconds after start (default 0.1)
  --no-ready             never send READY=1
  --ping-fail-file PATH  /ping answers 503 while PATH exists
  --exit-after S         exit abruptly (crash) S seconds after start ...
  --exit-code N          ... with status N (default 1)
  --ignore-term          ignore SIGTERM (to test the SIGKILL escalation)
  --grandchild-pidfile PATH  start `sleep 300` in the same process group, write its pid there
  --tag TEXT             ignored; makes the command line findable
SIGTERM → exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import signal
import socket
import ssl
import subprocess
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _tls_context() -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "notify-child")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as d:
        cert_path, key_path = Path(d, "cert.pem"), Path(d, "key.pem")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


def _notify(text: str) -> None:
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    address: str | bytes = b"\0" + target[1:].encode() if target.startswith("@") else target
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(text.encode(), address)


async def _main(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    if args.exit_after is not None:
        loop.call_later(args.exit_after, os._exit, args.exit_code)
    if args.grandchild_pidfile:
        grandchild = subprocess.Popen(["sleep", "300"])
        Path(args.grandchild_pidfile).write_text(str(grandchild.pid))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            # --keep-alive answers on the same connection, as k3s (Go's net/http) does.
            for _ in range(100_000 if args.keep_alive else 1):
                request = await reader.readline()
                if not request:
                    break
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                failing = args.ping_fail_file and Path(args.ping_fail_file).exists()
                if request.startswith(b"GET /ping ") and not failing:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong")
                else:
                    writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.transport.abort()

    server = None
    if args.port:
        server = await asyncio.start_server(handle, "127.0.0.1", args.port, ssl=_tls_context())
    if not args.no_ready:
        loop.call_later(args.ready_delay, _notify, "READY=1\nSTATUS=up")
    await stop.wait()
    if server is not None:
        server.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-delay", type=float, default=0.1)
    parser.add_argument("--no-ready", action="store_true")
    parser.add_argument("--keep-alive", action="store_true")
    parser.add_argument("--ping-fail-file", default="")
    parser.add_argument("--exit-after", type=float, default=None)
    parser.add_argument("--exit-code", type=int, default=1)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--grandchild-pidfile", default="")
    parser.add_argument("--tag", default="")
    return asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
