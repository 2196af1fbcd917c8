"""The simulator: deterministic, runs the daemon's protocol code, and merges exactly as the daemon does."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
import torch

from peer.data import load_dataset
from peer.runtime.config import PeerConfig
from peer.runtime.gossip import GossipEngine
from peer.sim.swarm import (
    SimConfig,
    Simulator,
    apply_models,
    consensus_distance,
    make_model,
    neighbours,
    own_packet,
    shard_floor,
)
from peer.runtime.trainer import Trainer
from protocol import codecs
from protocol.membership import StaticMembership
from protocol.merge import RULES, Contribution, make_rule, merge_batch
from protocol.stake import Stakes
from protocol.wire import Limits, decode_packet, fingerprint, specs_of
from tests.trainers import build_trainer


@pytest.fixture(scope="module")
def digits():  # noqa: ANN201 - a peer.data.Dataset
    return load_dataset("digits")


pytestmark = pytest.mark.usefixtures("one_thread")


def small(**kw) -> SimConfig:  # noqa: ANN003
    """A swarm small enough for the default suite: 6 peers, 5 steps per exchange."""
    base = dict(peers=6, gossip_interval=5.0, batch_size=16)
    return SimConfig(**{**base, **kw})


def digests(sim: Simulator) -> list[str]:
    return [p.trainer.digest() for p in sim.peers]


# --- determinism and bookkeeping ------------------------------------------------------------------

def test_same_seed_same_swarm_different_seed_different_swarm(digits) -> None:  # noqa: ANN001
    cfg = small(loss=0.2, delay=1.5, delay_jitter=1.0, speed_spread=0.3, jitter=0.2)
    a, b, c = Simulator(cfg, digits), Simulator(cfg, digits), Simulator(small(seed=1, loss=0.2), digits)
    for sim in (a, b, c):
        sim.run_until(30.0)
    assert digests(a) == digests(b)
    assert a.stats == b.stats
    assert digests(a) != digests(c)


def test_every_message_is_a_wire_packet_and_push_pull_merges_both_sides(digits) -> None:  # noqa: ANN001
    sim = Simulator(small(), digits)
    sizes: list[int] = []
    sim.network.observers.append(lambda _s, _d, size, _r, event: sizes.append(size) if event == "sent" else None)
    sim.run_until(20.0)
    packet_bytes = len(own_packet(sim.peers[0], sim.fingerprint, sim.codec))
    assert sim.stats.exchanges >= sim.config.peers * 3
    assert sim.stats.messages == 2 * sim.stats.exchanges == sim.stats.merges == len(sizes)
    # The daemon's packets: fp32 keyframes and fp32 deltas, each the whole model's payload plus
    # a header that carries link sequence numbers and telemetry (a few dozen bytes more).
    assert all(packet_bytes <= size <= packet_bytes + 256 for size in sizes)
    assert sim.stats.bytes_sent == sum(sizes) == sum(p.bytes_sent for p in sim.peers)
    assert sim.stats.bytes_sent == sum(p.engine.stats.bytes_sent for p in sim.peers)
    # Every link starts with a keyframe each way, and only then: no frame was lost.
    assert sim.keyframes() == len(sim.stats.links)


def test_keyframe_and_small_codecs_are_the_daemons_options(digits) -> None:  # noqa: ANN001
    """fp16 keyframes cost half a fp32 model; int8 small tensors shrink every int8 delta."""
    def run(**kw) -> tuple[Simulator, list[int]]:  # noqa: ANN003
        sim = Simulator(small(**kw), digits)
        sizes: list[int] = []
        sim.network.observers.append(lambda _s, _d, size, _r, event: sizes.append(size) if event == "sent" else None)
        sim.run_until(20.0)
        return sim, sizes

    fp32 = Simulator(small(), digits)
    whole = len(own_packet(fp32.peers[0], fp32.fingerprint, fp32.codec))  # a fp32 model's packet
    sim, sizes = run(keyframe_codec="fp16")
    keyframes = sim.keyframes()
    assert 0 < keyframes < len(sizes)
    # Every keyframe is the model in fp16 (about half: tensors under 4096 values stay fp32, 1,546
    # of 26,122 here), every delta the whole fp32 payload.
    assert sorted(sizes)[:keyframes] == sorted(s for s in sizes if s < 0.6 * whole)
    assert all(0.5 * whole <= s <= 0.5 * whole + 1546 * 2 + 256 for s in sorted(sizes)[:keyframes])
    assert all(whole <= s <= whole + 256 for s in sorted(sizes)[keyframes:])

    def mean_delta(sim: Simulator, sizes: list[int]) -> float:
        deltas = sorted(sizes)[:len(sizes) - sim.keyframes()]
        return sum(deltas) / len(deltas)

    fp32_small, int8_small = run(codec="int8"), run(codec="int8", small_codec="int8")
    # The MLP's small tensors (biases, the 128x10 layer: 1,546 of 26,122 values) go as 1 byte, not 4.
    saved = mean_delta(*fp32_small) - mean_delta(*int8_small)
    assert 1546 * 3 * 0.9 <= saved <= 1546 * 3 + 256
    for bad in (dict(keyframe_codec="int4"), dict(small_codec="topk")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            small(**bad).check()


def test_steps_follow_each_peers_speed(digits) -> None:  # noqa: ANN001
    sim = Simulator(small(speed_spread=0.5, steps_per_second=2.0), digits)
    sim.run_until(25.0)
    for p in sim.peers:
        assert p.trainer.stats().steps == int(25.0 * p.speed + 1e-9)
    assert len({p.trainer.stats().steps for p in sim.peers}) > 1


# --- topology, loss, delay -------------------------------------------------------------------------

def test_ring_peers_only_talk_to_their_two_neighbours(digits) -> None:  # noqa: ANN001
    sim = Simulator(small(topology="ring"), digits)
    sim.run_until(40.0)
    n = sim.config.peers
    assert sim.stats.links
    assert all((b - a) % n in (1, n - 1) for a, b in sim.stats.links)


@pytest.mark.parametrize("peers,degree", [(8, 3), (64, 4), (16, 6)])
def test_random_regular_graphs_are_simple_symmetric_and_k_regular(peers: int, degree: int) -> None:
    graph = neighbours("random-regular", peers, degree, random.Random(3))
    assert all(len(adj) == degree and i not in adj for i, adj in enumerate(graph))
    assert all(i in graph[j] for i, adj in enumerate(graph) for j in adj)
    assert graph != neighbours("random-regular", peers, degree, random.Random(4))


def test_lost_messages_are_never_merged(digits) -> None:  # noqa: ANN001
    sim = Simulator(small(loss=1.0), digits)
    before = [p.trainer.stats().version for p in sim.peers]
    sim.run_until(20.0)
    assert sim.stats.exchanges > 0 and sim.stats.lost == sim.stats.messages
    assert sim.stats.merges == 0
    # Only local steps changed the models' versions.
    assert [p.trainer.stats().version - b for p, b in zip(sim.peers, before)] == \
        [p.trainer.stats().steps for p in sim.peers]


def test_delayed_models_arrive_late_and_stale(digits) -> None:  # noqa: ANN001
    sim = Simulator(small(delay=4.0), digits)
    sim.run_until(3.9)
    assert sim.stats.messages > 0 and sim.stats.merges == 0
    sim.run_until(30.0)
    assert sim.stats.merges > 0
    # A push waits 4 s for delivery at 1 step/s; its reply 4 s more.
    assert sim.stats.max_age >= 4


def test_dirichlet_over_many_peers_lowers_the_shard_floor(digits) -> None:  # noqa: ANN001
    assert shard_floor(digits, SimConfig(peers=16, split="dirichlet", alpha=0.5)) == 10
    assert shard_floor(digits, SimConfig(peers=64, split="dirichlet", alpha=0.1)) < 10


def test_shared_init_starts_every_peer_from_the_same_weights(digits) -> None:  # noqa: ANN001
    shared = Simulator(small(shared_init=True), digits)
    independent = Simulator(small(), digits)
    assert consensus_distance(shared.states()) == 0.0
    assert consensus_distance(independent.states()) > 1.0
    assert len(set(digests(independent))) == independent.config.peers


def test_shared_init_is_the_daemons_start_derived_from_the_cluster_name(digits) -> None:  # noqa: ANN001
    """The simulator's shared start is the model a daemon with ``init = shared`` builds for
    the same cluster, whatever each peer's seed; ``init = own`` and another cluster differ."""
    def daemon(**kw) -> list[str]:  # noqa: ANN003
        trainer = build_trainer(PeerConfig(steps_per_second=0, **kw))
        return [trainer.digest()]

    assert daemon(seed=1) == daemon(seed=2) == daemon(seed=7, shard_count=4, shard_index=3)
    assert daemon(seed=1, init="own") != daemon(seed=2, init="own")
    assert daemon(seed=1, cluster="other") != daemon(seed=1)
    assert daemon(seed=1, init="own") != daemon(seed=1)
    sim = Simulator(small(shared_init=True, cluster="default"), digits)
    assert set(digests(sim)) == set(daemon(seed=3))
    assert set(digests(Simulator(small(shared_init=True, cluster="other"), digits))) == set(daemon(cluster="other"))


