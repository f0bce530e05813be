"""A tiny HTTPS client for the tests (stdlib only), with or without verification."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str


def get(
    url: str,
    auth: tuple[str, str] | None = None,
    cadata: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
    cert: tuple[Path, Path] | None = None,
) -> Reply:
    return request(
        "GET", url, auth=auth, cadata=cadata, headers=headers, timeout=timeout, cert=cert
    )


def admin(server_dir: Path) -> tuple[Path, Path]:
    """The admin client certificate k3s writes (server/tls/client-admin.{crt,key})."""
    return server_dir / "tls/client-admin.crt", server_dir / "tls/client-admin.key"


def request(
    method: str,
    url: str,
    *,
    body: object = None,
    content_type: str = "application/json",
    auth: tuple[str, str] | None = None,
    cadata: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
    cert: tuple[Path, Path] | None = None,
) -> Reply:
    if cadata is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cadata=cadata.decode())
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", content_type)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            return Reply(resp.status, resp.read(), resp.headers.get("Content-Type", ""))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.read(), exc.headers.get("Content-Type", ""))


def peer_cert(host: str, port: int) -> bytes:
    """The DER certificate the listener presents."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der
