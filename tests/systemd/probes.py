"""Watchers that run beside a systemd-lab test: who holds the VIP, and does k3s's API answer.

Each watcher is a thread that enters one lab machine's network namespace once (setns applies to
the calling thread only) and samples until stopped, bounded by ``max_run``. Observations are
(monotonic time, value) pairs; the tests read the gaps and the transitions.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from typing import Self

from tests.lab import procs

MAX_RUN = 600.0


class Watch:
    """Samples ``probe()`` every ``every`` seconds inside ``netns``; see subclasses."""

    def __init__(self, netns: str, *, every: float = 0.02, max_run: float = MAX_RUN) -> None:
        self.netns = netns
        self.every = every
        self.max_run = max_run
        self.samples: list[tuple[float, bool]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def probe(self) -> bool:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        try:
            procs.setns_net(self.netns)
            end = time.monotonic() + self.max_run
            while not self._stop.is_set() and time.monotonic() < end:
                self.samples.append((time.monotonic(), self.probe()))
                self._stop.wait(self.every)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    def false_runs(self) -> list[float]:
        """The lengths of every run of False samples (from the first False to the next True)."""
        runs, since = [], None
        for t, ok in self.samples:
            if not ok and since is None:
                since = t
            elif ok and since is not None:
                runs.append(t - since)
                since = None
        if since is not None and self.samples:
            runs.append(self.samples[-1][0] - since)
        return runs

    def all_true(self) -> bool:
        return bool(self.samples) and all(ok for _, ok in self.samples)

    def any_true(self) -> bool:
        return any(ok for _, ok in self.samples)


class HoldsAddress(Watch):
    """True while ``address`` is a local address in the namespace (a bind to it succeeds)."""

    def __init__(self, netns: str, address: str, *, every: float = 0.02) -> None:
        super().__init__(netns, every=every)
        self.address = address

    def probe(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((self.address, 0))
            except OSError:
                return False
            return True


class Answers(Watch):
    """True while ``url`` answers 200 (TLS not verified: the stand-in's CA is per cluster)."""

    def __init__(self, netns: str, url: str, *, timeout: float = 1.0, every: float = 0.05) -> None:
        super().__init__(netns, every=every)
        self.url = url
        self.timeout = timeout
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE

    def probe(self) -> bool:
        with (
            contextlib.suppress(OSError, urllib.error.URLError, ValueError),
            urllib.request.urlopen(self.url, timeout=self.timeout, context=self.ctx) as r,
        ):
            return bool(r.status == 200)
        return False
