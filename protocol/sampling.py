"""Choosing gossip partners from the live view of the swarm."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def choose_partner(candidates: Sequence[T], rng: random.Random,
                   is_live: Callable[[T], bool] = lambda _: True) -> T | None:
    """A uniformly random live candidate, or ``None`` when no candidate is live.

    Uniform choice is what gossip's convergence results assume (every pair exchanges
    at the same expected rate); ``rng`` is passed in so runs are reproducible.
    """
    live = [c for c in candidates if is_live(c)]
    if not live:
        return None
    return live[rng.randrange(len(live))]


def choose_partners(candidates: Sequence[T], k: int, rng: random.Random,
                    is_live: Callable[[T], bool] = lambda _: True) -> list[T]:
    """``k`` distinct uniformly random live candidates (all of them when fewer are live).

    Epidemic Learning's push to ``s`` random peers per round (de Vos et al. 2023); with
    ``k = 1`` it draws exactly as ``choose_partner`` does, so fanout 1 is plain gossip.
    """
    live = [c for c in candidates if is_live(c)]
    if k == 1:
        return [live[rng.randrange(len(live))]] if live else []
    return rng.sample(live, min(k, len(live)))
