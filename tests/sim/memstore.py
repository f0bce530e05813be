"""An in-memory model of the ``Datastore`` contract, on the event loop's clock.

``Server`` is the database: k3snoded's three tables, row locks held by open transactions, a
clock (the loop's, plus a step the simulator can move), and the two server settings that decide
how long a dead client's transaction keeps its locks. ``MemoryDatastore`` is one machine's
connection, with the same statements, round trips, serialization and time budget as
``k3snoded.datastore.sql.SqlDatastore`` over ``session.Session``; the contract suite
(``tests/contract``) runs it beside SQLite, MariaDB and PostgreSQL to prove the semantics equal.

What a real network and server can do to a statement is the ``Link``'s business: refuse it,
swallow it, delay it past the client's budget, or lose its answer. A client that gives up drops
its connection; the server notices (and rolls back) only when the path is up and the client's
kernel alive, otherwise the transaction is abandoned and keeps its locks until the server's
idle timeout.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from k3snoded.datastore.base import COORDINATOR_LEASE, Datastore, MemberRecord, MemberRow
from k3snoded.errors import DatastoreError, DatastoreUnavailable
from k3snoded.model import Lease, Member, Role


class Link(Protocol):
    """The path between one machine and the database, as the simulator sets it."""

    @property
    def state(self) -> str:
        """``up``, ``refuse`` (server down: RST at once) or ``blackhole`` (nothing arrives)."""

    @property
    def frozen(self) -> bool:
        """The client process is stopped (SIGSTOP): it sends and reads nothing."""

    @property
    def kernel_alive(self) -> bool:
        """The client's machine is up (its kernel closes a dead process's sockets)."""

    async def thawed(self) -> None:
        """Return once the client runs again."""

    def delay(self) -> float:
        """Seconds this statement takes to reach the server and run (``inf``: never)."""

    def answer_lost(self) -> bool:
        """The answer to this statement is lost on the way back."""


@dataclass
class _Row:
    rec: MemberRecord
    created_at: float
    updated_at: float
    assigned: Role | None = None


@dataclass(eq=False)
class Conn:
    """A session on the server: its open transaction's locks and buffered writes."""

    client: str
    locks: set[str] = field(default_factory=set)
    writes: list[Callable[[], None]] = field(default_factory=list)
    closed: bool = False


@dataclass
class RoleWrite:
    """A committed role decision, for the simulator's invariants."""

    at: float  # loop time
    writer: str
    roles: dict[str, Role]
    epoch: int  # the coordinator lease's holder epoch when it committed


Step = Callable[["Server", Conn], Any]
Send = Callable[..., Awaitable[Any]]
Body = Callable[[Send], Awaitable[Any]]
_NONE: frozenset[str] = frozenset()


def _nothing(server: Server, conn: Conn) -> None:
    """A round trip that changes nothing (BEGIN, SELECT 1, connecting)."""


@dataclass(eq=False)
class _Pending:
    step: Step
    conn: Conn
    needs: frozenset[str]
    hold: bool
    done: Callable[[Any, BaseException | None], None]
    deadline: float


