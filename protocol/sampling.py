"""Choosing gossip partners from the live view of the swarm.

Uniform choice among live members is what gossip's convergence results assume, and it
is what honest swarms get. But a member's liveness in our view may rest on nothing but
someone's word: a forged full state can list thousands of made-up alive members, and
the table's hearsay quota still lets 64 of them in per introducer (issue 14, attack 2).
Chosen uniformly, those 64 took 64 of every 66 picks until SWIM's probes (one member a
period) found them out, and exchanges with the honest partners all but stopped.

So each candidate carries one fact, whether it is *confirmed*: it answered us on a
connection we opened (its ack to our probe, its reply to our push-pull, an exchange we
started), or it is a configured seed (static membership). Unconfirmed members get the
same chance as confirmed ones while they are few — at most ``UNCONFIRMED_SHARE`` of all
live members, the usual state of an honest swarm, where a new member is confirmed by
our first probe of it — and are capped at ``UNCONFIRMED_SHARE`` of the picks together
when they are more: a flood of them can take no more than that share, and each still
gets tried now and then (a successful exchange confirms it). In the uniform case the
draw consumes the ``rng`` exactly as plain uniform choice does, so seeded runs where
every member is confirmed (the simulator's static swarms) are unchanged.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

# The most that unconfirmed members together draw of the partner picks (when they are
# more than this share of the live members; fewer, and the choice is uniform). An eighth:
# a flood costs the honest partners at most 12.5 % of their exchanges, while a flood of
# honest joiners (a swarm doubling at once) is still tried about once in eight rounds
# each round until our probes confirm them, within one probe cycle.
UNCONFIRMED_SHARE = 0.125


def unconfirmed_pick_share(confirmed: int, unconfirmed: int, cap: float = UNCONFIRMED_SHARE) -> float:
    """The probability that one pick goes to one of the ``unconfirmed`` members (any of them).

    Uniform (their share of the live members) up to ``cap``; at most ``cap`` beyond it;
    1 when no confirmed member is live (then they are all there is to try).
    """
    if unconfirmed <= 0:
        return 0.0
    if confirmed <= 0:
        return 1.0
    return min(unconfirmed / (confirmed + unconfirmed), cap)


def choose_partner(candidates: Sequence[T], rng: random.Random,
                   is_live: Callable[[T], bool] = lambda _: True,
                   is_confirmed: Callable[[T], bool] = lambda _: True,
                   cap: float = UNCONFIRMED_SHARE) -> T | None:
    """A random live candidate, or ``None`` when none is live: uniform, except that the
    unconfirmed ones together draw at most ``cap`` of the picks (``unconfirmed_pick_share``).

    ``rng`` is passed in so runs are reproducible; in the uniform case it is drawn from
    exactly as plain uniform choice draws (one ``randrange`` over the live candidates).
    """
    live = [c for c in candidates if is_live(c)]
    if not live:
        return None
    unconfirmed = [c for c in live if not is_confirmed(c)]
    if len(unconfirmed) <= cap * len(live) or len(unconfirmed) == len(live):
        return live[rng.randrange(len(live))]
    confirmed = [c for c in live if is_confirmed(c)]
    pool = unconfirmed if rng.random() < cap else confirmed
    return pool[rng.randrange(len(pool))]


def choose_partners(candidates: Sequence[T], k: int, rng: random.Random,
                    is_live: Callable[[T], bool] = lambda _: True,
                    is_confirmed: Callable[[T], bool] = lambda _: True,
                    cap: float = UNCONFIRMED_SHARE) -> list[T]:
    """``k`` distinct random live candidates (all of them when fewer are live), each slot
    drawn as ``choose_partner`` draws one, without replacement.

    Epidemic Learning's push to ``s`` random peers per round (de Vos et al. 2023); with
    ``k = 1`` it draws exactly as ``choose_partner`` does, so fanout 1 is plain gossip.
    With unconfirmed members within their share, the draw is ``rng.sample`` as before.
    """
    live = [c for c in candidates if is_live(c)]
    if k == 1:
        one = choose_partner(live, rng, is_confirmed=is_confirmed, cap=cap)
        return [] if one is None else [one]
    unconfirmed = [c for c in live if not is_confirmed(c)]
    if len(unconfirmed) <= cap * len(live) or len(unconfirmed) == len(live):
        return rng.sample(live, min(k, len(live)))
    confirmed = [c for c in live if is_confirmed(c)]
    chosen: list[T] = []
    while len(chosen) < k and (confirmed or unconfirmed):
        share = unconfirmed_pick_share(len(confirmed), len(unconfirmed), cap)
        pool = unconfirmed if rng.random() < share else confirmed
        chosen.append(pool.pop(rng.randrange(len(pool))))
    return chosen
