"""Sampled rounds: agreed, fresh per round, and a dead aggregator is replaced by the next in hash order."""

from __future__ import annotations

import pytest

from protocol.rounds import ranking, sample_round

IDS = [f"peer-{i}" for i in range(20)]


def test_every_peer_computes_the_same_sample_whatever_the_order_of_its_view() -> None:
    a = sample_round(7, IDS, trainers=5, aggregators=2)
    b = sample_round(7, list(reversed(IDS)), trainers=5, aggregators=2)
    assert a == b and len(a.trainers) == 5 and len(a.aggregators) == 2
    assert set(a.trainers) <= set(IDS)


def test_samples_change_from_round_to_round_and_cover_everyone() -> None:
    samples = [sample_round(r, IDS, trainers=5, aggregators=1) for r in range(40)]
    assert len({s.trainers for s in samples}) == 40
    assert {p for s in samples for p in s.trainers} == set(IDS)
    assert len({s.aggregators for s in samples}) > 10


def test_a_dead_aggregator_is_replaced_by_the_next_live_peer_in_hash_order() -> None:
    order = ranking(3, IDS, "aggregate")
    dead = {order[0]}
    s = sample_round(3, IDS, trainers=4, aggregators=2, is_live=lambda p: p not in dead)
    assert s.aggregators == (order[1], order[2])
    assert dead.isdisjoint(s.trainers)


def test_with_80_percent_down_the_live_fifth_still_forms_rounds() -> None:
    live = set(IDS[:4])
    s = sample_round(11, IDS, trainers=8, aggregators=2, is_live=live.__contains__)
    assert set(s.trainers) == live and set(s.aggregators) <= live and len(s.aggregators) == 2
    with pytest.raises(ValueError):
        sample_round(1, IDS, trainers=0, aggregators=1)
