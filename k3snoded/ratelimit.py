"""Log lines about untrusted input, once per key and rate-limited in aggregate.

Whoever can send us packets chooses how many distinct "first times" there are: a flood of
10,000 forged mDNS instance names, or VRRP adverts from 10,000 spoofed sources, would otherwise
write 10,000 WARNING lines and push k3s's own lines out of the journal. :class:`OncePerKey`
logs the first occurrence of each key at WARNING, but at most ``burst`` such lines per
``period`` in total; beyond that, first occurrences are only counted, and one summary line
("N more ... suppressed") is written when the next period starts. Repeats of a key already
logged go to DEBUG. The set of remembered keys is bounded (oldest forgotten first), so memory
stays flat whatever the sender does.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

Clock = Callable[[], float]


class OncePerKey:
    """First occurrence of each key at WARNING, at most ``burst`` lines per ``period``."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        burst: int = 10,
        period: float = 60.0,
        max_keys: int = 1024,
        clock: Clock = time.monotonic,
    ) -> None:
        if burst < 1 or period <= 0 or max_keys < 1:
            raise ValueError("burst, period and max_keys must be positive")
        self._log = logger
        self._what = what
        self._burst = burst
        self._period = period
        self._max_keys = max_keys
        self._clock = clock
        self._seen: OrderedDict[Hashable, None] = OrderedDict()
        self._window_start = clock()
        self._logged_in_window = 0
        self._suppressed = 0  # first occurrences not logged in the current window
        self.suppressed_total = 0

    def __len__(self) -> int:
        return len(self._seen)

    def __call__(self, key: Hashable, message: str, *args: object) -> bool:
        """Log ``message % args`` if ``key`` is new and the budget allows; True if it was new.

        A new key whose line was suppressed is remembered all the same (it was reported in the
        count), so callers can use the return value to do something once per key.
        """
        if key in self._seen:
            self._seen.move_to_end(key)
            self._log.debug(message, *args)
            return False
        self._seen[key] = None
        if len(self._seen) > self._max_keys:
            self._seen.popitem(last=False)
        self._roll()
        if self._logged_in_window < self._burst:
            self._logged_in_window += 1
            self._log.warning(message + " (logged once)", *args)
        else:
            self._suppressed += 1
            self.suppressed_total += 1
            self._log.debug(message, *args)
        return True

    def forget(self, key: Hashable) -> None:
        """Log ``key`` again the next time it happens (e.g. after the problem went away)."""
        self._seen.pop(key, None)

    def _roll(self) -> None:
        now = self._clock()
        if now - self._window_start < self._period:
            return
        if self._suppressed:
            self._log.warning(
                "%s: %d more first-time occurrences were not logged in the last %.0f s "
                "(rate limit: %d lines per %.0f s)",
                self._what,
                self._suppressed,
                now - self._window_start,
                self._burst,
                self._period,
            )
        self._window_start = now
        self._logged_in_window = 0
        self._suppressed = 0
