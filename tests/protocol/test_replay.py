"""Replayed and stale link updates are refused; an honest sender, a restarted one and a
forgotten one are not; memory stays bounded whatever arrives."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.replay import Replayed, ReplayGuard, Stale


def test_an_honest_sequence_is_admitted_and_a_replay_of_any_of_it_is_refused() -> None:
    f = ReplayGuard()
    for seq in range(5):
        f.admit("a:1", epoch=7, seq=seq, version=10 + seq)
    for seq in range(5):
        with pytest.raises(Replayed):
            f.admit("a:1", epoch=7, seq=seq, version=10 + seq)
    f.admit("a:1", epoch=7, seq=5, version=15)


def test_a_model_version_going_backwards_within_an_epoch_is_stale() -> None:
    f = ReplayGuard()
    f.admit("a:1", epoch=7, seq=0, version=20)
    with pytest.raises(Stale):
        f.admit("a:1", epoch=7, seq=1, version=19)
    f.admit("a:1", epoch=7, seq=1, version=20)  # an equal version is fine (e.g. training has stopped)


def test_a_restarted_sender_with_a_new_epoch_is_accepted_even_with_lower_versions() -> None:
    f = ReplayGuard()
    f.admit("a:1", epoch=7, seq=30, version=500)
    f.admit("a:1", epoch=8, seq=0, version=0)
    f.admit("a:1", epoch=8, seq=1, version=1)


def test_an_old_keyframe_replayed_after_the_link_moved_on_is_refused() -> None:
    f = ReplayGuard(max_epochs=4)
    f.admit("a:1", epoch=1, seq=0, version=1)
    f.admit("a:1", epoch=2, seq=0, version=2)
    with pytest.raises(Replayed):
        f.admit("a:1", epoch=1, seq=0, version=1)


def test_updates_noted_from_replies_count_as_taken() -> None:
    f = ReplayGuard()
    f.admit("a:1", epoch=3, seq=0, version=1)
    f.note("a:1", epoch=3, seq=1, version=2)  # the reply to an exchange we started
    with pytest.raises(Replayed):
        f.admit("a:1", epoch=3, seq=1, version=2)
    f.admit("a:1", epoch=3, seq=2, version=2)


def test_a_refused_update_changes_nothing() -> None:
    f = ReplayGuard()
    f.admit("a:1", epoch=3, seq=4, version=9)
    with pytest.raises(Stale):
        f.admit("a:1", epoch=3, seq=6, version=1)
    f.admit("a:1", epoch=3, seq=5, version=9)  # seq 6 was not remembered


def test_senders_are_separate_and_the_least_recent_is_forgotten_first() -> None:
    f = ReplayGuard(max_senders=2)
    f.admit("a:1", 1, 0, 0)
    f.admit("b:1", 1, 0, 0)
    f.admit("a:1", 1, 1, 0)  # a is now the most recent
    f.admit("c:1", 1, 0, 0)  # evicts b
    assert len(f) == 2
    f.admit("b:1", 1, 0, 0)  # forgotten: taken as fresh, like the receiver's evicted replica
    with pytest.raises(Replayed):
        f.admit("c:1", 1, 0, 0)


updates = st.tuples(st.sampled_from(["a:1", "b:1", "c:1", "d:1", "e:1"]), st.integers(0, 5),
                   st.integers(0, 8), st.integers(0, 8))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(updates, max_size=80), st.integers(1, 6), st.integers(1, 7))
def test_admitted_updates_always_move_forward_and_memory_stays_bounded(
        stream: list[tuple[str, int, int, int]], max_senders: int, max_epochs: int) -> None:
    f = ReplayGuard(max_senders=max_senders, max_epochs=max_epochs)
    # A model that never forgets: what must be refused whenever the sender is still remembered.
    taken: dict[tuple[str, int], tuple[int, int]] = {}
    for sender, epoch, seq, version in stream:
        try:
            f.admit(sender, epoch, seq, version)
        except (Replayed, Stale):
            last = taken.get((sender, epoch))
            assert last is not None and (seq <= last[0] or version < last[1])
            continue
        last = taken.get((sender, epoch))
        # Admitted: it moves forward, unless the sender or epoch had been forgotten (LRU),
        # which cannot happen while everything fits (5 senders, 6 epochs).
        if last is not None and (seq <= last[0] or version < last[1]):
            assert max_senders < 5 or max_epochs < 6, (sender, epoch, seq, version, last)
        taken[(sender, epoch)] = (seq, max(version, last[1] if last else version))
        assert len(f) <= max_senders
        assert all(len(e) <= max_epochs for e in f._senders.values())
