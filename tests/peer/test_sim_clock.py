"""The simulator's virtual clock: coroutines wait on virtual time only, a failure surfaces, and a
simulation dropped with exchanges still waiting goes quietly."""

from __future__ import annotations

import gc
import logging

import pytest

from peer.sim.clock import VirtualClock


def test_sleepers_wake_in_virtual_time_order_and_run_until_stops_at_the_horizon() -> None:
    clock = VirtualClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now))

    for name, seconds in (("late", 50.0), ("early", 2.0), ("tie-first", 5.0), ("tie-second", 5.0)):
        clock.spawn(sleeper(name, seconds))
    clock.run_until(10.0)
    assert woke == [("early", 2.0), ("tie-first", 5.0), ("tie-second", 5.0)] and clock.now == 10.0
    clock.run_until(60.0)
    assert woke[-1] == ("late", 50.0)


def test_a_failing_coroutine_surfaces_from_run_until() -> None:
    clock = VirtualClock()

    async def fails() -> None:
        await clock.sleep(1.0)
        raise RuntimeError("merge failed")

    clock.spawn(fails())
    with pytest.raises(RuntimeError, match="merge failed"):
        clock.run_until(2.0)


def test_a_simulation_dropped_with_exchanges_still_waiting_goes_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 11's churn scenario left a crashed peer's exchanges waiting past the horizon;
    collecting the finished simulator printed "Task was destroyed but it is pending!" for each
    into the benchmark's output. The waiting coroutines (and the tasks gather starts) are the
    frozen simulation, not a leak."""
    import asyncio

    def simulate() -> None:  # the clock and its waiting tasks are garbage once this returns
        clock = VirtualClock()

        async def exchange(seconds: float) -> None:
            await clock.sleep(seconds)

        async def round_with_fanout() -> None:  # gather's children are tasks of the same loop
            await asyncio.gather(exchange(100.0), exchange(200.0))

        clock.spawn(round_with_fanout())
        clock.run_until(10.0)

    caplog.set_level(logging.ERROR, logger="asyncio")
    simulate()
    gc.collect()
    assert not [r for r in caplog.records if "destroyed but it is pending" in r.getMessage()]