def test_gossip_brings_independent_peers_together_and_they_learn(digits) -> None:  # noqa: ANN001
    sim = Simulator(small(merge="vc"), digits)
    start_acc, start_dist = sim.accuracies().mean(), sim.consensus_distance()
    sim.run_until(100.0)
    assert sim.consensus_distance() < 0.5 * start_dist
    assert sim.accuracies().mean() > max(0.6, start_acc + 0.3)


@pytest.mark.slow
def test_64_peers_on_digits_run_in_minutes(digits) -> None:  # noqa: ANN001
    started = time.perf_counter()
    sim = Simulator(SimConfig(peers=64, merge="vc", split="dirichlet", alpha=0.5), digits)
    sim.run_until(300.0)  # 30 rounds of 10 local steps and one exchange per peer
    assert time.perf_counter() - started < 180
    assert sim.accuracies().mean() > 0.5


# --- the daemon and the simulator merge the same way -------------------------------------------------

def trainer(digits, seed: int) -> Trainer:  # noqa: ANN001
    cfg = SimConfig(model="mlp")
    shard = np.arange(40 + seed)
    return Trainer(make_model(cfg, digits, seed), digits, shard, device=torch.device("cpu"), seed=seed,
                   batch_size=16, lr=0.05, momentum=0.9)


