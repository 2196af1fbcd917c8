"""Sampled rounds: agreed, fresh per round, and a dead aggregator is replaced by the next in hash order."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.merge.history import NormHistory
from protocol.rounds import (ADOPT_MULTIPLIER, AGGREGATE, AGGREGATE_FAR, MAX_AHEAD, NOT_AGGREGATOR, ROUND_AHEAD,
                             TRAINED, TRAINING, Collection, RoundBook, RoundLabel, Take, clip_bound,
                             eligible_aggregators, judge, ranking, sample_round)

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


# --- what a received model is to a peer, and when a round closes ------------------------------


def test_a_label_travels_in_telemetry_and_a_malformed_one_is_no_label() -> None:
    label = RoundLabel(TRAINED, 12)
    assert RoundLabel.from_telemetry({"steps": 3, **label.telemetry()}) == label
    for bad in ({}, {"rk": "agg"}, {"rk": "boss", "rn": 1}, {"rk": "agg", "rn": -1}, {"rk": "agg", "rn": "3"},
                {"rk": "agg", "rn": True}, {"rk": "agg", "rn": 1.5}):
        assert RoundLabel.from_telemetry(bad) is None


def test_newer_aggregates_are_adopted_and_trained_models_collected_only_when_sent_to_us() -> None:
    assert judge(RoundLabel(AGGREGATE, 5), adopted=4, inbound=False) is Take.ADOPT
    assert judge(RoundLabel(AGGREGATE, 4), adopted=4, inbound=True) is Take.IGNORE
    assert judge(RoundLabel(TRAINED, 5), adopted=4, inbound=True) is Take.COLLECT
    # In a reply, a trained model is the partner's business: we did not ask it to aggregate.
    assert judge(RoundLabel(TRAINED, 5), adopted=4, inbound=False) is Take.IGNORE
    assert judge(RoundLabel(TRAINED, 4), adopted=4, inbound=True) is Take.IGNORE  # already aggregated
    assert judge(RoundLabel(TRAINING, 9), adopted=4, inbound=True) is Take.IGNORE  # a mid-training snapshot
    assert judge(None, adopted=0, inbound=True) is Take.IGNORE  # a peer in gossip mode


def model(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full(3, value, dtype=np.float32)}


def test_a_round_closes_when_its_trainers_sent_or_at_the_deadline_with_at_least_one_model() -> None:
    c = Collection(3, opened_at=10.0)
    assert not c.ready({"a", "b"}, now=99.0, deadline=1.0)  # nothing arrived: nothing to aggregate
    c.add("a", model(1.0), 10)
    assert not c.ready({"a", "b"}, now=10.5, deadline=1.0)
    assert c.ready({"a", "b"}, now=11.0, deadline=1.0)  # b is dead or slow: the deadline closes the round
    c.add("b", model(4.0), 30)
    assert c.ready({"a", "b"}, now=10.1, deadline=1.0)


def test_the_aggregate_is_fedavg_and_does_not_depend_on_arrival_order() -> None:
    first, second = Collection(1, 0.0), Collection(1, 0.0)
    for sender, value, samples in (("a", 1.0, 10), ("b", 4.0, 30)):
        first.add(sender, model(value), samples)
    for sender, value, samples in (("b", 4.0, 30), ("a", 1.0, 10)):
        second.add(sender, model(value), samples)
    assert np.allclose(first.aggregate()["w"], 3.25)
    assert first.aggregate()["w"].tobytes() == second.aggregate()["w"].tobytes()


def test_adopting_an_aggregate_drops_the_rounds_it_makes_moot() -> None:
    book = RoundBook()
    book.collect(2, "a", model(1.0), 1, now=0.0)
    book.collect(3, "a", model(1.0), 1, now=0.0)
    assert [c.round_number for c in book.due(lambda r: {"a"}, now=0.0, deadline=5.0)] == [3, 2]
    book.adopt(2)
    assert sorted(book.collecting) == [3]
    book.collect(1, "b", model(1.0), 1, now=0.0)  # a round already aggregated is not collected again
    assert sorted(book.collecting) == [3]


def test_a_huge_claimed_count_is_capped_at_twice_the_median_claim() -> None:
    c = Collection(1, 0.0)
    c.add("a", model(1.0), 10)
    c.add("b", model(2.0), 12)
    c.add("evil", model(9.0), 2**64 - 1)
    assert c.weights(own_samples=11) == {"a": 10, "b": 12, "evil": 23}  # median of 10, 12, 2^64-1, 11: 11.5
    lone = Collection(1, 0.0)
    lone.add("a", model(1.0), 10)
    lone.add("evil", model(9.0), 2**64 - 1)
    assert lone.weights(own_samples=10)["evil"] == 20  # the aggregator's own shard keeps the median honest


def test_with_the_rounds_start_one_trainer_moves_the_aggregate_at_most_the_clip_bound() -> None:
    """Two honest updates of norm ~1 and one hostile trainer sending a model 10^6 away with
    2^64 - 1 samples: the aggregate stays within ``clip_bound`` (2 x the lower median norm)
    of the round's start; FedAvg of capped counts alone would have followed the hostile model."""
    start = {"w": np.zeros(3, dtype=np.float32)}
    honest = {"a": np.array([1.0, 0.0, 0.0]), "b": np.array([0.0, 1.1, 0.0])}
    c = Collection(1, 0.0)
    for sender, w in honest.items():
        c.add(sender, {"w": w.astype(np.float32)}, 100)
    c.add("evil", {"w": np.full(3, -1e6, dtype=np.float32)}, 2**64 - 1)
    bound = clip_bound([1.0, 1.1, 1e6 * np.sqrt(3)])
    assert np.isclose(bound, 2.2)
    unbounded = np.linalg.norm(c.aggregate()["w"])  # capped counts alone: the model is not bounded
    bounded = c.aggregate(start, own_samples=100)["w"]
    assert unbounded > 1e5
    assert np.linalg.norm(bounded) <= bound + 1e-5
    # Beyond the bound while honest models are within it: left out, the honest FedAvg remains.
    assert np.allclose(bounded, (honest["a"] + honest["b"]) / 2)
    # Just inside the bound it counts, with at most 2 x the median claim: its pull on the
    # aggregate is at most its share (200 of 400) x twice the bound.
    c.add("evil", {"w": np.array([0.0, 0.0, -2.1], dtype=np.float32)}, 2**64 - 1)
    inside = c.aggregate(start, own_samples=100)["w"]
    assert np.linalg.norm(inside - (honest["a"] + honest["b"]) / 2) <= (200 / 400) * 2 * bound + 1e-5
    assert np.linalg.norm(inside) <= bound + 1e-5


