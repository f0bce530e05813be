"""The datastore contract k3snoded coordinates through (D1), in the style of Patroni's AbstractDCS.

k3snoded keeps three small tables of its own beside kine's (``k3snoded_members``,
``k3snoded_leases``, ``k3snoded_flags``, plus ``k3snoded_schema_version``). Every time that
matters (heartbeat ages, lease expiry) is taken from the **database's clock** in the statement
itself; node clocks are never compared.

Errors: every method raises ``DatastoreUnavailable`` when the datastore cannot be reached or did
not answer in time (retry later; the connection is dropped and re-opened on the next call) and
``DatastoreRejected`` when it answered but refused (credentials, missing database, TLS). No
message contains the password. Each call finishes or fails within about
``2 * coordination.retry_timeout`` (connect + one statement), which the timing rule keeps below
the lease TTL.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass

from k3snoded.model import Lease, Member, Role, RolePreference

COORDINATOR_LEASE = "coordinator"
BOOTSTRAP_LEASE = "bootstrap"
BOOTSTRAPPED_FLAG = "bootstrapped"


@dataclass(frozen=True)
class MemberRecord:
    """What one node writes about itself on every heartbeat."""

    name: str
    address: str
    api_port: int
    preference: RolePreference
    eligible: bool  # has datastore credentials and node.role != agent
    role: Role  # what it runs now
    ready: bool  # its k3s is ready
    k3s_version: str = ""


@dataclass(frozen=True)
class MemberRow:
    """One member as read back: the ``Member`` value plus the role the coordinator assigned.

    ``assigned`` is ``None`` until a coordinator has written a decision naming this member.
    ``stamp`` is the stored time of its last heartbeat on the database's clock: it changes with
    every heartbeat and never otherwise, so a reader can tell "wrote since I last looked" without
    trusting the database clock's rate (compare stamps; never subtract one from a node's clock).
    """

    member: Member
    assigned: Role | None = None
    k3s_version: str = ""
    stamp: float = 0.0


class Datastore(abc.ABC):
    """One node's connection to the shared datastore. Not shared between nodes or threads.

    Calls are serialized: at most one statement is in flight per instance.
    """

    @property
    @abc.abstractmethod
    def statements(self) -> int:
        """SQL statements sent so far (for the "≤ 1 statement/s per node at rest" benchmark).

        At rest a node runs ``sync`` (PostgreSQL: 1 statement; MySQL, SQLite: 2) each renew
        interval, and the coordinator one ``try_lease`` more; see docs/datastore.md.
        """

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """The backend and address, without the password, e.g. ``mysql 10.0.0.5:3306/k3s``."""

    @abc.abstractmethod
    async def preflight(self) -> None:
        """Check the datastore before k3s starts: reachable, authenticated, database present
        (created when missing and the credentials allow it, like kine), TLS as configured.

        Raises ``DatastoreUnavailable`` (refused, timed out, DNS: retry with backoff) or
        ``DatastoreRejected`` (authentication failed, no such database and it cannot be
        created, TLS failure), with a message naming the host and the cause.
        """

    @abc.abstractmethod
    async def ensure_schema(self) -> None:
        """Create or upgrade k3snoded's tables to the current schema version.

        Idempotent and safe to run concurrently from many nodes (serialized by a lock in the
        database). A database with a newer schema than this code knows is used as is.
        """

    @abc.abstractmethod
    async def heartbeat(self, rec: MemberRecord) -> None:
        """Upsert this node's member row in one statement; ``updated_at`` is the database's
        now. Does not touch the role a coordinator assigned."""

    @abc.abstractmethod
    async def members(self) -> list[MemberRow]:
        """Every member row (one statement), ordered by name, with ``heartbeat_age`` =
        database now - ``updated_at`` in seconds, the heartbeat's ``stamp`` and the assigned
        role."""

    @abc.abstractmethod
    async def members_seen_by(self, name: str) -> list[MemberRow]:
        """What a member that does not coordinate reads (one statement), ordered by name: its
        own row (``name``), every row assigned ``server``, and the row of the coordinator
        lease's holder (expired or not). Its size follows ``servers.count``, not the fleet's:
        a member needs its own assignment, the servers to register to and to watch, and the
        coordinator's heartbeat; only the coordinator decides from every row."""

    async def sync(self, rec: MemberRecord, *, everyone: bool = True) -> list[MemberRow]:
        """``heartbeat(rec)`` then ``members()`` (``everyone``) or ``members_seen_by(rec.name)``:
        the whole at-rest cycle of a node.

        Backends that can do both in one statement override this (PostgreSQL does)."""
        await self.heartbeat(rec)
        if everyone:
            return await self.members()
        return await self.members_seen_by(rec.name)

    @abc.abstractmethod
    async def assign_roles(self, roles: Mapping[str, Role], holder: str) -> bool:
        """Write the coordinator's decision: every member named in ``roles`` gets that role,
        every other member row gets no assignment. Names without a member row are ignored.

        Atomic with the check that ``holder`` holds the unexpired ``coordinator`` lease: one
        statement, no open transaction, so a writer that dies mid-call locks nothing. Returns
        False, writing nothing, if it does not hold it.
        """

    @abc.abstractmethod
    async def try_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Acquire or renew lease ``name`` for ``holder`` until database now + ``ttl``.

        One conditional statement whose row count is the answer: succeeds (True) when the lease
        is free, expired, or already held by ``holder``; otherwise changes nothing (False).
        The expiry is the statement's start on the database clock + ``ttl``, which is after the
        call was made: a holder may count on the lease until (its monotonic time just before
        the call) + ``ttl``, and must act as if it lost it when a renewal fails until then.
        """

    @abc.abstractmethod
    async def release_lease(self, name: str, holder: str) -> None:
        """Free lease ``name`` if ``holder`` holds it (one statement); otherwise do nothing."""

    @abc.abstractmethod
    async def lease(self, name: str) -> Lease | None:
        """The current holder and the seconds remaining on the database's clock, or None when
        the lease is free or expired."""

    @abc.abstractmethod
    async def last_holder(self, name: str) -> str | None:
        """The holder recorded in lease ``name``'s row, expired or not; None when there is no
        row (never taken, or released). One statement. A new holder uses it to know whether it
        took the lease over from someone who did not release it."""

    @abc.abstractmethod
    async def set_flag(self, name: str, value: str) -> None:
        """Set a cluster-wide flag (upsert), e.g. ``bootstrapped`` = the first server's name."""

    @abc.abstractmethod
    async def claim_flag(self, name: str, value: str) -> str:
        """Set flag ``name`` to ``value`` only if it has no value yet (insert-if-absent);
        return the value stored after the call. Of machines claiming concurrently, all get
        the first one's value. One read when the flag is set, which takes no row lock (a
        whole fleet may start at once); else a conditional insert and a second read."""

    @abc.abstractmethod
    async def flags(self) -> dict[str, str]:
        """Every flag."""

    @abc.abstractmethod
    async def remove_member(self, name: str) -> None:
        """Delete a member row (a machine taken out of the fleet). Idempotent."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection and the worker thread. Idempotent; later calls fail."""

    async def __aenter__(self) -> Datastore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