def engine(t: Trainer, rule_name: str) -> GossipEngine:
    return GossipEngine(peer_id="daemon", address="daemon:1", trainer=t, membership=StaticMembership("daemon:1"),
                        merge_rule=make_rule(rule_name), codec="fp32", limits=Limits(), rng=random.Random(0),
                        interval=1.0, timeout=1.0)


def received_packet(digits, index: int = 9):  # noqa: ANN001, ANN201 - a protocol.wire.Packet from a third peer
    from peer.sim.virtual_peer import VirtualPeer

    sender = VirtualPeer(index, trainer(digits, index), [], 1.0, random.Random(index))
    sender.trainer.train_steps(3)
    specs = specs_of(sender.trainer.state())
    return decode_packet(own_packet(sender, fingerprint(specs), codecs.get("fp32")), expected=specs)


@pytest.mark.parametrize("rule_name", sorted(RULES))
def test_daemon_and_simulator_produce_the_same_merged_weights(digits, rule_name: str) -> None:  # noqa: ANN001
    """Batch rules (median, trimmed) merge once merge_batch(rule) senders have sent a model, in both."""
    batch = merge_batch(make_rule(rule_name))
    packets = [received_packet(digits, 9 + i) for i in range(batch)]
    senders = [f"sim:{9 + i}" for i in range(batch)]
    in_daemon, in_sim = trainer(digits, 1), trainer(digits, 1)
    in_daemon.train_steps(2)
    in_sim.train_steps(2)
    before = in_sim.digest()
    daemon = engine(in_daemon, rule_name)
    for i, (packet, sender) in enumerate(zip(packets, senders)):
        daemon.merge(packet.tensors, packet.header.samples, sender)
        assert (in_daemon.digest() == before) == (i < batch - 1)  # buffered until the batch is full
    apply_models(in_sim, make_rule(rule_name),
                 [Contribution(p.tensors, samples=p.header.samples, sender=s) for p, s in zip(packets, senders)],
                 Stakes())  # the receiver's books of first-contact senders, as the daemon keeps them
    assert in_sim.digest() != before
    assert in_daemon.digest() == in_sim.digest()


def test_the_daemon_merges_through_the_shared_merge_function(digits, monkeypatch) -> None:  # noqa: ANN001
    """Same code path, not a copy: the daemon's merge must call protocol.merge.merge_received_report."""
    import peer.runtime.defence
    import protocol.merge

    calls: list[int] = []

    def spy(rule, local_state, local_samples, received, **options):  # noqa: ANN001, ANN003, ANN202
        calls.append(local_samples)
        return protocol.merge.merge_received_report(rule, local_state, local_samples, received, **options)

    # raising=True (the default): fails while peer.runtime.defence does not import merge_received_report.
    monkeypatch.setattr(peer.runtime.defence, "merge_received_report", spy)
    t = trainer(digits, 1)
    packet = received_packet(digits)
    engine(t, "vc").merge(packet.tensors, packet.header.samples)
    assert calls == [t.samples]
