"""Run just the VRRP speaker: ``python -m k3snoded.vrrp --interface eth0 --vip 198.18.0.100 ...``.

For lab tests, the failover bench and operators debugging a segment. Signals: SIGTERM/SIGINT
stop gracefully (priority-0 advert, VIP removed); SIGUSR1 marks the node unhealthy (stand
down), SIGUSR2 healthy again. ``--status-file`` is rewritten (atomically, as JSON) whenever
the state changes.

Adverts are authenticated like the daemon's (``--token-file``, ``--cluster``) unless
``--authentication none``. ``python -m k3snoded.vrrp keepalived-key --token-file F --cluster C
--out FILE`` writes the cluster's advert key (mode 0600) for keepalived's
``auth_hmac { key 1 file:FILE  active_key 1 }``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from dataclasses import asdict
from pathlib import Path

from k3snoded.errors import VrrpError
from k3snoded.tokens import TokenError, read_token, write_secret
from k3snoded.vrrp.auth import AdvertAuth, derive_vrrp_key, keepalived_key
from k3snoded.vrrp.speaker import SpeakerStatus, VrrpSpeaker

log = logging.getLogger("k3snoded.vrrp")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m k3snoded.vrrp", description=__doc__)
    p.add_argument("--interface", required=True)
    p.add_argument("--vip", required=True, help="the virtual address, e.g. 198.18.0.100[/24]")
    p.add_argument("--prefix", type=int, default=None, help="prefix length (default 24)")
    p.add_argument("--vrid", type=int, default=51)
    p.add_argument("--priority", type=int, default=100)
    p.add_argument("--advert-interval", type=float, default=0.1, help="seconds (default 0.1)")
    p.add_argument("--preempt", action="store_true")
    p.add_argument("--unicast-peer", action="append", default=[], metavar="ADDRESS")
    p.add_argument("--source-address", default=None)
    p.add_argument("--garp-repeat-after", type=float, default=2.0)
    p.add_argument(
        "--vip-lifetime", type=int, default=1, help="kernel lifetime of the VIP, s (0: permanent)"
    )
    p.add_argument("--unhealthy", action="store_true", help="start standing down")
    p.add_argument(
        "--authentication",
        choices=("hmac", "none"),
        default="hmac",
        help="hmac (default): sign adverts and drop unsigned ones; none: keepalived without "
        "auth_hmac",
    )
    p.add_argument("--token-file", type=Path, help="the cluster token (needed for hmac)")
    p.add_argument("--cluster", default="default", help="the cluster name (key derivation)")
    p.add_argument("--status-file", type=Path, default=None)
    p.add_argument("--log-level", default="INFO")
    return p


def _write_status(path: Path, status: SpeakerStatus) -> None:
    data = asdict(status)
    data["state"] = status.state.value
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _auth(args: argparse.Namespace) -> AdvertAuth | None:
    if args.authentication == "none":
        return None
    if args.token_file is None:
        raise VrrpError("--authentication hmac needs --token-file (or --authentication none)")
    return AdvertAuth(derive_vrrp_key(read_token(args.token_file), args.cluster))


async def _main(args: argparse.Namespace) -> int:
    vip, _, plen = args.vip.partition("/")
    prefix = args.prefix if args.prefix is not None else int(plen or 24)
    speaker = VrrpSpeaker(
        interface=args.interface,
        vip=vip,
        prefix=prefix,
        vrid=args.vrid,
        priority=args.priority,
        advert_interval=args.advert_interval,
        preempt=args.preempt,
        unicast_peers=args.unicast_peer,
        source_address=args.source_address,
        garp_repeat_after=args.garp_repeat_after,
        vip_lifetime=args.vip_lifetime or None,
        auth=_auth(args),
    )
    if args.unhealthy:
        speaker.set_healthy(False)
    loop = asyncio.get_running_loop()
    stop_tasks: set[asyncio.Task[None]] = set()

    def stop() -> None:
        task = asyncio.create_task(speaker.stop())
        stop_tasks.add(task)

    loop.add_signal_handler(signal.SIGTERM, stop)
    loop.add_signal_handler(signal.SIGINT, stop)
    loop.add_signal_handler(signal.SIGUSR1, speaker.set_healthy, False)
    loop.add_signal_handler(signal.SIGUSR2, speaker.set_healthy, True)
    runner = asyncio.create_task(speaker.run())
    last: SpeakerStatus | None = None
    while not runner.done():
        if args.status_file is None:
            await asyncio.wait({runner})
            break
        now = speaker.status
        if now != last:
            _write_status(args.status_file, now)
            last = now
        await asyncio.wait({runner}, timeout=0.02)
    try:
        runner.result()
    except VrrpError as exc:
        log.error("%s", exc)
        return 1
    if args.status_file is not None:
        _write_status(args.status_file, speaker.status)
    return 0


def _write_keepalived_key(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m k3snoded.vrrp keepalived-key")
    p.add_argument("--token-file", type=Path, required=True)
    p.add_argument("--cluster", required=True)
    p.add_argument("--out", type=Path, required=True, help="written with mode 0600")
    args = p.parse_args(argv)
    try:
        key = derive_vrrp_key(read_token(args.token_file), args.cluster)
    except (TokenError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_secret(args.out, keepalived_key(key) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["keepalived-key"]:
        return _write_keepalived_key(argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return asyncio.run(_main(args))
    except (VrrpError, TokenError) as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
