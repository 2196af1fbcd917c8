"""Attackers in the simulator, and a robust rule holding where plain averaging does not."""

from __future__ import annotations


import numpy as np
import pytest

from peer.data import load_dataset
from peer.sim.swarm import SimConfig, Simulator


@pytest.fixture(scope="module")
def digits():  # noqa: ANN201 - a peer.data.Dataset
    return load_dataset("digits")


pytestmark = pytest.mark.usefixtures("one_thread")


def small(**kw) -> SimConfig:  # noqa: ANN003
    base = dict(peers=6, gossip_interval=5.0, batch_size=16, shared_init=True)
    return SimConfig(**{**base, **kw})


def test_no_attack_configuration_changes_nothing(digits) -> None:  # noqa: ANN001
    a = Simulator(small(), digits)
    b = Simulator(small(attack="none", attackers=(5,)), digits)
    for sim in (a, b):
        sim.run_until(15.0)
    assert [p.trainer.digest() for p in a.peers] == [p.trainer.digest() for p in b.peers]
    assert b.honest == list(range(6)) and b.stats.poisoned == 0


def test_a_sign_flip_attacker_sends_poison_that_plain_averaging_takes_and_bristle_leaves_out(digits) -> None:  # noqa: ANN001
    results = {}
    for merge in ("vc", "bristle"):
        sim = Simulator(small(merge=merge, attack="sign-flip", attackers=(5,)), digits)
        sim.run_until(60.0)
        assert sim.stats.poisoned > 0 and sim.honest == [0, 1, 2, 3, 4]
        results[merge] = (sim.honest_accuracies().mean(), sim.stats.verdicts)
    assert results["bristle"][0] > results["vc"][0] + 0.2
    bristle_verdicts = results["bristle"][1]
    assert bristle_verdicts[("outlier", True)] > bristle_verdicts[("ok", True)]


def test_label_flip_attackers_train_on_flipped_labels(digits) -> None:  # noqa: ANN001
    sim = Simulator(small(attack="label-flip", attackers=(2,)), digits)
    shard_labels = digits.train_y[sim.shards[2]]
    assert np.array_equal(sim.peers[2].trainer.train_y.numpy(), digits.num_classes - 1 - shard_labels)
    assert np.array_equal(sim.peers[1].trainer.train_y.numpy(), digits.train_y[sim.shards[1]])


def test_small_shift_stays_just_inside_the_victims_clipping_bound(digits) -> None:  # noqa: ANN001
    from protocol.merge import delta_norm

    sim = Simulator(small(merge="clip", attack="small-shift", attackers=(0,)), digits)
    sim.run_until(12.0)
    victim = sim.peers[1]
    state = victim.trainer.state()
    sent = sim._poisoned(sim.peers[0], victim)
    bound = sim.rules[1].bound(state)
    assert 0.9 * bound < delta_norm(state, sent) < bound


def test_median_buffers_several_models_per_merge_one_per_sender(digits) -> None:  # noqa: ANN001
    sim = Simulator(small(merge="median"), digits)
    sim.run_until(40.0)
    assert sim.stats.messages > 0
    # Each merge takes 4 buffered models: far fewer merges than messages.
    assert 0 < sim.stats.merges <= sim.stats.messages // 4
    assert all(p.engine.defence.pending() < 4 for p in sim.peers)


def test_reputation_bans_a_noisy_attacker_and_drops_its_packets(digits) -> None:  # noqa: ANN001
    sim = Simulator(small(merge="bristle", attack="noise", attackers=(5,), reputation=True), digits)
    sim.run_until(150.0)
    attacker = sim.peers[5].address
    assert all(sim.peers[i].engine.defence.reputation is not None for i in sim.honest)
    banned_by = [i for i in sim.honest if sim.banned(i, 5)]
    assert len(banned_by) >= 3
    assert sim.stats.dropped > 0
    assert "banned" in sim.peers[banned_by[0]].engine.defence.standing(attacker)[2]


