"""The SWIM detector's knobs and the pure formulas that turn them into times and counts.

Every duration is in seconds, with memberlist's LAN defaults for a 1 s probe period;
the formulas are memberlist's (retransmissions, push-pull scaling) and Lifeguard's
(the suspicion timeout), with the deviations the package docstring lists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

MAX_INCARNATION = 2**32 - 1  # memberlist's uint32 (here compared modulo 2**32: see incarnation_ahead)


@dataclass(frozen=True)
class SwimConfig:
    """Every knob of the detector, with memberlist's LAN defaults for a 1 s period.

    Use ``SwimConfig.for_period(p)`` to scale all the time-valued defaults to another
    probe period; the multipliers are dimensionless and stay as they are.
    """

    # A member is probed every period (memberlist LAN: ProbeInterval 1 s).
    probe_interval: float = 1.0
    # Wait this long for a direct ack before asking others (ProbeTimeout 500 ms).
    probe_timeout: float = 0.5
    # Members asked to probe indirectly after a missed direct ack (IndirectChecks 3).
    indirect_checks: int = 3
    # A helper nacks after this fraction of the requester's remaining probe time.
    indirect_nack_fraction: float = 0.5
    # Suspicion starts at suspicion_mult·ln(n+1) periods (issue 5: "4·log(n+1)").
    suspicion_mult: float = 4.0
    # ... and never goes below suspicion_min_mult·max(1, log10 n) periods (memberlist's
    # SuspicionMult·log10 n scaling, used by memberlist as the same floor).
    suspicion_min_mult: float = 4.0
    # Independent confirmations that bring the timeout down to the floor
    # (memberlist: SuspicionMult − 2 = 2).
    suspicion_confirmations: int = 2
    # Each update is sent retransmit_mult·ceil(log10(n+1)) times (RetransmitMult 4).
    retransmit_mult: int = 4
    # Updates pending are also gossiped to gossip_nodes members every gossip_interval
    # (GossipInterval 200 ms, GossipNodes 3); 0 nodes: piggyback on probes only.
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    # Most updates piggybacked on one message (memberlist: whatever fits 1,400 bytes).
    max_piggyback: int = 16
    # Bound of the broadcast queue; beyond it the most-transmitted updates go first.
    max_queue: int = 1024
    # Most members learned from the network (not memberlist: it trusts its cluster). A
    # peer (or a forged push-pull) announcing more addresses cannot grow our tables past
    # this; seeds given by the operator are always taken.
    max_members: int = 1 << 16
    # Full-state sync with one random member (PushPullInterval 30 s), stretched for
    # clusters above 32 nodes as memberlist's pushPullScale does.
    push_pull_interval: float = 30.0
    # Push-pull with one member believed dead (Serf's reconnect), to heal partitions.
    reconnect_interval: float = 10.0
    # Local health: the score runs 0..awareness_max−1 and multiplies the probe interval
    # and timeout by (score + 1) (AwarenessMaxMultiplier 8).
    awareness_max: int = 8
    # Indirect probes this node will run for others at once (a bound against floods).
    max_relays: int = 1024
    # Incarnations are serial numbers modulo 2**32 (RFC 1982), so there is no top a
    # forged claim could pin a member at: its refutation is always newer. A claim more
    # than this far ahead of the incarnation we hold is not believed: honest
    # incarnations rise by one per refutation, so only a forgery jumps that far.
    incarnation_window: int = 1024
    # New members one sender may introduce that have not answered us yet ("hearsay");
    # a member's answer (ack to our probe, reply to our push-pull) frees its slot.
    # Replies to our own join are exempt (the seed's table is what a joiner asked for).
    hearsay_quota: int = 64
    # Left members, and dead members that never answered us, are forgotten this long
    # after they went (memberlist's GossipToTheDeadTime, 30 s on LAN) ...
    gossip_to_the_dead_time: float = 30.0
    # ... other dead members are kept this long as reconnect targets (Serf's
    # reconnect_timeout, there 24 h), so a long partition can still heal.
    reconnect_timeout: float = 3600.0
    # Every message this node receives is authenticated (cluster keyring or mTLS), so a
    # member's relay of another member's Leave is believed. Without it only the member's
    # own message announces its leave; a relayed one is checked with the member.
    authenticated: bool = False

    @classmethod
    def for_period(cls, period: float, **overrides: object) -> SwimConfig:
        """LAN defaults with every duration scaled to a probe period of ``period`` seconds."""
        base = cls()
        scaled = {name: getattr(base, name) * period for name in
                  ("probe_interval", "probe_timeout", "gossip_interval",
                   "push_pull_interval", "reconnect_interval", "gossip_to_the_dead_time",
                   "reconnect_timeout")}
        scaled.update(overrides)
        return replace(base, **scaled)  # type: ignore[arg-type]


# --- pure formulas ---------------------------------------------------------------------

def retransmit_limit(n: int, mult: int) -> int:
    """How many times one update is sent: ``mult·ceil(log10(n+1))`` (memberlist).

    Epidemic dissemination reaches everyone w.h.p. after O(log n) rounds; sending each
    update a multiple of log n times is what makes "everyone" the likely outcome.
    """
    return max(1, mult * math.ceil(math.log10(n + 1)))


def suspicion_bounds(n: int, config: SwimConfig) -> tuple[float, float]:
    """(floor, start) of the suspicion timeout in seconds for a cluster of ``n`` nodes."""
    p = config.probe_interval
    floor = config.suspicion_min_mult * max(1.0, math.log10(max(1, n))) * p
    start = config.suspicion_mult * math.log(n + 1) * p
    return floor, max(floor, start)


def suspicion_timeout(confirmations: int, expected: int, floor: float, start: float) -> float:
    """Lifeguard's timeout after ``confirmations`` independent suspicions (memberlist).

    Falls logarithmically from ``start`` (none) to ``floor`` (``expected`` of them):
    each independent accuser makes a false positive much less likely, so waiting the
    full time for a refutation is no longer worth the slower detection.
    """
    if expected < 1:
        return floor
    frac = math.log(confirmations + 1) / math.log(expected + 1)
    return max(floor, start - frac * (start - floor))


INC_MOD = MAX_INCARNATION + 1  # incarnations are serial numbers modulo this
_INC_HALF = INC_MOD >> 1


def incarnation_ahead(claim: int, known: int) -> int:
    """How far ``claim`` is ahead of ``known`` in serial-number arithmetic (RFC 1982).

    Negative: older. Incarnations wrap at 2**32 instead of saturating, so a member can
    always outbid any incarnation anybody holds for it (memberlist's uint32 saturates,
    which is what let one forged ``Dead(B, 2**32-1)`` bury B for good).
    """
    d = (claim - known) % INC_MOD
    return d - INC_MOD if d >= _INC_HALF else d


def push_pull_scale(interval: float, n: int) -> float:
    """memberlist's pushPullScale: one more interval per doubling of n above 32 nodes.

    Full-state syncs cost O(n) each; stretching them keeps the cluster-wide cost from
    growing as n².
    """
    if n <= 32:
        return interval
    return interval * (math.ceil(math.log2(n) - math.log2(32)) + 1)

