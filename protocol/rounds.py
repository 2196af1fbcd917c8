"""Sampled rounds without a server (MoDeST-style): who trains and who aggregates in round r.

Every peer computes the same sample from its membership view and the round number, with
no coordinator: peers are ranked by a hash of (round, peer id), separately for the two
roles, and the first live ones in each ranking are taken. A dead or unreachable
aggregator is therefore replaced by the next live peer in hash order, and two peers
with the same view of who is live agree on the sample. Round numbers travel with the
models (an aggregate of round r starts round r + 1's training).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass


def ranking(round_number: int, peer_ids: Sequence[str], role: str) -> list[str]:
    """``peer_ids`` ordered by SHA-256 of (role, round, id): a fresh, agreed shuffle per round and role."""
    def key(peer_id: str) -> bytes:
        return hashlib.sha256(f"{role}\x00{round_number}\x00{peer_id}".encode()).digest()
    return sorted(set(peer_ids), key=key)


@dataclass(frozen=True)
class RoundSample:
    round_number: int
    trainers: tuple[str, ...]
    aggregators: tuple[str, ...]


def sample_round(round_number: int, peer_ids: Sequence[str], trainers: int, aggregators: int,
                 is_live: Callable[[str], bool] = lambda _: True) -> RoundSample:
    """The first ``trainers`` live peers of the trainer ranking and the first ``aggregators``
    live peers of the aggregator ranking (fewer when fewer are live; a peer may hold both roles)."""
    if trainers < 1 or aggregators < 1:
        raise ValueError("a round needs at least one trainer and one aggregator")

    def first_live(role: str, k: int) -> tuple[str, ...]:
        return tuple([p for p in ranking(round_number, peer_ids, role) if is_live(p)][:k])

    return RoundSample(round_number, first_live("train", trainers), first_live("aggregate", aggregators))
