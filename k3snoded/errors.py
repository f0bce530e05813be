"""The error hierarchy. Caught broadly in one place (the daemon's loop boundary).

Imports nothing internal.
"""

from __future__ import annotations

from dataclasses import dataclass

EX_CONFIG = 78  # sysexits.h: configuration error; the unit's RestartPreventExitStatus


class K3snodedError(Exception):
    """Base of every error k3snoded raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in one file at one dotted key, e.g. ``servers.count: must be at least 1``."""

    file: str
    key: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        return f"{where}: {self.reason}"


class ConfigError(K3snodedError):
    """The configuration is invalid. Carries every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n{lines}")


class DatastoreError(K3snodedError):
    """The datastore could not do what was asked (unreachable, refused, timed out)."""


class DatastoreUnavailable(DatastoreError):
    """The datastore cannot be reached right now; retrying later may succeed."""


class DatastoreRejected(DatastoreError):
    """The datastore answered but refused: bad credentials, missing database, TLS failure."""


class SupervisorError(K3snodedError):
    """The supervised child could not be started, adopted or stopped."""


class VrrpError(K3snodedError):
    """The VRRP speaker cannot work (no such interface, no raw socket, bad packet)."""


class AuthenticationError(K3snodedError):
    """A signed message or request failed verification (bad MAC, stale, replayed, foreign)."""


class InstallError(K3snodedError):
    """The k3s binary could not be installed or verified."""
