"""One database connection, owned by one worker thread, used from the event loop.

Blocking drivers never run on the loop: every call is a function run on a dedicated
single-thread executor that holds the connection. Calls are serialized. Each call is bounded
twice: the driver's own timeouts (connect/read/write = ``retry_timeout``) and a watchdog on the
loop side that, when the budget runs out, shuts the connection's socket down (unblocking the
worker) and raises ``DatastoreUnavailable``. After any error the connection is dropped; the next
call opens a new one, so recovery is transparent.

Connections are in autocommit mode and k3snoded opens no explicit transaction: every statement
is its own, so a client that dies mid-call leaves no lock behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from k3snoded.errors import DatastoreError, DatastoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


class Cursor(Protocol):
    """The part of a DB-API cursor k3snoded uses."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...

    def fetchall(self) -> Sequence[Sequence[Any]]: ...

    def close(self) -> Any: ...


class Connector(Protocol):
    """What a dialect provides to the session: blocking open/abort and error translation."""

    def connect(self) -> Any:
        """Open an autocommit connection (blocking, bounded by the driver's timeouts)."""

    def abort(self, conn: Any) -> None:
        """Unblock a call stuck on ``conn`` from another thread (shut its socket down)."""

    def translate(self, exc: BaseException) -> DatastoreError:
        """Map a driver exception to Unavailable / Rejected / DatastoreError, password-free."""

    def prepare(self, sql: str) -> str:
        """Rewrite ``?`` placeholders to the driver's style."""


class CountingCursor:
    """A cursor that counts statements and rewrites placeholders."""

    def __init__(self, cursor: Any, session: Session) -> None:
        self._cursor = cursor
        self._session = session

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)

    @property
    def connection(self) -> Any:
        """The driver connection this cursor belongs to."""
        return self._session.connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._session.statements += 1
        self._cursor.execute(self._session.connector.prepare(sql), tuple(params))

    def fetchall(self) -> Sequence[Sequence[Any]]:
        return list(self._cursor.fetchall())

    def close(self) -> None:
        self._cursor.close()


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned call's outcome so that it is not reported as never retrieved."""
    if not future.cancelled():
        future.exception()


class Session:
    """The connection and its thread. ``statements`` counts statements sent."""

    def __init__(self, connector: Connector, label: str, budget: float) -> None:
        self.connector = connector
        self.label = label
        self.budget = budget
        self.statements = 0
        self._conn: Any = None
        self._closed = False
        self._lock = asyncio.Lock()
        self._stuck: asyncio.Future[Any] | None = None  # a timed-out call still running
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="k3snoded-db")

    @property
    def connection(self) -> Any:
        return self._conn

    async def run(
        self, fn: Callable[[CountingCursor], T], budget: float | None = None, connect: bool = True
    ) -> T:
        """Run ``fn(cursor)`` on the worker; raise a ``DatastoreError`` on any failure."""
        if self._closed:
            raise DatastoreError(f"{self.label}: datastore already closed")
        limit = budget if budget is not None else self.budget
        async with self._lock:
            stuck = self._stuck
            if stuck is not None and not stuck.done():
                # Shutting the socket down usually frees it in moments: give it that long.
                await asyncio.wait({stuck}, timeout=min(0.5, limit / 4))
            if stuck is not None and not stuck.done():
                # The worker is still inside a call that timed out (e.g. a connect stuck in
                # name resolution, which no socket shutdown reaches): fail at once rather
                # than wait a whole budget behind it on every call of the cycle.
                raise DatastoreUnavailable(
                    f"{self.label}: a previous call is still stuck (no answer); not waiting"
                )
            loop = asyncio.get_running_loop()
            abandoned = threading.Event()
            future = loop.run_in_executor(self._executor, self._call, fn, connect, abandoned)
            try:
                return await asyncio.wait_for(asyncio.shield(future), limit)
            except asyncio.CancelledError:
                abandoned.set()  # our caller went away: the worker may still be in the call
                self._stuck = future
                future.add_done_callback(_consume)
                raise
            except TimeoutError:
                abandoned.set()  # still connecting: do not run the statement after all
                self._stuck = future
                future.add_done_callback(_consume)
                conn = self._conn
                if conn is not None:
                    self.connector.abort(conn)
                raise DatastoreUnavailable(
                    f"{self.label}: no answer within {limit:.1f} s (connection dropped)"
                ) from None

    async def offload(self, fn: Callable[[], T], budget: float) -> T:
        """Run a blocking ``fn()`` that opens its own connection (e.g. CREATE DATABASE)."""

        def plain(_cur: CountingCursor) -> T:
            return fn()

        return await self.run(plain, budget, connect=False)

    def _call(
        self, fn: Callable[[CountingCursor], T], connect: bool, abandoned: threading.Event
    ) -> T:
        try:
            if not connect:
                return fn(CountingCursor(None, self))
            if self._conn is None:
                self._conn = self.connector.connect()
            if abandoned.is_set():
                raise DatastoreUnavailable(f"{self.label}: call abandoned after its deadline")
            raw = self._conn.cursor()
            cur = CountingCursor(raw, self)
            try:
                return fn(cur)
            finally:
                with contextlib.suppress(Exception):  # dropped with its connection
                    raw.close()
        except DatastoreError:
            self._drop()
            raise
        except Exception as e:
            self._drop()
            raise self.connector.translate(e) from None

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken
                conn.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        conn = self._conn
        if conn is not None and self._lock.locked():
            self.connector.abort(conn)  # a call is stuck: unblock the worker
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(self._executor, self._drop), self.budget)
        except TimeoutError:
            log.warning("%s: worker did not finish closing in time", self.label)
        self._executor.shutdown(wait=False)
