"""Virtual time for the simulator: an event heap that also drives the daemon's asyncio code.

The simulated peers run ``GossipEngine``'s coroutines unchanged. They wait on the network
only through ``VirtualClock.sleep`` (the in-memory transport's latency), so virtual time
can jump: each event (a local step, a gossip tick, a sleeping coroutine's wake-up) runs,
then every coroutine it started or woke runs until it sleeps again or ends (``settle``)
before the next event is taken. Only one coroutine runs at a time, so a run is a pure
function of its seed; what the engine hands to worker threads runs inline.

Events are ordered by (time, sequence number): ties go in the order they were scheduled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

_loop: asyncio.AbstractEventLoop | None = None


class InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs what the engine hands to a worker thread (``asyncio.to_thread``: decoding,
    merging) at once in the loop's own thread. Only one coroutine runs at a time anyway,
    and the hand-off to a real thread cost more than the work: under load the loop sat in
    ``epoll`` waiting for the worker to be scheduled (41 % of a 16-peer run's wall time)."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        done: concurrent.futures.Future = concurrent.futures.Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except BaseException as error:  # noqa: BLE001 - handed to the awaiting coroutine, as a thread would
            done.set_exception(error)
        return done


def _quiet_task(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any) -> asyncio.Task:
    """A task that goes quietly when it is dropped while waiting. A simulation stops at its
    horizon with exchanges still waiting on virtual time (a crashed peer's timeout, say):
    that is the frozen state of a finished simulation, not a leaked coroutine, and asyncio's
    "Task was destroyed but it is pending!" (logged when the dropped simulator is collected)
    would only bury a benchmark's output. ``_log_destroy_pending`` is the flag asyncio's own
    ``run_until_complete`` clears for the same reason."""
    task = asyncio.Task(coro, loop=loop, **kwargs)
    task._log_destroy_pending = False  # type: ignore[attr-defined]
    return task


def shared_loop() -> asyncio.AbstractEventLoop:
    """One event loop for every simulator in this thread (each runs only inside ``run_until``),
    so many simulators do not each leave a loop and its worker threads behind; its "worker
    threads" run inline (``InlineExecutor``)."""
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
        _loop.set_default_executor(InlineExecutor())
        _loop.set_task_factory(_quiet_task)
    return _loop


@dataclass(order=True)
class _Event:
    time: float
    seq: int
    action: Callable[[], None] = field(compare=False)


class VirtualClock:
    """``now`` in virtual seconds; ``at`` schedules plain callbacks, ``spawn`` coroutines."""

    def __init__(self) -> None:
        self.now = 0.0
        self._events: list[_Event] = []
        self._seq = itertools.count()
        self._loop = shared_loop()
        self._failure: BaseException | None = None

    def __call__(self) -> float:
        """The clock as a ``GossipEngine``/``Defence`` ``clock`` callable."""
        return self.now

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, _Event(max(when, self.now), next(self._seq), action))

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` now (inside the current event); it must wait only through ``sleep``
        (or on tasks that do: ``asyncio.gather`` of exchanges, as fanout starts them)."""
        self._loop.create_task(coro).add_done_callback(self._finished)

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of virtual time (the transport's ``sleep``)."""
        woken = self._loop.create_future()
        self.at(self.now + seconds, lambda: woken.set_result(None))
        await woken

    def _finished(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()

    async def _settle(self) -> None:
        """Return once every coroutine the event started or woke waits on virtual time or is
        done: nothing is left in the loop's ready queue but this one. (Counting running
        coroutines instead missed the tasks ``asyncio.gather`` creates, and a fanout round
        with latency hung the simulator.) Everything runs in this thread (``InlineExecutor``),
        so an empty ready queue means nothing else can move until virtual time does."""
        while True:
            await asyncio.sleep(0)
            if not self._loop._ready:  # type: ignore[attr-defined] # CPython's asyncio loop
                return

    async def _drive(self, until: float) -> None:
        while self._events and self._events[0].time <= until:
            event = heapq.heappop(self._events)
            self.now = event.time
            event.action()
            await self._settle()
            if self._failure is not None:
                failure, self._failure = self._failure, None
                raise failure
        self.now = max(self.now, until)

    def run_until(self, until: float) -> None:
        """Process every event due at or before ``until``; then ``now`` reads ``until``."""
        self._loop.run_until_complete(self._drive(until))

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run one coroutine to its end at the current virtual time (scripted exchanges)."""
        async def main() -> Any:
            result: list[Any] = []

            async def wrapped() -> None:
                result.append(await coro)

            self.spawn(wrapped())
            await self._settle()
            while not result and self._failure is None and self._events:
                await self._drive(self._events[0].time)
            if self._failure is not None:
                failure, self._failure = self._failure, None
                raise failure
            return result[0] if result else None

        return self._loop.run_until_complete(main())
