"""Exchange deadlines from what each link has shown (issue 12, item 4).

A fixed timeout is wrong both ways: it cuts a large model on a slow link, and it waits
its full length for a partner that died. So an exchange gets two limits, sized per link:

* ``idle``: the longest time without progress (no frame written or read). A live
  partner moves a frame every ``frame_bytes / rate`` seconds plus a round trip; a dead
  (crashed, SIGSTOPped, partitioned) one moves nothing, and is given up after
  ``idle_rtts`` round trips plus one frame's time (never under ``idle_floor``), whatever
  the model's size.
* ``total``: the whole exchange, a backstop against a partner that trickles. It is
  ``safety`` times the expected time ``rtt + bytes / rate``, clamped to
  ``[floor, ceiling]``. ``answer`` bounds the partner's silence between our last frame
  and its first (it decodes and merges meanwhile): ``idle`` plus ``safety`` times the
  expected time.

``LinkEstimate`` learns ``rate`` and ``rtt`` from the (bytes, seconds) of exchanges that
completed. The rate is bytes over the whole exchange's time, latency and the partner's
work included: it underestimates the wire, so deadlines err long. A link never seen is
assumed to carry ``assumed_rate``. An exchange that ran out of its total deadline
halves the estimate (as TCP backs its RTO off), so the next one gets twice the time.

Pure: no clock, no I/O; the runtime measures and feeds it.
"""

from __future__ import annotations

from dataclasses import dataclass

# Smoothing of the rate estimate: each completed exchange moves it a quarter of the way.
RATE_GAIN = 0.25
# The RTT estimate falls at once to a lower sample and rises slowly (an eighth per sample):
# one exchange slowed by the partner's merge does not stretch every idle limit after it.
RTT_RISE = 0.125
# A rate no estimate falls below (bytes/s): halving after misses stops here.
MIN_RATE = 1024.0


@dataclass(frozen=True)
class DeadlinePolicy:
    """How deadlines follow the estimates; every field is a ``hearsay run`` option."""

    floor: float = 2.0             # least seconds an exchange is given in all
    ceiling: float = 300.0         # most seconds an exchange is given in all
    idle_floor: float = 1.0        # least seconds without progress before giving up
    idle_rtts: float = 4.0         # seconds without progress, in round trips of the link
    safety: float = 3.0            # allowance over the expected time
    assumed_rate: float = 131072.0  # bytes/s assumed of a link never measured (1 Mbit/s)
    frame_bytes: int = 1 << 20     # bytes moved per step of progress (the transport's frame)

    def __post_init__(self) -> None:
        if not 0 < self.floor <= self.ceiling:
            raise ValueError("need 0 < floor <= ceiling")
        if self.idle_floor <= 0 or self.idle_rtts <= 0 or self.safety < 1:
            raise ValueError("idle_floor and idle_rtts must be positive, safety >= 1")
        if self.assumed_rate <= 0 or self.frame_bytes < 1:
            raise ValueError("assumed_rate and frame_bytes must be positive")

    @classmethod
    def fixed(cls, seconds: float) -> DeadlinePolicy:
        """Every exchange gets ``seconds`` in all and for each wait (the old fixed timeout)."""
        return cls(floor=seconds, ceiling=seconds, idle_floor=seconds)


@dataclass(frozen=True)
class Budget:
    """The limits of one exchange, in seconds."""

    total: float   # the whole exchange
    idle: float    # without progress while sending or receiving
    answer: float  # from our last frame to the partner's first

    @classmethod
    def of(cls, timeout: float | Budget) -> Budget:
        """A budget as given, or a plain timeout as a budget whose every limit is it."""
        return timeout if isinstance(timeout, Budget) else cls(total=timeout, idle=timeout, answer=timeout)


@dataclass
class LinkEstimate:
    """What one link has shown: its rate (bytes/s) and round trip (s), None until measured."""

    rate: float | None = None
    rtt: float | None = None
    samples: int = 0

    def observe(self, nbytes: int, seconds: float) -> None:
        """A completed exchange moved ``nbytes`` (both ways) in ``seconds``."""
        if seconds <= 0 or nbytes < 0:
            return
        sample = max(MIN_RATE, nbytes / seconds)
        # What the bytes do not explain of the time is latency (or the partner's work); the
        # first sample explains itself (all of it is rate) unless it moved next to nothing.
        residual = max(0.0, seconds - nbytes / (sample if self.rate is None else self.rate))
        self.rate = sample if self.rate is None else self.rate + RATE_GAIN * (sample - self.rate)
        if self.rtt is None or residual < self.rtt:
            self.rtt = residual
        else:
            self.rtt += RTT_RISE * (residual - self.rtt)
        self.samples += 1

    def missed(self, policy: DeadlinePolicy) -> None:
        """An exchange ran out of its total deadline while its partner still answered:
        the link is slower than estimated; the next exchange gets twice the time."""
        rate = self.rate if self.rate is not None else policy.assumed_rate
        self.rate = max(MIN_RATE, rate / 2)

    def budget(self, policy: DeadlinePolicy, nbytes: int) -> Budget:
        """The limits of an exchange moving at most ``nbytes`` (both ways) on this link."""
        rate = self.rate if self.rate is not None else policy.assumed_rate
        rtt = self.rtt if self.rtt is not None else 0.0
        step = min(policy.frame_bytes, nbytes)  # a small packet moves in one step smaller than a frame
        idle = clamp(policy.idle_rtts * rtt + policy.safety * step / rate, policy.idle_floor, policy.ceiling)
        expected = rtt + nbytes / rate
        total = clamp(policy.safety * expected + idle, policy.floor, policy.ceiling)
        answer = min(idle + policy.safety * expected, total)
        return Budget(total=total, idle=min(idle, total), answer=max(answer, min(idle, total)))


def clamp(value: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, value))
