from __future__ import annotations

import random
from collections import Counter

import pytest

from protocol.sampling import UNCONFIRMED_SHARE, choose_partner, choose_partners, unconfirmed_pick_share


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


# --- members known only by hearsay (issue 14, attack 2) ----------------------------------

def test_the_share_of_unconfirmed_members_is_uniform_up_to_the_cap_and_capped_beyond() -> None:
    assert unconfirmed_pick_share(10, 0) == 0.0
    assert unconfirmed_pick_share(15, 1) == pytest.approx(1 / 16)  # one new member: uniform
    assert unconfirmed_pick_share(7, 1) == pytest.approx(UNCONFIRMED_SHARE)  # exactly at the cap
    assert unconfirmed_pick_share(2, 64) == UNCONFIRMED_SHARE  # a flood: capped
    assert unconfirmed_pick_share(2, 66_000) == UNCONFIRMED_SHARE
    assert unconfirmed_pick_share(0, 5) == 1.0  # nobody confirmed: they are all there is to try


def test_within_the_share_the_draw_is_plain_uniform_choice_with_the_same_random_numbers() -> None:
    # 16 members of which 2 are unconfirmed (12.5 %): exactly the old draw, so seeded runs
    # (the simulator, where every member is confirmed) do not change.
    members = list(range(16))
    confirmed = lambda c: c >= 2  # noqa: E731
    rng_new, rng_old = random.Random(11), random.Random(11)
    new = [choose_partner(members, rng_new, is_confirmed=confirmed) for _ in range(500)]
    old = [members[rng_old.randrange(len(members))] for _ in range(500)]
    assert new == old
    rng_new, rng_old = random.Random(12), random.Random(12)
    assert ([choose_partners(members, 3, rng_new, is_confirmed=confirmed) for _ in range(200)]
            == [rng_old.sample(members, 3) for _ in range(200)])


def test_a_flood_of_unconfirmed_members_draws_at_most_the_share_of_the_picks() -> None:
    # The flood: 2 honest members, 64 made-up ones admitted on hearsay.
    members = ["b", "c"] + [f"x{i}" for i in range(64)]
    rng = random.Random(3)
    draws = 20_000
    counts = Counter(choose_partner(members, rng, is_confirmed=lambda m: not m.startswith("x"))
                     for _ in range(draws))
    unconfirmed = sum(n for m, n in counts.items() if m.startswith("x"))
    # Binomial(20,000, 1/8): mean 2,500, sd 47; uniform choice would give 19,394.
    assert abs(unconfirmed - UNCONFIRMED_SHARE * draws) < 5 * 47
    for honest in "bc":  # each honest member: (1 - 1/8) / 2 of the picks, not 1/66
        assert abs(counts[honest] - (1 - UNCONFIRMED_SHARE) / 2 * draws) < 5 * 70
    assert len([m for m in counts if m.startswith("x")]) == 64  # every one of them still gets tried


def test_a_flood_draws_at_most_the_share_of_several_distinct_partners_too() -> None:
    members = ["b", "c", "d"] + [f"x{i}" for i in range(64)]
    rng = random.Random(4)
    picks = [choose_partners(members, 2, rng, is_confirmed=lambda m: not m.startswith("x")) for _ in range(5000)]
    assert all(len(p) == 2 and len(set(p)) == 2 for p in picks)
    unconfirmed = sum(m.startswith("x") for p in picks for m in p)
    assert unconfirmed < 1.1 * UNCONFIRMED_SHARE * 2 * len(picks)


def test_with_only_unconfirmed_members_live_they_are_chosen_uniformly() -> None:
    rng = random.Random(5)
    counts = Counter(choose_partner("abcd", rng, is_confirmed=lambda _: False) for _ in range(4000))
    assert all(900 < counts[c] < 1100 for c in "abcd"), counts
