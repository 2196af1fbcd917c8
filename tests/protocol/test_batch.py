"""The pending-models buffer shared by the daemon's defence and the simulator."""

from __future__ import annotations

import random

import numpy as np

from protocol.merge import Contribution, PendingModels
from protocol.sampling import choose_partner, choose_partners


def model(sender: str, value: float) -> Contribution:
    return Contribution({"w": np.full(3, value, dtype=np.float32)}, samples=5, sender=sender)


def test_one_model_per_sender_the_newest_aged_by_steps_since_it_arrived() -> None:
    pending = PendingModels()
    pending.add(model("b", 1.0), steps=10)
    pending.add(model("a", 2.0), steps=12)
    pending.add(model("b", 3.0), steps=15)  # replaces b's older model
    assert len(pending) == 2
    assert pending.take_if_full(3, steps=20) is None and len(pending) == 2
    batch = pending.take_if_full(2, steps=20)
    assert batch is not None and len(pending) == 0
    assert [(c.sender, float(c.tensors["w"][0]), c.age) for c in batch] == [("a", 2.0, 8), ("b", 3.0, 5)]
    assert pending.take(steps=21) == []


def test_choose_partners_draws_distinct_live_peers_and_k1_is_choose_partner() -> None:
    peers = list(range(10))
    live = lambda p: p % 3 != 0  # noqa: E731
    picked = choose_partners(peers, 4, random.Random(1), is_live=live)
    assert len(picked) == len(set(picked)) == 4 and all(live(p) for p in picked)
    assert sorted(choose_partners(peers, 50, random.Random(1), is_live=live)) == [p for p in peers if live(p)]
    assert choose_partners(peers, 1, random.Random(7)) == [choose_partner(peers, random.Random(7))]
    assert choose_partners([], 3, random.Random(1)) == []
