"""Many virtual peers in one process, on a virtual clock, running the daemon's code.

Why: the learning-quality questions (does variance correction help? how many rounds
to FedAvg's accuracy?) need dozens of peers and reproducible runs, which real
processes on 2 cores cannot give. The simulator keeps everything that decides the
*numbers* identical to the daemon and replaces only time and the network:

- training: ``peer.runtime.trainer.Trainer.step()`` on shards from ``peer.data.partition``,
  models from ``peer.models.build_model`` (the trainer's thread is never started);
- exchanges: every virtual peer has the daemon's ``peer.runtime.gossip.GossipEngine``, built
  with the daemon's defaults (``peer.runtime.config.PeerConfig``), and exchanges through its
  own packet path: codec policy, per-link replicas and error feedback, keyframes, wire
  framing, the replay guard and validation of what arrives, the defence (reputation, batch
  buffering) and the merge. An in-memory transport (``peer.transport.memory``) stands
  where gRPC stands, with gRPC's refusal codes;
- partners: ``GossipEngine.pick_partner(s)`` over the peer's neighbours in the
  configured topology (full, ring, random k-regular), seeded as the peer's membership.

Time is a number (``peer.sim.clock.VirtualClock``): events (a local step, a gossip tick,
a message arriving) sit in a heap ordered by (time, sequence), so a run is a pure
function of its config and seed. Messages may be lost (Bernoulli: the caller waits its
timeout) or delayed (fixed + uniform jitter + size / bandwidth); each peer steps at its
own speed (stragglers: ``slow_fraction`` of the peers ``slow_factor`` times slower), and
peers may crash and come back (``churn``). A model that travels for a while arrives
stale: the receiver trained meanwhile (``SimStats.max_age``).

``fanout`` > 1 is Epidemic Learning (de Vos et al. 2023), as the daemon's ``--fanout``:
each tick a peer starts ``fanout`` exchanges, then merges every model received since its
last merge (the replies included) at once. Hostile peers: ``peer.sim.attacks``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from peer.runtime.config import PeerConfig
from peer.data import Dataset, load_dataset
from peer.runtime.defence import Defence
from peer.runtime.evaluation import accuracy, eval_layout
from peer.runtime.gossip import GossipEngine
from peer.sim.attacks import AttackerEngine, AttackerMixin, PoisoningTrainer, configure_attacker
from peer.sim.clock import VirtualClock
from peer.sim.config import _NEVER, ATTACKS, DEFAULT_ATTACK_SCALE, INITS, TOPOLOGIES, SimConfig
from peer.sim.virtual_peer import VirtualPeer
from peer.sim.setup import (initial_model_seed, initialise, make_model, neighbours, peer_seed, random_regular,
                            shard_floor, shards_for, sim_lr_schedule)
from peer.runtime.trainer import Trainer
from peer.transport.memory import MemoryNetwork
from peer.runtime.validation import split_validation
from protocol import codecs
from protocol.codecs.base import Codec
from protocol.errors import Banned, Refusal
from protocol.membership import StaticMembership
from protocol.merge import Contribution, MergeReport, MergeRule, make_rule, merge_received_report
from protocol.reputation import Reputation, ReputationConfig
from protocol.stake import Stakes
from protocol.wire import Buffer, Limits, Packet, PacketHeader, TensorSpec, encode_packet, fingerprint, specs_of

__all__ = ["ATTACKS", "DEFAULT_ATTACK_SCALE", "INITS", "TOPOLOGIES", "SimConfig", "SimStats", "Simulator",
           "VirtualPeer", "apply_models", "apply_packet", "consensus_distance", "initialise", "make_model",
           "neighbours", "own_packet", "packet_of", "peer_seed", "random_regular", "shard_floor", "shards_for"]

_DAEMON = PeerConfig()  # the daemon's defaults for what SimConfig does not set


@dataclass
class SimStats:
    exchanges: int = 0
    merges: int = 0
    messages: int = 0
    lost: int = 0
    rejected: int = 0
    bytes_sent: int = 0
    # Messages sent per (sender, receiver) pair, lost ones included.
    links: Counter[tuple[int, int]] = field(default_factory=Counter)
    # The largest staleness (receiver steps between a packet's sending and its arrival).
    max_age: int = 0
    # Poisoned packets attackers sent; packets dropped because the sender was banned.
    poisoned: int = 0
    dropped: int = 0
    # Verdicts of the merge rules (ok / clipped / outlier), by (kind, sender was an attacker).
    verdicts: Counter[tuple[str, bool]] = field(default_factory=Counter)
    # Refusals by test ("distance", "validation": the first word of the verdict's reason) and attacker.
    refused_by: Counter[tuple[str, bool]] = field(default_factory=Counter)
    # Keyframes sent (whole models: a link starting or recovering its sequence).
    keyframes: int = 0


def choose_codec(codec: Codec) -> Callable[[str, np.ndarray], Codec]:
    """The daemon's choice: the configured codec for floats it supports, ``raw`` otherwise."""
    raw = codecs.get("raw")
    return lambda _name, x: codec if codec.supports(x.dtype) else raw


