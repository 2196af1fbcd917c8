"""Sampled rounds without a server (MoDeST-style) and synchronous FedAvg, on the simulator's peers.

Both are round-based: in round r the ``trainers`` start from the latest aggregate, take
``local_steps`` steps, and send their models to the round's aggregator, which averages them
(FedAvg's sample weights) and sends the aggregate on. FedAvg has one fixed server and every
live client; sampled rounds pick trainers and the aggregator by hashing (round, peer id)
over the live view (``protocol.rounds``), so no peer is special and a dead aggregator is
replaced by the next in hash order. Models travel as the daemon's whole-model packets
(``peer.sim.swarm.own_packet``); bytes count what crosses the network (a peer's own model to
itself costs nothing).

Time (``Timing``): a round lasts as long as its slowest trainer's local steps plus the
transfers through the aggregator's link (uploads arrive one after the other on its
bandwidth), optionally cut at a ``deadline`` that drops late trainers (FedAvg with
straggler dropping). Peers that are down when a round starts are left out of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from peer.sim.swarm import Simulator, own_packet
from protocol.merge import weighted_average
from protocol.rounds import sample_round

# live(peer index, virtual time) -> whether the peer is up then.
Live = Callable[[int, float], bool]


@dataclass(frozen=True)
class Timing:
    speeds: Sequence[float]            # local steps per second, per peer
    latency: float = 0.0               # one-way seconds per message
    bandwidth: float = 0.0             # bytes per second of a link (0: unlimited)
    deadline_factor: float = 0.0       # > 0: drop trainers slower than this x the median trainer


@dataclass
class RoundsResult:
    accuracy: list[float]              # aggregate's test accuracy after each round (round 0: initial)
    bytes_sent: list[int]
    times: list[float]                 # virtual time at the end of each round


def run_rounds(sim: Simulator, rounds: int, local_steps: int, *, sampled: bool, timing: Timing | None = None,
               live: Live | None = None, trainers: int = 0, until: float = math.inf) -> RoundsResult:
    """FedAvg (``sampled=False``: server = peer 0's position, outside the swarm's failures) or
    sampled rounds (``sampled=True``: ``trainers`` per round, 0 = every live peer, one aggregator)."""
    peers = sim.peers
    ids = [p.peer_id for p in peers]
    packet = len(own_packet(peers[0], sim.fingerprint, sim.codec))
    timing = timing or Timing([1.0] * len(peers))
    live = live or (lambda _i, _t: True)
    aggregate = peers[0].trainer.state()
    result = RoundsResult([peers[0].trainer.evaluate()], [0], [0.0])
    now, sent, r = 0.0, 0, 0
    while r < rounds and now < until:
        r += 1
        up = [i for i in range(len(peers)) if live(i, now)]
        if sampled:
            chosen = sample_round(r, [ids[i] for i in up], trainers or len(up), 1)
            round_trainers = [ids.index(t) for t in chosen.trainers]
            aggregator = ids.index(chosen.aggregators[0]) if chosen.aggregators else -1
        else:
            round_trainers, aggregator = up, -1  # -1: the server, not a peer
        if not round_trainers:
            now += local_steps
            continue
        durations = {i: local_steps / timing.speeds[i] for i in round_trainers}
        if timing.deadline_factor > 0:
            cut = timing.deadline_factor * float(np.median(list(durations.values())))
            durations = {i: d for i, d in durations.items() if d <= cut}
        # Trainers that went down before finishing are lost to this round.
        done = [i for i, d in durations.items() if live(i, now + d)]
        for i in round_trainers:
            peers[i].trainer.merge_with(lambda _c: aggregate)
            if i in durations:
                train_on_clock(sim, i, now, local_steps, timing.speeds[i])
        transfers = 2 * sum(1 for i in done if i != aggregator)
        sent += transfers * packet
        link = packet / timing.bandwidth if timing.bandwidth else 0.0
        now += max(durations.values(), default=local_steps) + 2 * timing.latency + transfers * link
        if done:
            aggregate = weighted_average([peers[i].trainer.state() for i in done],
                                         [peers[i].trainer.samples for i in done])
        sim._scratch.load_state_dict({k: _tensor(v) for k, v in aggregate.items()})
        result.accuracy.append(_accuracy(sim))
        result.bytes_sent.append(sent)
        result.times.append(now)
    return result


def train_on_clock(sim: Simulator, index: int, start: float, steps: int, speed: float = 1.0) -> None:
    """Peer ``index`` takes ``steps`` local steps from virtual time ``start`` at ``speed`` steps
    per second, the clock reading each step's time as the step is taken (step k at start + k/speed,
    as ``Simulator`` steps a gossip peer), so a learning-rate schedule (SimConfig.lr_schedule)
    anneals round-based methods on the same virtual time as gossip. The round-based methods
    drive the trainers themselves and never run the clock's events, so moving ``now`` is all
    the clock does for them."""
    trainer = sim.peers[index].trainer
    for k in range(1, steps + 1):
        sim.clock.now = start + k / speed
        trainer.step()


def _tensor(x: np.ndarray):  # noqa: ANN202 - torch.Tensor
    import torch

    return torch.from_numpy(np.ascontiguousarray(x))


def _accuracy(sim: Simulator) -> float:
    import torch

    model = sim._scratch
    with torch.no_grad():
        model.eval()
        pred = model(torch.as_tensor(sim.data.test_x)).argmax(1)
        return float((pred == torch.as_tensor(sim.data.test_y)).float().mean())