def test_the_norm_history_keeps_a_lone_hostile_trainer_bounded() -> None:
    history = NormHistory(32, warmup=1)
    start = {"w": np.zeros(2, dtype=np.float32)}
    for r in range(1, 4):  # honest rounds: updates of norm 1
        c = Collection(r, 0.0)
        c.add("a", {"w": np.array([1.0, 0.0], dtype=np.float32)}, 10)
        c.aggregate(start, own_samples=10, history=history)
    alone = Collection(4, 0.0)
    alone.add("evil", {"w": np.array([0.0, 1e9], dtype=np.float32)}, 2**64 - 1)
    assert np.linalg.norm(alone.aggregate(start, own_samples=10, history=history)["w"]) <= 2.0 + 1e-5


# --- which aggregates a peer adopts (issue 14) ------------------------------------------------


def book_at(adopted: int, claims: dict[str, int]) -> RoundBook:
    book = RoundBook()
    book.adopt(adopted)
    for sender, r in claims.items():
        book.note_claim(sender, RoundLabel(AGGREGATE, r), IDS)
    return book


def test_one_senders_claim_of_a_far_round_is_refused_however_it_ranks() -> None:
    book = book_at(10, {"peer-1": 10, "peer-2": 11})
    assert book.confirmed() == 10
    # A forged "aggregate of round 2^62": one sender's claim never confirms a round.
    book.note_claim("peer-9", RoundLabel(AGGREGATE, 2**62), IDS)
    assert book.confirmed() == 11
    assert book.admit(2**62, "peer-9", eligible=["peer-9"]) == ROUND_AHEAD
    # A ground round: the sender made the hash rank it first, but the round is beyond the pace.
    ground = next(r for r in range(1000, 10**6) if ranking(r, IDS, "aggregate")[0] == "peer-9")
    assert "peer-9" in eligible_aggregators(ground, IDS, 1)
    assert book.admit(ground, "peer-9", eligible_aggregators(ground, IDS, 1)) == ROUND_AHEAD
    # Within the pace, it had to be the aggregator of that very round (or the round confirmed).
    near = next(r for r in range(12, 12 + MAX_AHEAD) if "peer-9" not in eligible_aggregators(r, IDS, 1))
    assert book.admit(near, "peer-9", eligible_aggregators(near, IDS, 1)) == NOT_AGGREGATOR
    assert book.admit(book.adopted + MAX_AHEAD, "peer-3", ["peer-3"]) is None  # the round's aggregator
    assert book.admit(11, "peer-2", ["peer-5"]) is None  # a relay of a round two peers vouch for


