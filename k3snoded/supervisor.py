"""Generic child lifecycle: start, readiness, stop, backoff, adoption. Knows nothing about k3s.

(Work in progress: the Supervisor class follows.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from k3snoded.model import ChildState


@dataclass(frozen=True)
class ChildSpec:
    """What to run. ``env`` is the complete environment, as sorted (name, value) pairs.

    Readiness is the child's READY=1 on its private NOTIFY_SOCKET, then (when ``ready_url`` is
    set) an HTTPS GET of that URL answering 200; both within ``ready_timeout`` seconds of exec.
    """

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    cwd: Path | None = None
    ready_url: str | None = None
    ready_timeout: float = 300.0
    stop_timeout: float = 30.0

    @classmethod
    def build(
        cls,
        argv: list[str] | tuple[str, ...],
        env: Mapping[str, str],
        *,
        cwd: Path | None = None,
        ready_url: str | None = None,
        ready_timeout: float = 300.0,
        stop_timeout: float = 30.0,
    ) -> ChildSpec:
        return cls(
            tuple(argv), tuple(sorted(env.items())), cwd, ready_url, ready_timeout, stop_timeout
        )

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    @property
    def identity(self) -> str:
        """A hash of what the process was started with (argv, env, cwd), kept in the pidfile.

        Readiness and stop settings are not part of it: changing them restarts nothing.
        """
        blob = json.dumps([self.argv, self.env, str(self.cwd or "")]).encode()
        return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class ChildStatus:
    """A snapshot of the supervised child, for the daemon, the API and the logs."""

    state: ChildState = ChildState.STOPPED
    pid: int | None = None
    ready: bool = False
    restarts: int = 0
    last_exit: int | None = None  # exit status; 128+N when killed by signal N; None if unknown
    crash_loop: bool = False
    since: float = 0.0  # wall-clock time of the last state change
    adopted: bool = False
    message: str = ""
