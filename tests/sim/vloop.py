"""An asyncio event loop on a virtual clock, for the fleet simulator.

``loop.time()`` is a number the loop itself moves: whenever nothing is ready to run, the clock
jumps to the next timer instead of waiting for it. Everything built on the loop's clock
(``asyncio.sleep``, ``wait_for``, ``call_at``, and the daemon's own ``loop.time()`` readings)
then runs in simulated time, as fast as the CPU allows, and in the same order on every run.

Two things would let the real world leak in, and both are closed here:

* ``run_in_executor`` (and so ``asyncio.to_thread``) runs the function inline and returns a
  finished future, so no thread decides the order of events;
* the selector watches no file descriptor: a wake-up from a thread or a socket could not be
  ordered against virtual time. A loop with nothing ready and no timer is a deadlock and raises.

``on_step(now)`` is called each time the clock is about to move, i.e. at every instant once all
work due at that instant has run: the simulator checks its invariants there.

``hold(context, again)`` is asked before each step of a task: when it returns True the step
does not run, and the simulator calls ``again()`` to run it later (a frozen machine's daemon:
its tasks make no progress while its timers still come due, as under SIGSTOP).
"""

from __future__ import annotations

import asyncio
import contextvars
import selectors
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class Deadlock(RuntimeError):
    """Nothing is ready and no timer is pending, or work never stops arriving at one instant
    (a livelock): the simulation cannot go on."""


SPINS_PER_INSTANT = 100_000  # loop iterations at one instant before it counts as a livelock


class _Selector(selectors.BaseSelector):
    """Registers file objects (the loop's self-pipe) but never reports one ready."""

    def __init__(self) -> None:
        self._map: dict[Any, selectors.SelectorKey] = {}
        self.loop: VirtualLoop | None = None

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = selectors.SelectorKey(fileobj, _fd(fileobj), events, data)
        self._map[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._map.pop(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        loop = self.loop
        assert loop is not None
        if timeout is None:
            raise Deadlock(f"nothing to run and no timer pending at t={loop.now:.3f}")
        if timeout > 0:
            loop.advance()
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._map

    def close(self) -> None:
        self._map.clear()


def _fd(fileobj: Any) -> int:
    return fileobj if isinstance(fileobj, int) else int(fileobj.fileno())


class VirtualLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose clock only moves when everything due has run."""

    def __init__(self, start: float = 1000.0) -> None:
        selector = _Selector()
        super().__init__(selector)
        selector.loop = self
        self.now = start
        self.on_step: Callable[[float], None] | None = None
        self.hold: Callable[[contextvars.Context, Callable[[], None]], bool] | None = None
        self._clock_resolution = 1e-9
        self._spins = 0

    def time(self) -> float:
        return self.now

    def call_soon(  # type: ignore[override]
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        """Task steps go through ``hold`` (see the module docstring); other callbacks (timers
        coming due, the datastore model's work) run as they are."""
        if self.hold is None or not isinstance(getattr(callback, "__self__", None), asyncio.Task):
            return super().call_soon(callback, *args, context=context)
        ctx = context if context is not None else contextvars.copy_context()
        return super().call_soon(self._step, callback, args, ctx, context=ctx)

    def _step(
        self, callback: Callable[..., object], args: tuple[Any, ...], ctx: contextvars.Context
    ) -> None:
        def again() -> None:
            self.call_soon(callback, *args, context=ctx)

        if self.hold is not None and self.hold(ctx, again):
            return
        callback(*args)

    def _run_once(self) -> None:
        self._spins += 1
        if self._spins > SPINS_PER_INSTANT:
            raise Deadlock(f"livelock: {self._spins} iterations without time passing at {self.now}")
        super()._run_once()  # type: ignore[misc]

    def advance(self) -> None:
        """Jump to the earliest pending timer (called when nothing else is ready)."""
        self._spins = 0
        if self.on_step is not None:
            self.on_step(self.now)
        # _run_once has dropped cancelled timers from the head of the heap already.
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        if scheduled:
            self.now = max(self.now, scheduled[0].when())

    def run_in_executor(  # type: ignore[override]
        self, executor: Any, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        future: asyncio.Future[T] = self.create_future()
        try:
            future.set_result(func(*args))
        except BaseException as exc:  # handed to the awaiting coroutine, as a thread would
            future.set_exception(exc)
        return future
