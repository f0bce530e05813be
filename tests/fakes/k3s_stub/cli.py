"""``k3s`` command line: subcommand dispatch, config files, flag errors, the run loop."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence

from tests.fakes.k3s_stub import (
    COMMIT,
    GO_VERSION,
    VERSION,
    configfile,
    flags,
    knobs,
    logs,
    validate,
)
from tests.fakes.k3s_stub.process import Shutdown, set_title, take_notify_socket

APP_HELP = """NAME:
   k3s - Kubernetes, but small and simple

USAGE:
   k3s [global options] command [command options] [arguments...]

VERSION:
   {version} ({commit})

COMMANDS:
   server   Run management server
   agent    Run node agent

GLOBAL OPTIONS:
   --debug                     (logging) Turn on debug logs [$K3S_DEBUG]
   --help, -h                  show help
   --version, -v               print the version
"""


def _version() -> int:
    sys.stdout.write(f"k3s version {VERSION} ({COMMIT})\ngo version {GO_VERSION}\n")
    return 0


def _parse(command: str, argv: Sequence[str]) -> flags.Args:
    table = flags.SERVER_FLAGS if command == "server" else flags.AGENT_FLAGS
    env = flags.environment()
    try:
        extra = configfile.config_args(argv, table, env)
    except configfile.ConfigError as exc:
        logs.fatal(str(exc))
    try:
        return flags.parse([*extra, *argv], table, env)
    except flags.HelpRequested:
        sys.stdout.write(flags.usage(command, table))
        sys.stdout.flush()
        os._exit(0)
    except flags.UsageError as exc:
        sys.stdout.write(f"Incorrect Usage: {exc}\n\n{flags.usage(command, table)}")
        sys.stdout.flush()
        logs.fatal(str(exc))


async def _crash_later(delay: float) -> None:
    await asyncio.sleep(delay)
    logs.fatal(f"simulated crash after {delay:g}s (K3S_FAKE_CRASH_AFTER)")


async def _run(command: str, args: flags.Args) -> None:
    shutdown = Shutdown(knobs.shutdown_delay())
    shutdown.install(asyncio.get_running_loop())
    crash = knobs.crash_after()
    crasher = asyncio.create_task(_crash_later(crash)) if crash > 0 else None
    if command == "server":
        from tests.fakes.k3s_stub.server import Server

        main_task = asyncio.create_task(Server(args, shutdown).run())
    else:
        from tests.fakes.k3s_stub.agent import Agent

        main_task = asyncio.create_task(Agent(args, shutdown).run())
    stop = asyncio.create_task(shutdown.event.wait())
    await asyncio.wait({main_task, stop}, return_when=asyncio.FIRST_COMPLETED)
    if not main_task.done():
        # Blocking driver calls may hold the main task; a stop never waits more than ~1 s.
        await asyncio.wait({main_task}, timeout=1.0)
    stop.cancel()
    if main_task.done() and not main_task.cancelled() and main_task.exception() is not None:
        exc = main_task.exception()
        logs.fatal(f"{type(exc).__name__}: {exc}")
    if crasher is not None:
        crasher.cancel()


def _set_pdeathsig() -> None:
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG


def _fork_for_log(command: str, args: flags.Args, argv: Sequence[str]) -> int | None:
    """``--log``/``-l`` (cmds.forkIfLoggingOrReaping): the process re-executes itself with its
    output going to the log file, ``NOTIFY_SOCKET=`` and ``_K3S_LOG_REEXEC_=true``, sends
    READY=1 for the child *as soon as it is started*, waits and passes its exit code on."""
    path = args.get_str("log")
    if not path or os.environ.get("_K3S_LOG_REEXEC_"):
        return None
    import subprocess

    env = {**os.environ, "_K3S_LOG_REEXEC_": "true", "NOTIFY_SOCKET": ""}
    with open(path, "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.k3s_stub", command, *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            preexec_fn=_set_pdeathsig,  # noqa: PLW1509 - Pdeathsig: SIGTERM, like k3s's child
        )
    take_notify_socket()
    set_title("init")
    from tests.fakes.k3s_stub.process import notify_ready

    notify_ready()
    return child.wait()


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("--help", "-h", "help"):
        sys.stdout.write(APP_HELP.format(version=VERSION, commit=COMMIT))
        return 0
    while argv and argv[0].split("=")[0] in ("--debug", "-debug"):
        argv = argv[1:]  # the only global flag k3snoded could pass; accepted and ignored
    if argv and argv[0] in ("--version", "-v"):
        return _version()
    if not argv:
        sys.stdout.write(APP_HELP.format(version=VERSION, commit=COMMIT))
        return 0
    command, rest = argv[0], list(argv[1:])
    if command.startswith("-"):
        name = command.lstrip("-").split("=")[0]
        sys.stdout.write(f"Incorrect Usage: flag provided but not defined: -{name}\n")
        logs.fatal(f"flag provided but not defined: -{name}")
    if command not in ("server", "agent"):
        sys.stdout.write(f"No help topic for '{command}'\n")
        return 3
    knobs.load(rest)
    args = _parse(command, rest)
    logs.set_debug(args.get_bool("debug"))
    forked = _fork_for_log(command, args, rest)
    if forked is not None:
        return forked
    if command == "server":
        validate.validate_server(args)
    else:
        validate.validate_agent(args)
    take_notify_socket()
    set_title(command)
    asyncio.run(_run(command, args))
    # Stuck driver threads must not delay the exit: leave at once, like a Go main returning.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