def own_packet(peer: VirtualPeer, fp: bytes, codec: Codec) -> bytes:
    """The peer's whole current model as one packet (what FedAvg moves per client and direction)."""
    return packet_of(peer, peer.trainer.state(), fp, codec)


def packet_of(peer: VirtualPeer, state: dict[str, np.ndarray], fp: bytes, codec: Codec) -> bytes:
    """``state`` framed as a whole-model packet from ``peer``."""
    stats = peer.trainer.stats()
    header = PacketHeader(sender_id=peer.peer_id, sender_addr=peer.address, fingerprint=fp,
                          model_version=stats.version, age=stats.steps, samples=peer.trainer.samples,
                          codec=codec.name)
    return encode_packet(header, state, choose_codec(codec))


def apply_packet(trainer: Trainer, rule: MergeRule, packet: Packet, age: int = 0, sender: str = "") -> MergeReport:
    """Merge a decoded packet into ``trainer`` through the daemon's merge entry point."""
    return apply_models(trainer, rule, [Contribution(packet.tensors, samples=packet.header.samples, age=age,
                                                     sender=sender)])


def apply_models(trainer: Trainer, rule: MergeRule, received: Sequence[Contribution],
                 stakes: Stakes | None = None) -> MergeReport:
    """Merge ``received`` into ``trainer`` at once with ``merge_received_report``, the function the
    daemon's ``peer.runtime.defence.Defence`` calls; returns the report. ``stakes``: the receiver's
    books of its senders (protocol/stake.py), applied as the daemon's defence applies them."""
    claims = {c.sender: c.samples for c in received}
    if stakes is not None:
        received = [stakes.bound(c, trainer.samples) for c in received]
    reports: list[MergeReport] = []

    def merge(current: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        reports.append(merge_received_report(rule, current, trainer.samples, received))
        return reports[-1].tensors

    trainer.merge_with(merge)
    if stakes is not None:
        stakes.observe_verdicts(reports[-1].verdicts, claims)
    return reports[-1]


class _CountingDefence(Defence):
    """The daemon's defence; each merge's verdicts are also counted in the simulator's stats,
    and the merged model is kept (``Simulator.merged_accuracies`` reads it)."""

    def __init__(self, sim: Simulator, reputation: Reputation | None,
                 state: Callable[[], dict[str, np.ndarray]]) -> None:
        super().__init__(reputation, clock=sim.clock)
        self._sim = sim
        self._state = state
        self.merged_state: dict[str, np.ndarray] | None = None

    def on_merged(self, report: MergeReport) -> None:
        self._sim._merged(report)
        self.merged_state = self._state()


class Simulator(AttackerMixin):
    """A swarm of ``config.peers`` virtual peers; ``run_until(t)`` advances the virtual clock."""

    def __init__(self, config: SimConfig, data: Dataset | None = None, rule: MergeRule | None = None, *,
                 identities: Sequence[tuple[str, str]] | None = None) -> None:
        """``data`` saves reloading the data set per swarm; ``rule`` overrides ``config.merge``
        with a rule built with non-default parameters (β, ε, ...); ``identities`` gives the
        peers (peer id, gossip address) pairs instead of ``sim-i``/``sim:i``."""
        self.config = config.check()
        self.data = data if data is not None else load_dataset(config.dataset, seed=config.data_seed)
        self.rng = random.Random(config.seed)
        self.rule = rule if rule is not None else make_rule(config.merge)
        self.codec = codecs.get(config.codec)
        self.shards = shards_for(self.data, config)
        self.clock = VirtualClock()
        self.stats = SimStats()
        self.network = MemoryNetwork(max_packet_bytes=int(_DAEMON.max_packet_mb * 2**20), sleep=self.clock.sleep,
                                     latency=self._latency, lost=self._lost)
        self.network.observers.append(self._observe)
        # Per peer: the indices its validator scores on (held out of training when validation_split > 0).
        self.validation: list[np.ndarray] = []
        self.attackers = frozenset(config.attackers) if config.attack != "none" else frozenset()
        self.absent = frozenset(config.absent)
        self.peers = self._build_peers(identities)
        self.honest = [p.index for p in self.peers if p.index not in self.attackers | self.absent]
        # One rule object per peer: robust rules keep per-peer state (norm history).
        self.rules: list[MergeRule] = [copy.deepcopy(self.rule) for _ in self.peers]
        with torch.random.fork_rng():  # a model to evaluate others' weights in; leaves torch's RNG as it was
            self._scratch = eval_layout(make_model(config, self.data, 0))
        self._noise = np.random.default_rng(config.seed + 7)
        self._setup_attackers()
        self.specs: tuple[TensorSpec, ...] = specs_of(self.peers[0].trainer.state())
        self.fingerprint = fingerprint(self.specs)
        self._by_address = {p.address: p for p in self.peers}
        self._in_flight: dict[tuple[str, str, bool], int] = {}
        for p in self.peers:
            if p.index in self.absent:
                continue
            p.engine = self._engine(p)
            self.network.serve(p.address, p.engine.handle_inbound, self._refusal_counter(p.engine))
            self.clock.at(1.0 / p.speed, lambda p=p: self._step(p))
            # Random phases, as real peers have: no two start their exchanges in lockstep.
            self.clock.at(config.gossip_interval * self.rng.uniform(0.0, 1.0), lambda p=p: self._tick(p))
        for index, down, up in config.churn:
            self.clock.at(down, lambda i=index: self.set_up(i, False))
            self.clock.at(up, lambda i=index: self.set_up(i, True))

    @property
    def now(self) -> float:
        return self.clock.now

    # --- building ------------------------------------------------------------------------------
    def _reputation_config(self) -> ReputationConfig:
        default = ReputationConfig()
        half_life = self.config.reputation_half_life or default.half_life * self.config.gossip_interval
        return dataclasses.replace(default, half_life=half_life, **dict(self.config.reputation_args))

    def _speeds(self) -> list[float]:
        cfg = self.config
        speeds = [cfg.steps_per_second * self.rng.uniform(1 - cfg.speed_spread, 1 + cfg.speed_spread)
                  for _ in range(cfg.peers)]
        slow = random.Random(cfg.seed + 1).sample(range(cfg.peers), round(cfg.slow_fraction * cfg.peers))
        return [s / cfg.slow_factor if i in slow else s for i, s in enumerate(speeds)]

    def _build_peers(self, identities: Sequence[tuple[str, str]] | None) -> list[VirtualPeer]:
        cfg = self.config
        graph = neighbours(cfg.topology, cfg.peers, cfg.degree, self.rng)
        graph = [[j for j in g if j not in cfg.absent] for g in graph]
        speeds = self._speeds()
        peers = []
        for i in range(cfg.peers):
            model = make_model(cfg, self.data, initial_model_seed(cfg, i))
            train, held = split_validation(self.shards[i], cfg.validation_split if cfg.validate else 0.0,
                                           peer_seed(cfg, i))
            self.validation.append(held if len(held) else train)
            trainer = Trainer(model, self.data, train, device=torch.device("cpu"), seed=peer_seed(cfg, i),
                              batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum, eval_every=_NEVER,
                              merge_momentum=cfg.merge_momentum, drift_correction=cfg.drift_correction,
                              lr_schedule=sim_lr_schedule(cfg),
                              clock=lambda: self.clock.now)
            name, addr = identities[i] if identities is not None else ("", "")
            peers.append(VirtualPeer(i, trainer, graph[i], speeds[i], random.Random(peer_seed(cfg, i)),
                                     name=name, addr=addr))
        return peers

    def _engine(self, p: VirtualPeer) -> GossipEngine:
        """The daemon's engine for ``p``, built as ``peer.runtime.node`` builds it (daemon defaults)."""
        cfg = self.config
        membership = StaticMembership(p.address)
        for j in p.neighbours:
            membership.add_seed(self.peers[j].address)
        poisoning = p.index in self.attackers and cfg.attack != "label-flip"
        trainer = PoisoningTrainer(p.trainer, lambda link, p=p: self._poison_for(p, link)) if poisoning else p.trainer
        engine = (AttackerEngine if poisoning else GossipEngine)(
            peer_id=p.peer_id, address=p.address, trainer=trainer, membership=membership,  # type: ignore[arg-type]
            merge_rule=self.rules[p.index], codec=cfg.codec,
            limits=Limits(max_packet_bytes=self.network.max_packet_bytes),
            rng=random.Random(peer_seed(cfg, p.index)), interval=cfg.gossip_interval, timeout=cfg.timeout,
            clock=self.clock, topk_ratio=cfg.topk_ratio, keyframe_codec=cfg.keyframe_codec,
            error_feedback=_DAEMON.error_feedback, max_links=_DAEMON.max_links, small_codec=cfg.small_codec)
        if isinstance(engine, AttackerEngine):
            configure_attacker(engine, cfg.attack)
        reputation = Reputation(self._reputation_config()) if cfg.reputation else None
        engine.defence = _CountingDefence(self, reputation, p.trainer.state)
        engine.fanout = cfg.fanout
        return engine

    def _refusal_counter(self, engine: GossipEngine) -> Callable[[Refusal], None]:
        def refused(error: Refusal) -> None:
            engine.count_rejected(error)
            if isinstance(error, Banned):
                self.stats.dropped += 1  # banned: dropped unread, no reply
            else:
                self.stats.rejected += 1
        return refused

    # --- the network -----------------------------------------------------------------------------
    def _latency(self, _src: str, _dst: str, size: int) -> float:
        cfg = self.config
        jitter = self.rng.uniform(0, cfg.delay_jitter) if cfg.delay_jitter else 0.0
        return cfg.delay + jitter + (size / cfg.bandwidth if cfg.bandwidth else 0.0)

    def _lost(self, _src: str, _dst: str) -> bool:
        return self.config.loss > 0 and self.rng.random() < self.config.loss

    def _observe(self, src: str, dst: str, size: int, reply: bool, event: str) -> None:
        s, d = self._by_address[src], self._by_address[dst]
        key = (src, dst, reply)
        if event == "arrived":
            age = d.trainer.stats().steps - self._in_flight.pop(key, d.trainer.stats().steps)
            self.stats.max_age = max(self.stats.max_age, age)
            return
        self.stats.messages += 1
        self.stats.bytes_sent += size
        self.stats.links[(s.index, d.index)] += 1
        s.bytes_sent += size
        if event == "lost":
            self.stats.lost += 1
        else:
            self._in_flight[key] = d.trainer.stats().steps

    def _merged(self, report: MergeReport) -> None:
        self.stats.merges += 1
        by_id = {p.peer_id: p.index for p in self.peers} | {p.address: p.index for p in self.peers}
        for v in report.verdicts:
            bad = by_id.get(v.sender.split("#", 1)[0], -1) in self.attackers  # rotated identities too
            self.stats.verdicts[(v.kind, bad)] += 1
            if v.kind == "outlier" and v.reason:
                self.stats.refused_by[(v.reason.split(" ", 1)[0], bad)] += 1

    def _poison_for(self, attacker: VirtualPeer, link: str) -> dict[str, np.ndarray]:
        self.stats.poisoned += 1
        return self._poisoned(attacker, self._by_address[link])

    # --- events ----------------------------------------------------------------------------------
    def run_until(self, t: float) -> None:
        """Process every event due at or before virtual time ``t``; then the clock reads ``t``."""
        self.clock.run_until(t)

    def set_up(self, index: int, up: bool) -> None:
        """Crash (``up=False``: no training, no answers) or restart peer ``index`` with the model it had."""
        peer = self.peers[index]
        peer.up = up
        if peer.engine is not None:
            self.network.set_up(peer.address, up)

    def _step(self, peer: VirtualPeer) -> None:
        if peer.up:
            peer.trainer.step()
        self.clock.at(self.clock.now + 1.0 / peer.speed, lambda: self._step(peer))

    def _tick(self, peer: VirtualPeer) -> None:
        j = self.config.jitter
        self.clock.at(self.clock.now + self.config.gossip_interval * self.rng.uniform(1 - j, 1 + j),
                      lambda: self._tick(peer))
        if not peer.up or peer.engine is None:
            return
        self.clock.spawn(peer.engine.gossip_round(self._client(peer)))

    def _client(self, peer: VirtualPeer) -> Callable[[str, Buffer | Sequence[Buffer], float], Awaitable[bytearray]]:
        """The peer's transport, counting the exchanges it starts."""
        send = self.network.client(peer.address)

        async def exchange(dst: str, packet: Buffer | Sequence[Buffer], timeout: float) -> bytearray:
            self.stats.exchanges += 1
            return await send(dst, packet, timeout)
        return exchange

    def exchange(self, initiator: int, partner: int) -> bool:
        """One scripted push-pull from ``initiator`` to ``partner`` now; whether the initiator merged."""
        engine = self.peers[initiator].engine
        assert engine is not None
        member = engine.membership.get(self.peers[partner].address)
        assert member is not None, "partner is not a neighbour"
        return bool(self.clock.run(engine.exchange_with(member, self._client(self.peers[initiator]))))

    # --- observations --------------------------------------------------------------------------
    def accuracies(self) -> np.ndarray:
        """Every peer's test accuracy now (the same held-out set for all)."""
        return np.array([p.trainer.evaluate() for p in self.peers])

    def merged_accuracies(self) -> np.ndarray:
        """Every peer's test accuracy of the model it had right after its latest merge (its
        current model if it never merged): the point at which FedAvg's accuracy is read (the
        aggregate, right after aggregation) and the reference's (right after the exchanges)."""
        out = []
        for p in self.peers:
            defence = p.engine.defence if p.engine is not None else None
            state = defence.merged_state if isinstance(defence, _CountingDefence) else None
            out.append(p.trainer.evaluate() if state is None else self._score(state, p.trainer))
        return np.array(out)

    def average_model_accuracy(self) -> float:
        """Test accuracy of the average of the peers' models now: what FedAvg's aggregate would
        be, were the swarm's models averaged at this instant. Next to the peers' own accuracies
        it splits gossip's gap to FedAvg into progress (this) and each model's own drift from
        that average (the gap between the two); bench/RESULTS.md, issue 11, session 13."""
        states = self.states()
        average = {k: np.mean([np.asarray(s[k], dtype=np.float64) for s in states], axis=0).astype(v.dtype)
                   if np.dtype(v.dtype).kind == "f" else v for k, v in states[0].items()}
        return self._score(average, self.peers[0].trainer)

    def _score(self, state: dict[str, np.ndarray], trainer: Trainer) -> float:
        """Test accuracy of ``state`` on ``trainer``'s held-out set, in a scratch model."""
        self._scratch.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
        return accuracy(self._scratch, trainer.test_x, trainer.test_y)

    def honest_accuracies(self) -> np.ndarray:
        """Test accuracy of every peer that is not an attacker."""
        return np.array([self.peers[i].trainer.evaluate() for i in self.honest])

    def states(self) -> list[dict[str, np.ndarray]]:
        return [p.trainer.state() for p in self.peers]

    def consensus_distance(self) -> float:
        """``sqrt(mean_i ||x_i − x̄||²)`` over all float tensors: 0 when every peer agrees."""
        return consensus_distance(self.states())

    def banned(self, by: int, whom: int) -> bool:
        """Whether peer ``by``'s defence bans peer ``whom`` now."""
        engine = self.peers[by].engine
        return engine is not None and engine.defence.is_banned(self.peers[whom].address)

    def keyframes(self) -> int:
        return sum(p.engine.stats.keyframes_sent for p in self.peers if p.engine is not None)


def consensus_distance(states: Sequence[dict[str, np.ndarray]]) -> float:
    """Root mean squared distance of the models from their average (float tensors only)."""
    total = 0.0
    for name, x0 in states[0].items():
        if np.dtype(x0.dtype).kind != "f":
            continue
        stack = np.stack([np.asarray(s[name], dtype=np.float64) for s in states])
        total += float(((stack - stack.mean(axis=0)) ** 2).sum())
    return math.sqrt(total / len(states))
