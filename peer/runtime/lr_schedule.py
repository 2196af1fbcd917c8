"""The learning rate over a run of known length: constant, or annealed to a floor.

A peer on a skewed shard drifts toward its own classes between merges, and the drift per
step is proportional to the learning rate. Annealing it over the run (the standard cosine or
linear decay) lets merges dominate at the end, so every peer ends near the swarm's consensus
model instead of a few local steps away from it (bench/RESULTS.md, "A learning rate that
anneals over the run"). Pure: the caller supplies the times.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

# The schedules by name (PeerConfig.lr_schedule's choices; nothing heavy is imported here).
LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_factor(kind: str, progress: float, floor: float) -> float:
    """The learning rate as a fraction of the base rate, ``progress`` (0..1, clipped) through
    the schedule: 1 at the start, ``floor`` at the end and after it.

    constant: always 1. cosine: floor + (1 - floor)(1 + cos(pi p)) / 2, flat at both ends.
    linear: 1 - (1 - floor) p.
    """
    if kind not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {kind!r}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"lr_floor must be in [0, 1], got {floor!r}")
    if kind == "constant":
        return 1.0
    p = min(1.0, max(0.0, progress))
    if kind == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p))
    return 1.0 - (1.0 - floor) * p


@dataclass(frozen=True)
class LrSchedule:
    """An annealing schedule that ends at the clock time ``end``.

    The schedule runs from the moment training starts (``begin``, the first step: peers
    finish starting up at different moments, and a step taken before it would count for
    nothing) to ``end``; from ``end`` on the rate stays at ``floor`` times the base rate.
    A peer that starts training after ``end`` trains at the floor from its first step.
    """

    kind: str
    end: float            # clock time at which the rate reaches the floor
    floor: float = 0.0    # fraction of the base rate kept at and after ``end``

    def __post_init__(self) -> None:
        lr_factor(self.kind, 0.0, self.floor)  # raises on a bad kind or floor

    def factor(self, begin: float, now: float) -> float:
        """The rate's fraction of the base rate at ``now`` for training that began at ``begin``."""
        span = self.end - begin
        progress = 1.0 if span <= 0 else (now - begin) / span
        return lr_factor(self.kind, progress, self.floor)


def process_started_monotonic() -> float:
    """``time.monotonic()`` as it read when this process was started (on Linux, from
    /proc/self/stat; elsewhere: now). ``hearsay cluster``'s --duration counts from the
    launch, and importing torch under load can take tens of seconds, so a horizon measured
    from the process's start lines up with the cluster's end where one measured from the
    daemon's first line of Python would not."""
    now = time.monotonic()
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        started_ticks = int(fields[19])  # field 22, starttime, in clock ticks since boot
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return now
    return now - max(0.0, age)


def lr_schedule_for(kind: str, horizon: float, floor: float, started: float | None = None) -> LrSchedule | None:
    """The schedule a peer's options ask for (lr_schedule, lr_horizon, lr_floor), on
    ``time.monotonic``'s clock, ending ``horizon`` seconds after ``started`` (default: this
    process's start); None for a constant rate."""
    if kind == "constant":
        return None
    begin = process_started_monotonic() if started is None else started
    return LrSchedule(kind, end=begin + horizon, floor=floor)
