"""Planned operations over the network: ``POST /v1/ops`` on the peer API, signed both ways.

The request is a small JSON object (``{"action": "pause", "by": "alice on m1"}``) signed like
every peer-API request (HMAC of the cluster key over method, path, body hash, time and nonce:
``discovery/signing.py``); unsigned, forged, stale and replayed requests get 401 and change
nothing. The answer is signed and bound to the request's nonce. Actions:

| action | fields | who acts |
| --- | --- | --- |
| ``pause`` / ``resume`` | ``by`` | any member with the datastore: writes ``ops/pause`` |
| ``maintenance`` | ``node``, ``on``, ``by`` | ``node`` itself (asked directly when reachable) |
| ``switchover`` | ``to`` (optional), ``by`` | the VIP holder; others answer "not holding" |
| ``vip-boost`` / ``vip-unboost`` | ``id``, ``seconds`` | a switchover's named server |
| ``kube`` | ``op`` (cordon, uncordon, drain), ``node``, ``timeout`` | a ready server |
| ``refresh`` | | read the operations' flags now (someone changed them) |

The same handler serves the local control socket (``k3snoded`` commands), where the caller is
root on this machine.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from k3snoded import httpc
from k3snoded.discovery.peer_api import PeerApi
from k3snoded.discovery.signing import new_nonce, sign_request, verify_response
from k3snoded.errors import AuthenticationError
from k3snoded.httpd import Request, Response, Router, json_response

log = logging.getLogger(__name__)

OPS_PATH = "/v1/ops"
MAX_ANSWER = 64 * 1024
ACTIONS = frozenset(
    {
        "pause",
        "resume",
        "maintenance",
        "switchover",
        "vip-boost",
        "vip-unboost",
        "kube",
        "refresh",
    }
)

Handler = Callable[[dict[str, Any], str], Awaitable[dict[str, Any]]]


class OpsError(Exception):
    """A peer could not be asked, or refused."""


def check_request(body: bytes) -> dict[str, Any] | str:
    """The request object, or why it is not one (malformed requests change nothing)."""
    try:
        req = json.loads(body)
    except (ValueError, RecursionError):
        return "the body is not JSON"
    if not isinstance(req, dict) or req.get("action") not in ACTIONS:
        return "no known action"
    for key, value in req.items():
        if not isinstance(key, str) or not isinstance(value, str | int | float | bool):
            return f"field {key!r} is not a plain value"
        if isinstance(value, str) and len(value) > 512:
            return f"field {key!r} is too long"
    return req


def install(api: PeerApi, handler: Handler) -> Callable[[Router], None]:
    """A peer-API setup hook that mounts ``POST /v1/ops`` (signed) calling ``handler``."""

    async def handle(request: Request) -> Response:
        req = check_request(request.body)  # the body that verified (PeerApi.signed)
        if isinstance(req, str):
            return json_response({"ok": False, "why": req}, 400)
        answer = await handler(req, f"a signed peer request from {request.remote}")
        return json_response(answer)

    def setup(router: Router) -> None:
        router.add_post(OPS_PATH, api.signed(handle))

    return setup


async def call(
    base: str, key: bytes, req: dict[str, Any], *, limit: float = 10.0, window: float = 30
) -> dict[str, Any]:
    """Send ``req`` to the peer API at ``base`` (``http://host:port``); its answer.

    Raises OpsError when the peer cannot be reached, refuses the signature, or answers with
    something unsigned, forged or stale.
    """
    body = json.dumps(req, sort_keys=True).encode()
    nonce = new_nonce(os.urandom(16))
    headers = sign_request(key, "POST", OPS_PATH, body, time.time(), nonce)
    headers["Content-Type"] = "application/json"
    try:
        resp = await httpc.request(
            "POST", base + OPS_PATH, headers=headers, body=body, timeout=limit,
            max_body=MAX_ANSWER,
        )  # fmt: skip
    except (OSError, TimeoutError, ValueError) as exc:
        raise OpsError(f"cannot reach {base}: {exc or type(exc).__name__}") from exc
    raw, status, got = resp.body, resp.status, resp.headers
    if status == 401:
        raise OpsError(f"{base} refused the request: {raw.decode(errors='replace').strip()}")
    try:
        verify_response(key, nonce, status, raw, got, now=time.time(), window=window)
        answer = json.loads(raw)
    except (AuthenticationError, ValueError) as exc:
        raise OpsError(f"{base}: the answer does not verify: {exc}") from exc
    if not isinstance(answer, dict):
        raise OpsError(f"{base}: the answer is not an object")
    return answer
