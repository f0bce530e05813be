"""Command line: parse, call, exit code. No logic lives here."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from k3snoded import __version__
from k3snoded.config import DEFAULT_CONFIG, Config, load_config
from k3snoded.errors import EX_CONFIG, ConfigError, K3snodedError

EX_OK = 0
EX_FAILURE = 1
EX_UNAVAILABLE = 69  # sysexits.h: the daemon is not running / not reachable


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="k3snoded",
        description="Forms and keeps a highly available k3s cluster on a fleet of machines.",
    )
    p.add_argument("--version", action="version", version=f"k3snoded {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--config",
            type=Path,
            default=DEFAULT_CONFIG,
            help=f"main config file; drop-ins in config.d/ beside it (default {DEFAULT_CONFIG})",
        )

    with_config(sub.add_parser("run", help="run the daemon in the foreground"))
    with_config(sub.add_parser("check-config", help="validate the configuration and exit"))
    st = sub.add_parser("status", help="show this node and the fleet")
    with_config(st)
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    lv = sub.add_parser(
        "leave", help="hand this machine's role over to the fleet, then stop its k3s"
    )
    with_config(lv)
    lv.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (600)")
    mt = sub.add_parser(
        "maintenance",
        help="take a machine out of service (no VIP, no server seat, drained) or back in",
    )
    with_config(mt)
    mt.add_argument("state", choices=("on", "off"))
    mt.add_argument("node", nargs="?", default="", help="the machine (default: this one)")
    for name, text in (
        ("pause", "the coordinator makes no role changes until resume (the VIP still moves)"),
        ("resume", "end a pause"),
    ):
        with_config(sub.add_parser(name, help=text))
    so = sub.add_parser("switchover", help="move the VIP to another ready server now")
    with_config(so)
    so.add_argument("--to", default="", metavar="NODE", help="the server to move it to")
    tok = sub.add_parser("token", help="cluster token tools")
    toksub = tok.add_subparsers(dest="token_command", metavar="ACTION")
    gen = toksub.add_parser("generate", help="print (or write) a new strong random token")
    gen.add_argument("--output", type=Path, help="write the token to FILE with mode 0600")
    return p


def _load(path: Path) -> Config:
    return load_config(path)


def _config_error(err: ConfigError) -> int:
    print(f"k3snoded: {err}", file=sys.stderr)
    return EX_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            from k3snoded.daemon import run_daemon

            return run_daemon(args.config)
        if args.command == "check-config":
            cfg = _load(args.config)
            from k3snoded.describe import describe_config

            print(describe_config(cfg))
            return EX_OK
        if args.command == "status":
            return _status(_load(args.config), as_json=args.json)
        if args.command == "leave":
            return _leave(_load(args.config), args.timeout)
        if args.command in ("maintenance", "pause", "resume", "switchover"):
            return _operation(_load(args.config), _request(args))
        if args.command == "token" and args.token_command == "generate":  # noqa: S105
            return _token_generate(args.output)
    except ConfigError as err:
        return _config_error(err)
    except K3snodedError as err:
        print(f"k3snoded: {err}", file=sys.stderr)
        return EX_FAILURE
    except KeyboardInterrupt:
        return 130
    _parser().print_usage(sys.stderr)
    return 2


def _status(cfg: Config, *, as_json: bool) -> int:
    from k3snoded.api import fetch_status
    from k3snoded.describe import describe_status

    try:
        status = asyncio.run(fetch_status(cfg.socket_path))
    except OSError as err:
        print(f"k3snoded: cannot reach the daemon at {cfg.socket_path}: {err}", file=sys.stderr)
        return EX_UNAVAILABLE
    if as_json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(describe_status(status))
    return EX_OK


def _leave(cfg: Config, timeout: float) -> int:
    import time

    from k3snoded.api import fetch_status, request_leave

    try:
        asyncio.run(request_leave(cfg.socket_path))
    except OSError as err:
        print(f"k3snoded: cannot reach the daemon at {cfg.socket_path}: {err}", file=sys.stderr)
        return EX_UNAVAILABLE
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            status = asyncio.run(fetch_status(cfg.socket_path))
        except OSError as err:
            print(f"k3snoded: lost the daemon while leaving: {err}", file=sys.stderr)
            return EX_FAILURE
        line = str(status.get("decision", ""))
        if line != last:
            print(line)
            last = line
        done = status.get("leaving") == "left" or (
            "leaving" not in status and status["node"]["role"] == "none"
        )
        if done and not status["k3s"]["pid"]:
            print("left the fleet; now stop and disable the unit: systemctl disable --now k3snoded")
            return EX_OK
        time.sleep(1.0)
    print(f"k3snoded: still handing over after {timeout:.0f} s", file=sys.stderr)
    return EX_FAILURE


def _request(args: argparse.Namespace) -> dict[str, object]:
    import getpass
    import socket

    try:
        user = os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    req: dict[str, object] = {"action": args.command, "by": f"{user} on {socket.gethostname()}"}
    if args.command == "maintenance":
        req.update(on=args.state == "on", node=args.node)
    elif args.command == "switchover":
        req["to"] = args.to
    return req


def _operation(cfg: Config, req: dict[str, object]) -> int:
    from k3snoded.api import request_ops

    limit = 600.0 if req["action"] == "maintenance" else 60.0
    try:
        answer = asyncio.run(request_ops(cfg.socket_path, req, limit))
    except OSError as err:
        print(f"k3snoded: cannot reach the daemon at {cfg.socket_path}: {err}", file=sys.stderr)
        return EX_UNAVAILABLE
    if answer.get("ok"):
        print(answer.get("result") or "done")
        return EX_OK
    print(f"k3snoded: {req['action']} refused: {answer.get('why', 'no reason given')}",
          file=sys.stderr)  # fmt: skip
    return EX_FAILURE


def _token_generate(output: Path | None) -> int:
    from k3snoded.tokens import generate_token, write_secret

    token = generate_token()
    if output is None:
        print(token)
    else:
        write_secret(output, token + "\n")
        print(f"k3snoded: wrote a new token to {output} (mode 0600)", file=sys.stderr)
    return EX_OK