class Server:
    """The database server. ``clock`` is the loop's time; ``step`` moves the database clock.

    ``lock_wait_timeout`` and ``abandoned_timeout`` are the session settings k3snoded gives its
    connections (innodb_lock_wait_timeout / lock_timeout = retry_timeout; wait_timeout /
    idle_in_transaction_session_timeout = 60 s); the servers' defaults were 50 s and hours.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        dialect: str = "postgres",
        lock_wait_timeout: float = 2.0,
        abandoned_timeout: float = 60.0,
    ) -> None:
        self.clock = clock
        self.dialect = dialect
        self.step = 0.0
        self.lock_wait_timeout = lock_wait_timeout
        self.abandoned_timeout = abandoned_timeout
        self.members: dict[str, _Row] = {}
        self.leases: dict[str, tuple[str, float]] = {}
        self.flags: dict[str, str] = {}
        self.locks: dict[str, Conn] = {}
        self._waiting: list[_Pending] = []
        self.role_writes: list[RoleWrite] = []
        self.epoch = 0  # bumped whenever the coordinator lease changes holder
        self.lease_history: list[tuple[float, str]] = []  # (loop time, new holder)
        self.heartbeats: dict[str, list[float]] = {}  # loop times of committed heartbeats
        self.last_read: dict[str, float] = {}  # loop time each client last read the members
        self.reads: list[tuple[str, bool, int]] = []  # (client, read every row, rows returned)
        self.cluster_ca: str | None = None  # kine's bootstrap data (the k3s model writes it)
        # Called as hook(client) right after a role write's statement was answered (with the
        # two-statement transaction this was between SELECT ... FOR UPDATE and COMMIT).
        self.mid_write: Callable[[str], None] | None = None

    def now(self) -> float:
        return self.clock() + self.step

    # ---- execution ---------------------------------------------------------------------------
    def run(
        self,
        step: Step,
        conn: Conn,
        needs: frozenset[str],
        hold: bool,
        done: Callable[[Any, BaseException | None], None],
    ) -> None:
        """Run ``step`` now, or once the rows it needs are free (or fail at the lock timeout)."""
        if conn.closed:
            return
        if any(self.locks.get(k, conn) is not conn for k in needs):
            pending = _Pending(step, conn, needs, hold, done, self.clock() + self.lock_wait_timeout)
            self._waiting.append(pending)
            loop = asyncio.get_running_loop()
            loop.call_at(pending.deadline, self._lock_timeout, pending)
            return
        self._execute(step, conn, needs, hold, done)

    def _execute(
        self,
        step: Step,
        conn: Conn,
        needs: frozenset[str],
        hold: bool,
        done: Callable[[Any, BaseException | None], None],
    ) -> None:
        if hold:
            for key in needs:
                self.locks[key] = conn
                conn.locks.add(key)
        try:
            result = step(self, conn)
        except DatastoreError as exc:
            done(None, exc)
            return
        done(result, None)

    def _lock_timeout(self, pending: _Pending) -> None:
        if pending in self._waiting:
            self._waiting.remove(pending)
            pending.done(None, DatastoreUnavailable("lock wait timeout exceeded"))

    def _wake_waiters(self) -> None:
        waiting, self._waiting = self._waiting, []
        for p in waiting:
            if p.conn.closed:
                continue
            if any(self.locks.get(k, p.conn) is not p.conn for k in p.needs):
                self._waiting.append(p)
            else:
                self._execute(p.step, p.conn, p.needs, p.hold, p.done)

    def finish(self, conn: Conn, commit: bool) -> None:
        """COMMIT (apply the buffered writes) or ROLLBACK; release the transaction's locks."""
        writes, conn.writes = conn.writes, []
        if commit:
            for write in writes:
                write()
        for key in conn.locks:
            if self.locks.get(key) is conn:
                del self.locks[key]
        conn.locks.clear()
        self._wake_waiters()

    def disconnect(self, conn: Conn) -> None:
        """The client's connection closed and the server saw it: roll back, forget it."""
        if conn.closed:
            return
        self.finish(conn, commit=False)
        conn.closed = True

    def abandon(self, conn: Conn) -> None:
        """The client is gone but the server cannot tell: its session lives until the idle
        timeout, and an open transaction keeps its locks until then."""
        if conn.closed:
            return
        if not conn.locks:
            conn.closed = True
            return
        if math.isfinite(self.abandoned_timeout):
            asyncio.get_running_loop().call_later(self.abandoned_timeout, self.disconnect, conn)

    # ---- table operations (run at execution time, on the database clock) --------------------
    def heartbeat(self, rec: MemberRecord) -> None:
        now = self.now()
        row = self.members.get(rec.name)
        if row is None:
            self.members[rec.name] = _Row(rec, now, now)
        else:
            row.rec, row.updated_at = rec, now
        beats = self.heartbeats.setdefault(rec.name, [])
        beats.append(self.clock())
        del beats[:-4]

    def rows(self, reader: str = "", *, seen_by: str | None = None) -> list[MemberRow]:
        """Every member row; with ``seen_by``, only what ``members_seen_by`` returns: that
        member's own row, the rows assigned server and the coordinator lease holder's row.
        ``last_read`` records the full reads (the ones a coordinator decides from)."""
        now = self.now()
        names = sorted(self.members)
        if seen_by is None:
            self.last_read[reader] = self.clock()
        else:
            lease = self.leases.get(COORDINATOR_LEASE)
            wanted = {seen_by, lease[0] if lease else seen_by}
            names = [n for n in names if n in wanted or self.members[n].assigned is Role.SERVER]
        self.reads.append((reader, seen_by is None, len(names)))
        out = []
        for name in names:
            row = self.members[name]
            r = row.rec
            member = Member(
                name=r.name,
                address=r.address,
                preference=r.preference,
                eligible=r.eligible,
                role=r.role,
                ready=r.ready,
                heartbeat_age=max(0.0, now - row.updated_at),
                api_port=r.api_port,
            )
            out.append(
                MemberRow(member, row.assigned, k3s_version=r.k3s_version, stamp=row.updated_at)
            )
        return out

    def holds(self, name: str, holder: str) -> bool:
        lease = self.leases.get(name)
        return lease is not None and lease[0] == holder and lease[1] > self.now()

    def take_lease(self, name: str, holder: str, ttl: float) -> bool:
        now = self.now()
        lease = self.leases.get(name)
        if lease is not None and lease[0] != holder and now < lease[1] <= now + 2 * ttl:
            return False
        if name == COORDINATOR_LEASE and (lease is None or lease[0] != holder):
            self.epoch += 1
            self.lease_history.append((self.clock(), holder))
        self.leases[name] = (holder, now + ttl)
        return True

    def write_roles(self, roles: Mapping[str, Role], writer: str) -> None:
        for name, row in self.members.items():
            row.assigned = roles.get(name)
        self.role_writes.append(RoleWrite(self.clock(), writer, dict(roles), self.epoch))