def test_a_late_joiner_catches_up_once_two_peers_vouch_for_the_swarms_round() -> None:
    book = RoundBook()
    book.note_claim("peer-1", RoundLabel(AGGREGATE, 50), IDS)
    assert book.admit(50, "peer-1", ["peer-1"]) == ROUND_AHEAD  # far, and only one sender says so
    book.note_claim("peer-2", RoundLabel(TRAINED, 52), IDS)  # a trainer of 52 holds 51's aggregate
    assert book.confirmed() == 50
    assert book.admit(50, "peer-1", []) is None  # relayed: confirmed
    assert book.admit(53, "peer-4", ["peer-4"]) is None  # pushed by round 53's aggregator: within pace
    # Claims of peers that left the view are dropped (the table is no larger than the view).
    book.note_claim("peer-3", RoundLabel(AGGREGATE, 60), ["peer-3"])
    assert set(book.claims) == {"peer-3"} and book.confirmed() == 0


def test_an_aggregate_moving_our_model_beyond_the_bound_needs_two_agreeing_senders() -> None:
    ours = {"w": np.zeros(2, dtype=np.float32)}

    def at(x: float, y: float = 0.0) -> dict[str, np.ndarray]:
        return {"w": np.array([x, y], dtype=np.float32)}

    book = RoundBook()
    assert book.admit_move(1, "a", at(1e9), ours) is None  # nothing seen yet: a new peer cannot judge
    book.adopt(1, distance=1e9)  # recorded: later moves outvote it in the lower median
    book.adopt(2, distance=1.0)
    book.adopt(4, distance=4.0)  # two rounds: 2.0 per round
    bound = ADOPT_MULTIPLIER * 2.0  # the lower median of 1e9, 1, 2 per round
    assert book.move_bound(5) == bound and book.move_bound(6) == 2 * bound
    assert book.admit_move(5, "a", at(bound), ours) is None
    assert book.admit_move(5, "evil", at(1e6), ours) == AGGREGATE_FAR
    assert book.admit_move(5, "evil", at(1e6), ours) == AGGREGATE_FAR  # the same sender again: still refused
    # Another sender, far from ours and from the refused one: an attacker and an honest peer disagree.
    assert book.admit_move(5, "b", at(0.0, 1e3), ours) == AGGREGATE_FAR
    # A third sender agreeing with the last refused one (within the bound of it): ours is the odd one out.
    assert book.admit_move(6, "c", at(bound, 1e3), ours) is None
    book.adopt(6, distance=1e3)
    assert book.admit_move(7, "evil", at(1e12), at(bound, 1e3)) == AGGREGATE_FAR  # adopting starts again
