"""The kine emulation: one shared SQL core over the ``kine`` table's log-structured rows.

Every write appends a row (``id`` is the revision, ``prev_revision`` points at the key's previous
row, ``(name, prev_revision)`` is unique so racing creators collide like kine's). Blocking driver
calls run in a thread, one at a time, with driver timeouts shorter than the loss window.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

from tests.fakes.k3s_stub import drivers, knobs, logs
from tests.fakes.k3s_stub.drivers import Fatal
from tests.fakes.k3s_stub.endpoint import Endpoint

PING_ATTEMPTS = 300

_LATEST = (
    "SELECT kv.id, kv.name, kv.deleted, kv.create_revision, kv.created, kv.value FROM kine kv"
    " JOIN (SELECT MAX(mkv.id) AS id FROM kine mkv WHERE mkv.name LIKE ? GROUP BY mkv.name) maxkv"
    " ON maxkv.id = kv.id ORDER BY kv.name"
)
_INSERT = (
    "INSERT INTO kine(name, created, deleted, create_revision, prev_revision, lease, value,"
    " old_value) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


class Health:
    """The apiserver's etcd readiness check: one ``SELECT 1`` on its own connection, at most
    one in flight, answered within ``TIMEOUT`` seconds (``--etcd-readycheck-timeout`` 2 s).

    A datastore that cannot be reached, or that does not answer in time, is unhealthy.
    """

    TIMEOUT = 2.0
    FRESH = 1.0  # a result is reused for this long

    def __init__(self, ep: Endpoint) -> None:
        self.ep = ep
        self._conn: Any = None
        self._task: asyncio.Task[bool] | None = None
        self._result = False
        self._at = 0.0

    def _ping(self) -> bool:
        try:
            if self._conn is None:
                self._conn = drivers.connect(self.ep)
            cur = self._conn.cursor()
            try:
                cur.execute("SELECT 1")
                cur.fetchall()
            finally:
                cur.close()
            return True
        except Exception:
            with contextlib.suppress(Exception):
                if self._conn is not None:
                    self._conn.close()
            self._conn = None
            return False

    async def ok(self) -> bool:
        now = time.monotonic()
        if self._task is None and now - self._at < self.FRESH:
            return self._result
        if self._task is None:
            self._task = asyncio.create_task(asyncio.to_thread(self._ping))
        try:
            self._result = await asyncio.wait_for(asyncio.shield(self._task), self.TIMEOUT)
        except TimeoutError:
            return False  # still in flight: the next check waits on the same statement
        self._task = None
        self._at = time.monotonic()
        return self._result


class Store:
    """The ``kine`` table in SQLite, MySQL/MariaDB or PostgreSQL."""

    def __init__(self, ep: Endpoint) -> None:
        self.ep = ep
        self._conn: Any = None
        self._lock = threading.Lock()
        self._latency = knobs.datastore_latency()

    # -- blocking core ----------------------------------------------------------------------
    def _sql(self, query: str) -> str:
        return query if self.ep.driver == "sqlite" else query.replace("?", "%s")

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = drivers.connect(self.ep)
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _run(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._latency > 0:
                time.sleep(self._latency)  # injected datastore latency (a test knob)
            try:
                cur = self._connection().cursor()
                try:
                    cur.execute(self._sql(query), params)
                    rows = cur.fetchall() if cur.description else []
                finally:
                    cur.close()
            except Exception as exc:
                if not drivers.is_duplicate(self.ep.driver, exc):
                    self._drop()
                raise
        return [tuple(r) for r in rows]

    def _ping(self) -> None:
        self._run("SELECT 1")

    def _setup(self) -> None:
        for stmt in drivers.ddl(self.ep.driver):
            try:
                self._run(stmt)
            except Exception as exc:
                args = getattr(exc, "args", ())
                if self.ep.driver == "mysql" and args and args[0] == 1061:
                    continue  # duplicate key name: the index exists
                raise
        if not self._run("SELECT id FROM kine WHERE name = ?", ("compact_rev_key",)):
            self._run(_INSERT, ("compact_rev_key", 0, 0, 0, 0, 0, b"", None))

    def _latest(self, prefix: str) -> list[tuple[Any, ...]]:
        return self._run(_LATEST, (prefix + "%",))

    def _list(self, prefix: str) -> dict[str, bytes]:
        return {
            str(r[1]): bytes(r[5]) if r[5] is not None else b""
            for r in self._latest(prefix)
            if not r[2] and str(r[1]).startswith(prefix)
        }

    def _current(self, key: str) -> tuple[Any, ...] | None:
        rows = self._run(
            "SELECT id, deleted, create_revision, created, value FROM kine WHERE name = ?"
            " ORDER BY id DESC LIMIT 1",
            (key,),
        )
        return rows[0] if rows else None

    def _create(self, key: str, value: bytes, lease: int = 0) -> bool:
        cur = self._current(key)
        if cur is not None and not cur[1]:
            return False
        prev = int(cur[0]) if cur is not None else 0
        try:
            self._run(_INSERT, (key, 1, 0, 0, prev, lease, value, None))
        except Exception as exc:
            if drivers.is_duplicate(self.ep.driver, exc):
                return False
            raise
        return True

    def _put(self, key: str, value: bytes, lease: int = 0) -> None:
        """Create or update ``key``; older revisions of it are compacted away."""
        cur = self._current(key)
        if cur is None or cur[1]:
            if not self._create(key, value, lease):
                raise RuntimeError(f"key exists: {key}")
            return
        prev_id = int(cur[0])
        create_rev = int(cur[0]) if cur[3] else int(cur[2] or 0)
        old = bytes(cur[4]) if cur[4] is not None else None
        self._run(_INSERT, (key, 0, 0, create_rev, prev_id, lease, value, old))
        self._run("DELETE FROM kine WHERE name = ? AND id <= ?", (key, prev_id))

    def _delete(self, key: str) -> None:
        self._run("DELETE FROM kine WHERE name = ?", (key,))

    def _revision(self, key: str) -> tuple[int, bytes] | None:
        cur = self._current(key)
        if cur is None or cur[1]:
            return None
        return int(cur[0]), bytes(cur[4]) if cur[4] is not None else b""

    def _update(self, key: str, value: bytes, revision: int) -> int | None:
        """kine's Update: a new row whose ``prev_revision`` is ``revision``; the unique index
        on ``(name, prev_revision)`` makes a racing writer lose. None when ``revision`` is not
        the key's current one."""
        cur = self._current(key)
        if cur is None or cur[1] or int(cur[0]) != revision:
            return None
        create_rev = int(cur[0]) if cur[3] else int(cur[2] or 0)
        try:
            self._run(_INSERT, (key, 0, 0, create_rev, revision, 0, value, None))
        except Exception as exc:
            if drivers.is_duplicate(self.ep.driver, exc):
                return None
            raise
        new = self._current(key)
        self._run("DELETE FROM kine WHERE name = ? AND id <= ?", (key, revision))
        return int(new[0]) if new is not None else None

    # -- async API --------------------------------------------------------------------------
    async def _call(self, fn: Any, *args: Any, timeout: float = 10.0) -> Any:
        return await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout)

    async def open(self, stopping: asyncio.Event) -> None:
        """Create the database, wait until it answers, create the schema. Fatal on errors."""
        ep = self.ep
        if ep.driver != "sqlite":
            await self._call(drivers.create_database, ep, timeout=30.0)
        for attempt in range(PING_ATTEMPTS):
            try:
                await self._call(self._ping)
                break
            except Fatal:
                raise
            except Exception as exc:
                logs.error(f"Failed to ping database connection: {drivers.error_text(ep, exc)}")
                if attempt == PING_ATTEMPTS - 1:
                    raise Fatal(drivers.error_text(ep, exc)) from exc
                try:
                    await asyncio.wait_for(stopping.wait(), 1.0)
                    return
                except TimeoutError:
                    continue
        logs.info(drivers.pool_line(ep.driver))
        logs.info("Configuring database table schema and indexes, this may take a moment...")
        try:
            await self._call(self._setup, timeout=30.0)
        except Exception as exc:
            raise Fatal(drivers.error_text(ep, exc)) from exc
        logs.info("Database tables and indexes are up to date")
        logs.info("Kine available at unix://kine.sock")

    async def list(self, prefix: str) -> dict[str, bytes]:
        result: dict[str, bytes] = await self._call(self._list, prefix)
        return result

    async def get(self, key: str) -> bytes | None:
        return (await self.list(key)).get(key)

    async def create(self, key: str, value: bytes) -> bool:
        """Create ``key``; False when it already exists (kine ErrKeyExists)."""
        created: bool = await self._call(self._create, key, value)
        return created

    async def put(self, key: str, value: bytes, lease: int = 0) -> None:
        await self._call(self._put, key, value, lease)

    async def delete(self, key: str) -> None:
        await self._call(self._delete, key)

    async def revision(self, key: str) -> tuple[int, bytes] | None:
        """The key's current (revision, value), or None when it does not exist."""
        found: tuple[int, bytes] | None = await self._call(self._revision, key)
        return found

    async def update(self, key: str, value: bytes, revision: int) -> int | None:
        """Compare-and-swap: the new revision, or None when ``revision`` is stale."""
        new: int | None = await self._call(self._update, key, value, revision)
        return new

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._call(self._close_now, timeout=2.0)

    def _close_now(self) -> None:
        with self._lock:
            self._drop()