class MemoryDatastore(Datastore):
    """One machine's connection to a ``Server``: the contract, statement for statement."""

    def __init__(self, server: Server, link: Link, name: str, retry_timeout: float) -> None:
        self.server = server
        self.link = link
        self.name = name
        self._budget = 2 * retry_timeout + 0.5  # as SqlDatastore: connect + one statement
        self._long = 4 * retry_timeout + 1.0
        self._statements = 0
        self._conn: Conn | None = None
        self._closed = False
        self._lock = asyncio.Lock()

    @property
    def statements(self) -> int:
        return self._statements

    @property
    def description(self) -> str:
        return f"memory {self.server.dialect}"

    # ---- the call machinery ------------------------------------------------------------------
    async def _call(self, body: Body, budget: float | None = None) -> Any:
        """Run ``body(send)`` as one bounded call, like ``Session.run``: ``send(step, needs,
        hold)`` is one statement's round trip (the next waits for its answer); ``needs`` are
        the row keys it locks, ``hold`` keeps them until COMMIT/ROLLBACK."""
        if self._closed:
            raise DatastoreError(f"{self.description}: datastore already closed")
        async with self._lock:
            if self.link.frozen:
                await self.link.thawed()
            loop = asyncio.get_running_loop()
            gave_up = loop.create_future()
            timer = loop.call_later(budget or self._budget, _set, gave_up, True)
            conn = self._conn

            async def send(step: Step, needs: frozenset[str] = _NONE, hold: bool = False) -> Any:
                self._statements += 1
                assert conn is not None
                return await self._roundtrip(step, conn, needs, hold, gave_up)

            try:
                if conn is None:
                    conn = Conn(self.name)
                    await self._roundtrip(_nothing, conn, _NONE, False, gave_up)
                    self._conn = conn
                result = await body(send)
            except DatastoreError:
                self._drop(conn)
                raise
            except asyncio.CancelledError:
                self._drop(conn)  # the daemon died mid-call
                raise
            finally:
                timer.cancel()
            if self.link.frozen:  # the answer came while stopped: read it after SIGCONT
                await self.link.thawed()
            return result

    async def _one(self, step: Step, needs: frozenset[str] = frozenset()) -> Any:
        async def body(send: Send) -> Any:
            return await send(step, needs)

        return await self._call(body)

    async def _roundtrip(
        self,
        step: Step,
        conn: Conn,
        needs: frozenset[str],
        hold: bool,
        gave_up: asyncio.Future[bool],
    ) -> Any:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        state = self.link.state
        if state == "refuse":
            await asyncio.sleep(0.001)
            raise DatastoreUnavailable(f"{self.description}: connection refused")
        if state == "up":
            delay = self.link.delay()
            lost = self.link.answer_lost()

            def done(result: Any, exc: BaseException | None) -> None:
                if lost or self.link.state != "up" or answer.done():
                    return
                if exc is not None:
                    answer.set_exception(exc)
                else:
                    answer.set_result(result)

            if math.isfinite(delay):
                loop.call_later(delay, self.server.run, step, conn, needs, hold, done)
        await asyncio.wait([answer, gave_up], return_when=asyncio.FIRST_COMPLETED)
        if answer.done():
            return answer.result()
        answer.cancel()
        raise DatastoreUnavailable(
            f"{self.description}: no answer within {self._budget:.1f} s (connection dropped)"
        )

    def _drop(self, conn: Conn | None) -> None:
        """The client closes its side; the server learns it only over a live path."""
        self._conn = None
        if conn is None:
            return
        if self.link.state == "up" and self.link.kernel_alive and not self.link.frozen:
            self.server.disconnect(conn)
        else:
            self.server.abandon(conn)

    # ---- the contract ------------------------------------------------------------------------
    async def preflight(self) -> None:
        await self._call(lambda send: send(_nothing), self._long)

    async def ensure_schema(self) -> None:
        await self._call(lambda send: send(_nothing), self._long)

    async def heartbeat(self, rec: MemberRecord) -> None:
        await self._one(lambda s, c: s.heartbeat(rec), _MEMBERS)

    async def members(self) -> list[MemberRow]:
        rows: list[MemberRow] = await self._one(lambda s, c: s.rows(c.client))
        return rows

    async def members_seen_by(self, name: str) -> list[MemberRow]:
        rows: list[MemberRow] = await self._one(lambda s, c: s.rows(c.client, seen_by=name))
        return rows

    async def sync(self, rec: MemberRecord, *, everyone: bool = True) -> list[MemberRow]:
        if self.server.dialect != "postgres":
            return await super().sync(rec, everyone=everyone)
        seen_by = None if everyone else rec.name

        def both(s: Server, c: Conn) -> list[MemberRow]:
            s.heartbeat(rec)
            return s.rows(c.client, seen_by=seen_by)

        rows: list[MemberRow] = await self._one(both, _MEMBERS)
        return rows

    async def assign_roles(self, roles: Mapping[str, Role], holder: str) -> bool:
        wanted = dict(roles)

        def write(s: Server, c: Conn) -> bool:
            # UPDATE ... WHERE EXISTS (the lease is ours): one autocommit statement.
            if not s.holds(COORDINATOR_LEASE, holder):
                return False
            s.write_roles(wanted, holder)
            return True

        async def body(send: Send) -> bool:
            written: bool = await send(write, _MEMBERS)
            if self.server.mid_write is not None:
                self.server.mid_write(self.name)
            return written

        done: bool = await self._call(body)
        return done

    async def try_lease(self, name: str, holder: str, ttl: float) -> bool:
        taken: bool = await self._one(
            lambda s, c: s.take_lease(name, holder, ttl), frozenset({f"lease:{name}"})
        )
        return taken

    async def release_lease(self, name: str, holder: str) -> None:
        def release(s: Server, c: Conn) -> None:
            lease = s.leases.get(name)
            if lease is not None and lease[0] == holder:
                del s.leases[name]

        await self._one(release, frozenset({f"lease:{name}"}))

    async def lease(self, name: str) -> Lease | None:
        def read(s: Server, c: Conn) -> Lease | None:
            lease = s.leases.get(name)
            now = s.now()
            if lease is None or lease[1] <= now:
                return None
            return Lease(name, lease[0], lease[1] - now)

        found: Lease | None = await self._one(read)
        return found

    async def last_holder(self, name: str) -> str | None:
        def read(s: Server, c: Conn) -> str | None:
            lease = s.leases.get(name)
            return lease[0] if lease is not None else None

        found: str | None = await self._one(read)
        return found

    async def set_flag(self, name: str, value: str) -> None:
        await self._one(lambda s, c: s.flags.__setitem__(name, value), frozenset({f"flag:{name}"}))

    async def claim_flag(self, name: str, value: str) -> str:
        async def body(send: Send) -> str:
            found: str | None = await send(lambda s, c: s.flags.get(name))
            if found is not None:  # set already: a plain read, no row lock
                return found
            await send(lambda s, c: s.flags.setdefault(name, value), frozenset({f"flag:{name}"}))
            stored: str = await send(lambda s, c: s.flags.get(name, value))
            return stored

        claimed: str = await self._call(body)
        return claimed

    async def flags(self) -> dict[str, str]:
        found: dict[str, str] = await self._one(lambda s, c: dict(s.flags))
        return found

    async def remove_member(self, name: str) -> None:
        await self._one(lambda s, c: s.members.pop(name, None), _MEMBERS)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            self._drop(conn)


_MEMBERS = frozenset({"members"})


def _set(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)
