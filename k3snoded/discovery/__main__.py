"""Discovery diagnostics: announce and watch, printing one JSON object per line.

``python -m k3snoded.discovery announce --name n1 --cluster lab --token-file F --address A``
runs :class:`MdnsDiscovery` (unless ``--no-mdns``; with ``--seed URL`` also
:class:`SeedDiscovery`; with ``--listen`` it serves the signed ``GET /v1/peers``) and prints
``ready``, ``peer`` (new or changed, with its source, role and addresses), ``reject`` (instance
and reason) and ``gone`` events until ``--duration`` elapses or SIGTERM/SIGINT arrives; then it says
goodbye. ``raw`` registers an arbitrary TXT record with plain zeroconf (default probing unless
``--no-probe``) and prints every instance its browser adds: the baseline for benchmarks and a
way to test what k3snoded refuses. Every event carries ``t``, ``time.monotonic()``, which is
the same clock in every network namespace of a host.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from k3snoded.discovery import listener
from k3snoded.discovery.mdns import SERVICE_TYPE, MdnsDiscovery
from k3snoded.discovery.peer_api import PeerApi
from k3snoded.discovery.seed import SeedDiscovery
from k3snoded.discovery.signing import derive_key
from k3snoded.model import Peer, Role


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": round(time.monotonic(), 6), **fields}), flush=True)


def _peer_json(peer: Peer) -> dict[str, object]:
    return {
        "name": peer.name,
        "cluster": peer.cluster,
        "role": peer.role.value,
        "addresses": list(peer.addresses),
        "api_port": peer.api_port,
        "registration": peer.registration,
    }


async def _wait_for_stop(duration: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration)


async def announce(args: argparse.Namespace) -> None:
    key = derive_key(args.token, args.cluster)
    local = Peer(
        name=args.name,
        cluster=args.cluster,
        addresses=(args.address,),
        api_port=args.api_port,
        role=Role(args.role),
        registration=args.registration or None,
    )
    mdns = (
        MdnsDiscovery(
            key,
            args.cluster,
            args.address,
            resign_interval=args.resign_interval,
            max_age=args.max_age,
            on_peer=lambda p: emit("peer", source="mdns", **_peer_json(p)),
            on_reject=lambda name, reason: emit("reject", instance=name, reason=reason),
        )
        if args.mdns
        else None
    )
    seeds = (
        SeedDiscovery(args.seed, key, args.cluster, args.seed_interval, local=local)
        if args.seed
        else None
    )
    api = PeerApi(
        key,
        args.cluster,
        lambda: [
            *(seeds.peers().values() if seeds else ()),
            *(mdns.peers().values() if mdns else ()),
        ],
        lambda: local,
        on_caller=lambda p: emit("peer", source="caller", **_peer_json(p)),
    )
    async with contextlib.AsyncExitStack() as stack:
        if args.listen:
            app = listener.application()
            api.install(app)
            server = await listener.serve(app, args.address, args.api_port)
            stack.push_async_callback(server.close)
            emit("listening", address=args.address, port=args.api_port)
        emit("registering", name=args.name)
        if mdns is not None:
            await mdns.start(local)
            stack.push_async_callback(mdns.close)
            _spawn(stack, _report_goodbyes(mdns, set()))
        emit("ready", name=args.name, instance=mdns.instance if mdns else None)
        if seeds is not None:
            await seeds.start()
            stack.push_async_callback(seeds.close)
            _spawn(stack, _report_seed_peers(seeds))
        if args.update_after is not None:
            _spawn(stack, _update_later(mdns, seeds, local, args))
        await _wait_for_stop(args.duration)
    emit("closed", name=args.name)


def _spawn(stack: contextlib.AsyncExitStack, coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.create_task(coro)

    async def cancel() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    stack.push_async_callback(cancel)


async def _update_later(
    mdns: MdnsDiscovery | None, seeds: SeedDiscovery | None, local: Peer, args: argparse.Namespace
) -> None:
    await asyncio.sleep(args.update_after)
    changed = dataclasses.replace(
        local,
        role=Role(args.update_role or local.role.value),
        registration=args.update_registration or local.registration,
    )
    if mdns is not None:
        await mdns.update(changed)
    if seeds is not None:
        seeds.update(changed)
    emit("updated", **_peer_json(changed))


async def _report_goodbyes(mdns: MdnsDiscovery, known: set[str]) -> None:
    while True:
        await mdns.changed.wait()
        mdns.changed.clear()
        now = set(mdns.peers())
        for name in sorted(known - now):
            emit("gone", name=name)
        known.clear()
        known.update(now)


async def _report_seed_peers(seeds: SeedDiscovery) -> None:
    reported: dict[str, Peer] = {}
    while True:
        await seeds.changed.wait()
        seeds.changed.clear()
        for name, peer in sorted(seeds.peers().items()):
            if reported.get(name) != peer:
                reported[name] = peer
                emit("peer", source="seed", **_peer_json(peer))


async def raw(args: argparse.Namespace) -> None:
    aiozc = AsyncZeroconf(interfaces=[args.address], ip_version=IPVersion.V4Only)
    own = f"{args.instance}.{SERVICE_TYPE}"

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if name != own:
            emit(state_change.name.lower(), instance=name)

    browser = AsyncServiceBrowser(aiozc.zeroconf, [SERVICE_TYPE], handlers=[on_change])
    properties = dict(item.split("=", 1) for item in args.txt)
    info = AsyncServiceInfo(
        SERVICE_TYPE,
        own,
        port=args.port,
        properties=properties,
        server=f"{args.instance}.local.",
        parsed_addresses=[args.address],
    )
    if args.register:
        emit("registering", instance=own)
        await aiozc.async_register_service(info, cooperating_responders=args.no_probe)
        emit("ready", instance=own)
    else:
        emit("ready")
    try:
        await _wait_for_stop(args.duration)
    finally:
        await browser.async_cancel()
        await aiozc.async_close()
        emit("closed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m k3snoded.discovery", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("announce", help="announce with k3snoded's signed mDNS and watch peers")
    a.add_argument("--name", required=True)
    a.add_argument("--cluster", required=True)
    a.add_argument("--token-file", required=True)
    a.add_argument("--address", required=True, help="IPv4 address to bind and announce")
    a.add_argument("--api-port", type=int, default=6480)
    a.add_argument("--role", choices=[r.value for r in Role], default=Role.NONE.value)
    a.add_argument("--registration", default="")
    a.add_argument("--seed", action="append", default=[], help="seed URL (repeatable)")
    a.add_argument("--seed-interval", type=float, default=10.0)
    a.add_argument("--no-mdns", dest="mdns", action="store_false", help="seeds only")
    a.add_argument("--listen", action="store_true", help="serve GET /v1/peers on --api-port")
    a.add_argument("--duration", type=float, default=60.0, help="seconds before goodbye")
    a.add_argument("--resign-interval", type=float, default=60.0)
    a.add_argument("--max-age", type=float, default=300.0)
    a.add_argument("--update-after", type=float, help="seconds, then re-announce with:")
    a.add_argument("--update-role", choices=[r.value for r in Role])
    a.add_argument("--update-registration", default="")
    r = sub.add_parser("raw", help="plain zeroconf: register a verbatim TXT record and browse")
    r.add_argument("--instance", required=True, help="instance label, without the service type")
    r.add_argument("--address", required=True)
    r.add_argument("--port", type=int, default=6480)
    r.add_argument("--txt", action="append", default=[], help="key=value (repeatable)")
    r.add_argument("--no-register", dest="register", action="store_false", help="browse only")
    r.add_argument("--no-probe", action="store_true", help="register without probing")
    r.add_argument("--duration", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.command == "announce":
        args.token = Path(args.token_file).read_text()
    asyncio.run(announce(args) if args.command == "announce" else raw(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
