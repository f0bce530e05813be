"""The datastore session's worker when a call gets stuck where no socket can be shut down
(a connect stuck in name resolution, say): later calls must not queue behind it and each open
a connection of its own once it frees up."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from k3snoded.datastore.session import CountingCursor, Session
from k3snoded.errors import DatastoreError, DatastoreUnavailable


class _Cursor:
    rowcount = 1

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        pass

    def fetchall(self) -> list[tuple[int]]:
        return [(1,)]

    def close(self) -> None:
        pass


class _Conn:
    def cursor(self) -> _Cursor:
        return _Cursor()

    def close(self) -> None:
        pass


class StuckConnector:
    """A driver whose connect blocks (nothing to abort: no connection exists yet) until
    released. Nothing real can hang name resolution on cue here, so this one stands in."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.connects = 0

    def connect(self) -> Any:
        self.connects += 1
        self.release.wait(10.0)
        return _Conn()

    def abort(self, conn: Any) -> None:
        pass

    def translate(self, exc: BaseException) -> DatastoreError:
        return DatastoreError(str(exc))

    def prepare(self, sql: str) -> str:
        return sql


async def test_calls_do_not_pile_up_behind_a_stuck_worker() -> None:
    connector = StuckConnector()
    session = Session(connector, "stuck", budget=0.3)

    def select(cur: CountingCursor) -> int:
        cur.execute("SELECT 1")
        return len(cur.fetchall())

    try:
        took = []
        for _ in range(4):
            started = time.monotonic()
            with pytest.raises(DatastoreUnavailable):
                await session.run(select)
            took.append(time.monotonic() - started)
        assert 0.25 < took[0] < 1.0  # the first waits its budget (0.3 s)
        # the next ones fail at once: waiting another budget behind a stuck worker stalls
        # the loop a budget per call
        assert max(took[1:]) < 0.2, took  # (after a short grace for an abort to free it)
        connector.release.set()
        await asyncio.sleep(0.3)  # the stuck call returns; anything queued would now run
        assert await session.run(select) == 1
        assert connector.connects == 2, f"{connector.connects} connections opened"
    finally:
        connector.release.set()
        await session.close()