def robust(**kw) -> SimConfig:  # noqa: ANN003
    """The recommended defence: bristle with the loss check and reputation."""
    return small(merge="bristle", validate=True, reputation=True, **kw)


def test_the_loss_check_keeps_honest_peers_near_the_no_attack_accuracy(digits) -> None:  # noqa: ANN001
    """Tiny scale (6 peers, 1 attacker, 12 rounds): uphill and label-flipping attackers pass the
    distance test but not the loss check; plain averaging collapses under the uphill one."""
    baseline = Simulator(robust(), digits)
    baseline.run_until(60.0)
    reference = baseline.honest_accuracies().mean()
    for attack in ("small-shift", "label-flip"):
        sim = Simulator(robust(attack=attack, attackers=(5,)), digits)
        sim.run_until(60.0)
        v = sim.stats.verdicts
        assert sim.honest_accuracies().mean() > reference - 0.05, attack
        # Attackers' models are mostly refused; the loss check refuses almost no honest one
        # (at this scale the honest refusals are the distance test's, as without attackers).
        assert v[("outlier", True)] > v[("ok", True)], (attack, v)
        assert sim.stats.refused_by[("validation", False)] <= 0.05 * v[("ok", False)], sim.stats.refused_by
    plain = Simulator(small(merge="vc", attack="small-shift", attackers=(5,)), digits)
    # 18 rounds: through the daemon's packet path (issue 11) this seed's honest peers are at
    # 0.54 after 12 rounds and collapse to 0.10 by round 18 (0.41-0.58 at 12 rounds on seeds 1-2).
    plain.run_until(90.0)
    assert plain.honest_accuracies().mean() < reference - 0.3


def test_a_held_out_validation_split_is_kept_out_of_training(digits) -> None:  # noqa: ANN001
    sim = Simulator(robust(validation_split=0.2), digits)
    for p in sim.peers:
        shard, held = set(sim.shards[p.index].tolist()), set(sim.validation[p.index].tolist())
        assert held and held < shard
        assert p.trainer.samples == len(shard) - len(held)


def test_absent_peers_take_no_part(digits) -> None:  # noqa: ANN001
    sim = Simulator(small(absent=(4, 5)), digits)
    sim.run_until(20.0)
    assert sim.honest == [0, 1, 2, 3]
    assert all(a not in (4, 5) and b not in (4, 5) for a, b in sim.stats.links)
    assert sim.peers[4].trainer.stats().steps == 0


def test_loss_shift_stays_inside_both_the_distance_bound_and_the_loss_limit(digits) -> None:  # noqa: ANN001
    from protocol.merge import delta_norm

    sim = Simulator(robust(attack="loss-shift", attackers=(0,)), digits)
    sim.run_until(30.0)
    victim = sim.peers[1]
    state = victim.trainer.state()
    sent = sim._poisoned(sim.peers[0], victim)
    check = sim.rules[1].loss_check
    assert check is not None
    (rise,) = check.rises(state, [sent])
    assert delta_norm(state, sent) < sim.rules[1].bound(state)
    assert rise <= check.limit()


def test_honest_peers_at_the_daemon_pace_do_not_ban_each_other(digits) -> None:  # noqa: ANN001
    """4 peers from a shared start at the daemon's pace (10 steps/s, an exchange every 0.5 s),
    the default defence: distances grow from zero faster than bristle's running median follows.
    Before the bound's floor and the light weight of near distance outliers, 10 of the 12 links
    were banned within 6 virtual seconds and merging stopped (bench/RESULTS.md, issue 14 session 9)."""
    cfg = SimConfig(peers=4, merge="bristle", shared_init=True, steps_per_second=10, gossip_interval=0.5,
                    seed=1, reputation=True, validate=True)
    sim = Simulator(cfg, digits)
    sim.run_until(30.0)
    assert [(i, j) for i in sim.honest for j in range(4) if i != j and sim.banned(i, j)] == []
    # Each of 4 peers starts 2 exchanges a second, each merging on both sides: 480 in 30 s.
    assert sim.stats.merges >= 0.9 * 480, sim.stats.merges
