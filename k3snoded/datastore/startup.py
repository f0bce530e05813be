"""Getting the datastore ready before k3s starts: preflight and schema, retried with backoff.

The datastore may boot after the node (a whole rack powered on at once), so a failure is not
fatal: each distinct failure is logged once with its specific cause, repeats are quiet, and the
attempt is retried with capped exponential backoff until it works (or ``deadline`` passes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from k3snoded.datastore.base import Datastore
from k3snoded.errors import DatastoreError, DatastoreRejected

log = logging.getLogger(__name__)


async def prepare(
    ds: Datastore,
    *,
    first_delay: float = 0.5,
    max_delay: float = 30.0,
    deadline: float | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> int:
    """Run ``preflight`` then ``ensure_schema`` until both succeed; return the failed attempts.

    ``deadline`` is a ``time.monotonic()`` value: when the next attempt would start after it,
    the last ``DatastoreError`` is raised. Without it this retries until cancelled.
    """
    delay, failures, last = first_delay, 0, ""
    while True:
        try:
            await ds.preflight()
            await ds.ensure_schema()
        except DatastoreError as e:
            failures += 1
            message = str(e)
            if deadline is not None and time.monotonic() + delay > deadline:
                raise
            if message != last:
                level = logging.ERROR if isinstance(e, DatastoreRejected) else logging.WARNING
                log.log(
                    level, "datastore not ready: %s; retrying every <= %.0f s", message, max_delay
                )
                last = message
            else:
                log.debug("datastore still not ready: %s", message)
            await sleep(delay)
            delay = min(max_delay, delay * 2)
            continue
        if failures:
            log.info("datastore %s ready after %d failed attempt(s)", ds.description, failures)
        return failures
