from __future__ import annotations

import random
from collections import Counter

from protocol.sampling import choose_partner


def test_only_live_candidates_are_chosen() -> None:
    rng = random.Random(1)
    picks = {choose_partner(list(range(10)), rng, is_live=lambda c: c % 3 == 0) for _ in range(200)}
    assert picks == {0, 3, 6, 9}


def test_no_live_candidate_gives_none() -> None:
    rng = random.Random(1)
    assert choose_partner([], rng) is None
    assert choose_partner([1, 2], rng, is_live=lambda _: False) is None


def test_choice_is_roughly_uniform_and_reproducible() -> None:
    counts = Counter(choose_partner("abcd", random.Random(7)) for _ in range(1))
    assert counts  # one draw works
    rng_a, rng_b = random.Random(42), random.Random(42)
    seq_a = [choose_partner("abcd", rng_a) for _ in range(4000)]
    seq_b = [choose_partner("abcd", rng_b) for _ in range(4000)]
    assert seq_a == seq_b
    counts = Counter(seq_a)
    assert all(900 < counts[c] < 1100 for c in "abcd"), counts
