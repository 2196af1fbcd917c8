"""Many virtual peers in one process, on a virtual clock, running the daemon's protocol code.

Why: the learning-quality questions (does variance correction help? how many rounds
to FedAvg's accuracy?) need dozens of peers and reproducible runs, which real
processes on 2 cores cannot give. The simulator keeps everything that decides the
*numbers* identical to the daemon and replaces only time and the network:

- training: ``peer.trainer.Trainer.step()`` on shards from ``peer.data.partition``,
  models from ``peer.models.build_model`` (the trainer's thread is never started);
- exchanges: push-pull as in ``peer.gossip`` — both sides send the model they had
  before merging, framed by ``protocol.wire.encode_packet`` with a ``protocol.codecs``
  codec and validated by ``decode_packet``;
- partners: ``protocol.sampling.choose_partner`` over the peer's neighbours in the
  configured topology (full, ring, random k-regular);
- merges: ``protocol.merge.merge_received``, the function the daemon calls.

Time is a number. Events (a local step, the start of an exchange, a message arriving)
sit in a heap ordered by (time, sequence), so a run is a pure function of its config
and seed. Messages may be lost (Bernoulli) or delayed (fixed + uniform jitter); each
peer steps at its own speed. A delayed model arrives ``age`` receiver-steps old and
the merge rule may discount it.

Hostile peers (issue 7): ``SimConfig.attack`` and ``attackers`` turn chosen peers into
attackers that follow the protocol (they train, exchange and merge) but send poisoned
models (``ATTACKS``: sign-flip, scaled Gaussian noise, small shift, loss shift) or train
on flipped labels (label-flip). Rules that want several models per merge (``median``,
``trimmed``: ``protocol.merge.merge_batch``) get them buffered per peer, one per
sender, as the daemon must; ``reputation`` adds ``protocol.reputation`` per peer (its
half-life in gossip intervals, as the daemon's); ``validate`` gives rules with a loss
check each peer's validator (``peer.validation``, as the daemon builds it), on its
training shard or on a ``validation_split`` held out of it. ``absent`` leaves peers out
altogether: the control that tells lost data from damage done.
"""

from __future__ import annotations

import copy
import dataclasses
import heapq
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from peer.data import Dataset, load_dataset
from peer.data.partition import dirichlet_partition, partition
from peer.models import build_model
from peer.trainer import Trainer
from peer.validation import Validator, make_validator, split_validation
from protocol import codecs
from protocol.codecs.base import Codec
from protocol.errors import WireError
from protocol.merge import (
    Contribution,
    LossCheck,
    MergeReport,
    MergeRule,
    make_rule,
    merge_batch,
    merge_received_report,
)
from protocol.reputation import Reputation, ReputationConfig
from protocol.stake import Stakes
from protocol.sampling import choose_partner
from protocol.wire import (
    Packet,
    PacketHeader,
    TensorSpec,
    decode_packet,
    encode_packet,
    fingerprint,
    specs_of,
)

TOPOLOGIES = ("full", "ring", "random-regular")
INITS = ("default", "xavier")
# What an attacker does (see Simulator._poisoned): none, or
#   sign-flip    sends −k·(its own model), k = attack_scale (default 2)
#   noise        sends its model + N(0, (s·rms(layer))²) per tensor, s = attack_scale (default 3)
#   label-flip   trains on labels c → C−1−c and sends that model as it is
#   small-shift  sends the victim's own model moved by 0.95 × the victim's clipping bound
#                (clip / bristle rules: their exact current bound; other rules: 2 × the
#                median distance between the victim and the honest peers) along the
#                gradient *ascent* direction of the loss at the victim's weights on the
#                attacker's shard — an omniscient attacker that stays just inside the norm
#   loss-shift   small-shift that also games the victim's loss check (protocol.merge.LossCheck):
#                of the steps 0.95·bound·2^−i (i = 0..12) it sends the one whose rise in the
#                victim's validation loss lets the most through (trust × step), knowing the
#                victim's validation data and current limit — what the loss check cannot stop
#   rotate       sign-flip under a new identity in every packet (no reputation ever catches up)
#   huge-count   sign-flip claiming 2^62 training samples (what weighted averaging trusts)
ATTACKS = ("none", "sign-flip", "noise", "label-flip", "small-shift", "loss-shift", "rotate", "huge-count")
DEFAULT_ATTACK_SCALE = {"sign-flip": 2.0, "noise": 3.0, "small-shift": 0.95, "loss-shift": 0.95, "rotate": 2.0,
                        "huge-count": 2.0}
HUGE_COUNT = 1 << 62
# Trainer.step() evaluates every eval_every steps; the simulator evaluates on its own schedule.
_NEVER = 1 << 62


@dataclass(frozen=True)
class SimConfig:
    """One simulated swarm. Defaults mirror the daemon's (``peer.config.PeerConfig``)."""

    peers: int = 16
    dataset: str = "digits"
    model: str = "mlp"
    split: str = "iid"                  # "iid" or "dirichlet"
    alpha: float = 0.5                  # Dirichlet concentration
    min_shard: int = 10                 # smallest Dirichlet shard accepted (see shards_for)
    topology: str = "full"              # who may be chosen as a partner
    degree: int = 4                     # k of the random k-regular topology
    merge: str = "vc"                   # protocol.merge.RULES name
    codec: str = "fp32"                 # protocol.codecs name for float tensors
    shared_init: bool = False           # every peer starts from the same weights
    init: str = "default"               # "default" (PyTorch's) or "xavier" (uniform, zero bias)
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    steps_per_second: float = 1.0       # local steps per virtual second (mean over peers)
    speed_spread: float = 0.0           # per-peer speed ~ steps_per_second * U(1 - s, 1 + s)
    gossip_interval: float = 10.0       # virtual seconds between the exchanges a peer starts
    jitter: float = 0.0                 # interval ~ gossip_interval * U(1 - j, 1 + j)
    loss: float = 0.0                   # probability that one message is lost
    delay: float = 0.0                  # one-way latency, virtual seconds
    delay_jitter: float = 0.0           # extra latency ~ U(0, delay_jitter)
    seed: int = 0                       # model inits, batch order, partners, loss, delays
    data_seed: int = 0                  # test split and partition (as the daemon's data_seed)
    attack: str = "none"                # one of ATTACKS
    attackers: tuple[int, ...] = ()     # indices of the attacking peers
    attack_scale: float = 0.0           # 0: DEFAULT_ATTACK_SCALE of the attack
    validate: bool = False              # rules with a ``validator`` get the peer's local validation loss
    validation_split: float = 0.0       # with validate: shard fraction held out for it (0: the training shard)
    reputation: bool = False            # per-peer protocol.reputation: ban, drop, skip as partner
    # Reputation's forgiveness half-life in virtual seconds; 0: the daemon's default measured in
    # exchanges (ReputationConfig.half_life s at 1 s per exchange -> that many gossip intervals).
    reputation_half_life: float = 0.0
    absent: tuple[int, ...] = ()        # peers left out of the swarm (a control: their shards unused)

    def check(self) -> SimConfig:
        """Raise ``ValueError`` naming the first field that cannot work."""
        checks = [
            (self.peers >= 2, "peers must be at least 2"),
            (self.topology in TOPOLOGIES, f"topology must be one of {', '.join(TOPOLOGIES)}"),
            (self.init in INITS, f"init must be one of {', '.join(INITS)}"),
            (self.topology != "random-regular" or 1 <= self.degree < self.peers, "degree must be in 1..peers-1"),
            (self.topology != "random-regular" or self.peers * self.degree % 2 == 0, "peers*degree must be even"),
            (self.steps_per_second > 0 and 0 <= self.speed_spread < 1, "speeds must be positive"),
            (self.gossip_interval > 0 and 0 <= self.jitter < 1, "gossip_interval > 0, jitter in [0, 1)"),
            (0 <= self.loss <= 1, "loss must be in [0, 1]"),
            (self.delay >= 0 and self.delay_jitter >= 0, "delays must be non-negative"),
            (self.attack in ATTACKS, f"attack must be one of {', '.join(ATTACKS)}"),
            (all(0 <= a < self.peers for a in self.attackers), "attackers must be peer indices"),
            (len(set(self.attackers)) == len(self.attackers), "attackers must be distinct"),
            (self.attack_scale >= 0 and math.isfinite(self.attack_scale), "attack_scale must be >= 0"),
            (0 <= self.validation_split < 1, "validation_split must be in [0, 1)"),
            (self.reputation_half_life >= 0, "reputation_half_life must be >= 0"),
            (all(0 <= a < self.peers for a in self.absent), "absent must be peer indices"),
            (len(set(self.absent)) + 2 <= self.peers, "at least 2 peers must be present"),
            (not set(self.absent) & set(self.attackers), "a peer cannot be both absent and attacking"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        make_rule(self.merge)
        codecs.get(self.codec)
        return self


# --- topology -----------------------------------------------------------------------------------

def neighbours(topology: str, peers: int, degree: int, rng: random.Random) -> list[list[int]]:
    """Each peer's possible partners: everyone, its two ring neighbours, or a random k-regular graph."""
    if topology == "full":
        return [[j for j in range(peers) if j != i] for i in range(peers)]
    if topology == "ring":
        return [sorted({(i - 1) % peers, (i + 1) % peers} - {i}) for i in range(peers)]
    if topology == "random-regular":
        return random_regular(peers, degree, rng)
    raise ValueError(f"unknown topology {topology!r}")


def random_regular(peers: int, degree: int, rng: random.Random, max_tries: int = 1000) -> list[list[int]]:
    """A random simple k-regular graph (Steger–Wormald pairing: join random free stubs of
    distinct, not yet adjacent peers; start over if only unusable stubs remain)."""
    for _ in range(max_tries):
        graph = _try_pairing(peers, degree, rng)
        if graph is not None:
            return graph
    raise ValueError(f"no simple {degree}-regular graph on {peers} peers found in {max_tries} draws")


def _try_pairing(peers: int, degree: int, rng: random.Random) -> list[list[int]] | None:
    stubs = [i for i in range(peers) for _ in range(degree)]
    adj: list[set[int]] = [set() for _ in range(peers)]
    while stubs:
        pair = _random_pair(stubs, adj, rng)
        if pair is None:
            return None
        a, b = stubs[pair[0]], stubs[pair[1]]
        adj[a].add(b)
        adj[b].add(a)
        for k in sorted(pair, reverse=True):
            stubs.pop(k)
    return [sorted(a) for a in adj]


def _random_pair(stubs: list[int], adj: list[set[int]], rng: random.Random,
                 guesses: int = 64) -> tuple[int, int] | None:
    """Two stub positions of distinct, non-adjacent peers, uniformly; ``None`` if none is left."""
    def usable(x: int, y: int) -> bool:
        return stubs[x] != stubs[y] and stubs[y] not in adj[stubs[x]]

    if len(stubs) < 2:
        return None
    for _ in range(guesses):  # cheap while many stubs are free
        x, y = rng.sample(range(len(stubs)), 2)
        if usable(x, y):
            return x, y
    pairs = [(x, y) for x in range(len(stubs)) for y in range(x + 1, len(stubs)) if usable(x, y)]
    return pairs[rng.randrange(len(pairs))] if pairs else None


# --- building the peers -------------------------------------------------------------------------

def shards_for(data: Dataset, config: SimConfig) -> list[np.ndarray]:
    """The peers' shards, as the daemon computes them (``peer.data.partition``).

    Digits has 1,437 training images; a Dirichlet split over 64 peers cannot give every
    peer the daemon's 10 samples, so ``min_shard`` lowers that floor step by step
    (10, 5, 3, 2, 1) until a split exists; ``shard_floor`` reports which was used.
    """
    if config.split != "dirichlet":
        return partition(data.train_y, config.peers, config.split, config.alpha, config.data_seed)
    return dirichlet_partition(data.train_y, config.peers, config.alpha, config.data_seed,
                               min_size=shard_floor(data, config), max_tries=1000)


def shard_floor(data: Dataset, config: SimConfig) -> int:
    """The largest floor ≤ ``min_shard`` among (10, 5, 3, 2, 1) that admits a Dirichlet split."""
    for floor in [f for f in (10, 5, 3, 2, 1) if f <= config.min_shard] or [1]:
        try:
            dirichlet_partition(data.train_y, config.peers, config.alpha, config.data_seed,
                                min_size=floor, max_tries=1000)
            return floor
        except ValueError:
            continue
    raise ValueError(f"no Dirichlet split of {len(data.train_y)} samples over {config.peers} peers")


def initialise(model: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise weights: ``default`` keeps PyTorch's (Kaiming-uniform); ``xavier``
    sets Glorot-uniform weights and zero biases on every Linear and Conv layer (the
    scheme the vanishing-variance paper reasons about). Uses torch's global generator,
    which the caller seeds."""
    if scheme == "default":
        return model
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def make_model(config: SimConfig, data: Dataset, seed: int) -> nn.Module:
    """A model from the zoo, initialised from ``seed`` (the daemon seeds torch the same way)."""
    torch.manual_seed(seed)
    return initialise(build_model(config.model, data.input_shape, data.num_classes), config.init)


def peer_seed(config: SimConfig, index: int) -> int:
    """Peer ``index``'s seed: distinct per peer, a function of the run's seed only."""
    return config.seed * 100_003 + index


# --- messages and events ------------------------------------------------------------------------

@dataclass(frozen=True)
class Message:
    """A packet in flight. ``receiver_steps`` dates the snapshot in the receiver's steps."""

    src: int
    dst: int
    data: bytes
    reply: bool
    receiver_steps: int


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
    # The largest staleness (receiver steps) a merged model had.
    max_age: int = 0
    # Poisoned packets attackers sent; packets dropped because the sender was banned.
    poisoned: int = 0
    dropped: int = 0
    # Verdicts of the merge rules (ok / clipped / outlier), by (kind, sender was an attacker).
    verdicts: Counter[tuple[str, bool]] = field(default_factory=Counter)
    # Refusals by test ("distance", "validation": the first word of the verdict's reason) and attacker.
    refused_by: Counter[tuple[str, bool]] = field(default_factory=Counter)


@dataclass
class VirtualPeer:
    """One simulated peer: a real Trainer plus what the gossip loop would keep."""

    index: int
    trainer: Trainer
    neighbours: list[int]
    speed: float
    rng: random.Random
    bytes_sent: int = 0

    @property
    def peer_id(self) -> str:
        return f"sim-{self.index}"

    @property
    def address(self) -> str:
        return f"sim:{self.index}"


def choose_codec(codec: Codec) -> Callable[[str, np.ndarray], Codec]:
    """The daemon's choice: the configured codec for floats it supports, ``raw`` otherwise."""
    raw = codecs.get("raw")
    return lambda _name, x: codec if codec.supports(x.dtype) else raw


def own_packet(peer: VirtualPeer, fp: bytes, codec: Codec) -> bytes:
    """The peer's current model framed as ``GossipEngine.own_packet`` frames it."""
    return packet_of(peer, peer.trainer.state(), fp, codec)


def packet_of(peer: VirtualPeer, state: dict[str, np.ndarray], fp: bytes, codec: Codec, sender_id: str = "",
              samples: int | None = None) -> bytes:
    """``state`` framed as coming from ``peer`` (an attacker frames its poisoned model this way,
    possibly under another identity or claiming other samples)."""
    stats = peer.trainer.stats()
    header = PacketHeader(sender_id=sender_id or peer.peer_id, sender_addr=peer.address, fingerprint=fp,
                          model_version=stats.version, age=stats.steps,
                          samples=peer.trainer.samples if samples is None else samples, codec=codec.name)
    return encode_packet(header, state, choose_codec(codec))


def apply_packet(trainer: Trainer, rule: MergeRule, packet: Packet, age: int = 0, sender: str = "") -> MergeReport:
    """Merge a decoded packet into ``trainer`` through the daemon's merge entry point."""
    return apply_models(trainer, rule, [Contribution(packet.tensors, samples=packet.header.samples, age=age,
                                                     sender=sender)])


def apply_models(trainer: Trainer, rule: MergeRule, received: Sequence[Contribution],
                 stakes: Stakes | None = None) -> MergeReport:
    """Merge ``received`` into ``trainer`` at once with ``merge_received_report``, the function the
    daemon's ``peer.defence.Defence.merge`` calls; returns the report (verdicts for reputation).
    ``stakes``: the receiver's books of its senders (protocol/stake.py), applied as the daemon does."""
    reports: list[MergeReport] = []
    claims = {c.sender: c.samples for c in received}
    if stakes is not None:
        received = [stakes.bound(c, trainer.samples) for c in received]

    def merge(current: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        reports.append(merge_received_report(rule, current, trainer.samples, received))
        return reports[-1].tensors

    trainer.merge_with(merge)
    if stakes is not None:
        stakes.observe_verdicts(reports[-1].verdicts, claims)
    return reports[-1]


# --- the simulator ------------------------------------------------------------------------------

@dataclass(order=True)
class _Event:
    time: float
    seq: int
    kind: str = field(compare=False)
    peer: int = field(compare=False)
    message: Message | None = field(compare=False, default=None)


class Simulator:
    """A swarm of ``config.peers`` virtual peers; ``run_until(t)`` advances the virtual clock."""

    def __init__(self, config: SimConfig, data: Dataset | None = None, rule: MergeRule | None = None) -> None:
        """``data`` saves reloading the data set per swarm; ``rule`` overrides ``config.merge``
        with a rule built with non-default parameters (β, ε, ...)."""
        self.config = config.check()
        self.data = data if data is not None else load_dataset(config.dataset, seed=config.data_seed)
        self.rng = random.Random(config.seed)
        self.rule = rule if rule is not None else make_rule(config.merge)
        self.codec = codecs.get(config.codec)
        self.shards = shards_for(self.data, config)
        # Per peer: the indices its validator scores on (held out of training when validation_split > 0).
        self.validation: list[np.ndarray] = []
        self.peers = self._build_peers()
        self.attackers = frozenset(config.attackers) if config.attack != "none" else frozenset()
        self.absent = frozenset(config.absent)
        self.honest = [p.index for p in self.peers if p.index not in self.attackers | self.absent]
        # One rule object per peer: robust rules keep per-peer state (norm history).
        self.rules: list[MergeRule] = [copy.deepcopy(self.rule) for _ in self.peers]
        self.reputations: list[Reputation] | None = (
            [Reputation(self._reputation_config()) for _ in self.peers] if config.reputation else None)
        # Received models waiting for a batch merge, per receiver: sender -> (model, receiver steps at send).
        self._buffers: list[dict[int, tuple[Contribution, int]]] = [{} for _ in self.peers]
        with torch.random.fork_rng():  # a model to evaluate others' weights in; leaves torch's RNG as it was
            self._scratch = make_model(config, self.data, 0)
        self._noise = np.random.default_rng(config.seed + 7)
        self._setup_attackers()
        self._rotations = 0
        # Each peer's books of its senders' claims and earned weight, as the daemon keeps them.
        self.stakes = [Stakes() for _ in self.peers]
        self.specs: tuple[TensorSpec, ...] = specs_of(self.peers[0].trainer.state())
        self.fingerprint = fingerprint(self.specs)
        self.now = 0.0
        self.stats = SimStats()
        self._seq = itertools.count()
        self._events: list[_Event] = []
        for p in self.peers:
            if p.index in self.absent:
                continue
            self._schedule(1.0 / p.speed, "step", p.index)
            # Random phases, as real peers have: no two start their exchanges in lockstep.
            self._schedule(self.config.gossip_interval * self.rng.uniform(0.0, 1.0), "gossip", p.index)

    def _reputation_config(self) -> ReputationConfig:
        default = ReputationConfig()
        half_life = self.config.reputation_half_life or default.half_life * self.config.gossip_interval
        return dataclasses.replace(default, half_life=half_life)

    def _build_peers(self) -> list[VirtualPeer]:
        cfg = self.config
        graph = neighbours(cfg.topology, cfg.peers, cfg.degree, self.rng)
        graph = [[j for j in g if j not in cfg.absent] for g in graph]
        shared = make_model(cfg, self.data, cfg.seed).state_dict() if cfg.shared_init else None
        peers = []
        for i in range(cfg.peers):
            model = make_model(cfg, self.data, peer_seed(cfg, i))
            if shared is not None:
                model.load_state_dict(shared)
            train, held = split_validation(self.shards[i], cfg.validation_split if cfg.validate else 0.0,
                                           peer_seed(cfg, i))
            self.validation.append(held if len(held) else train)
            trainer = Trainer(model, self.data, train, device=torch.device("cpu"), seed=peer_seed(cfg, i),
                              batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum, eval_every=_NEVER)
            speed = cfg.steps_per_second * self.rng.uniform(1 - cfg.speed_spread, 1 + cfg.speed_spread)
            peers.append(VirtualPeer(i, trainer, graph[i], speed, random.Random(peer_seed(cfg, i))))
        return peers

    # --- the event loop ------------------------------------------------------------------------
    def _schedule(self, at: float, kind: str, peer: int, message: Message | None = None) -> None:
        heapq.heappush(self._events, _Event(at, next(self._seq), kind, peer, message))

    def run_until(self, t: float) -> None:
        """Process every event due at or before virtual time ``t``; then the clock reads ``t``."""
        while self._events and self._events[0].time <= t:
            event = heapq.heappop(self._events)
            self.now = event.time
            if event.kind == "step":
                self._step(self.peers[event.peer])
            elif event.kind == "gossip":
                self._start_exchange(self.peers[event.peer])
            else:
                assert event.message is not None
                self._deliver(event.message)
        self.now = t

    def _step(self, peer: VirtualPeer) -> None:
        peer.trainer.step()
        self._schedule(self.now + 1.0 / peer.speed, "step", peer.index)

    def _start_exchange(self, peer: VirtualPeer) -> None:
        j = self.config.jitter
        self._schedule(self.now + self.config.gossip_interval * self.rng.uniform(1 - j, 1 + j), "gossip", peer.index)
        candidates = peer.neighbours
        if self.reputations is not None:
            rep = self.reputations[peer.index]
            candidates = rep.eligible(peer.neighbours, self.now, key=lambda j: self.peers[j].peer_id)
        partner = choose_partner(candidates, peer.rng)
        if partner is None:
            return
        self.stats.exchanges += 1
        self._send(peer, self.peers[partner], reply=False)

    def _send(self, src: VirtualPeer, dst: VirtualPeer, *, reply: bool) -> None:
        if src.index in self.attackers and self.config.attack != "label-flip":
            data = packet_of(src, self._poisoned(src, dst), self.fingerprint, self.codec, **self._claims(src))
            self.stats.poisoned += 1
        else:
            data = own_packet(src, self.fingerprint, self.codec)
        src.bytes_sent += len(data)
        self.stats.bytes_sent += len(data)
        self.stats.messages += 1
        self.stats.links[(src.index, dst.index)] += 1
        if self.config.loss > 0 and self.rng.random() < self.config.loss:
            self.stats.lost += 1
            return
        latency = self.config.delay + (self.rng.uniform(0, self.config.delay_jitter) if self.config.delay_jitter else 0)
        message = Message(src.index, dst.index, data, reply, dst.trainer.stats().steps)
        self._schedule(self.now + latency, "deliver", dst.index, message)

    def _deliver(self, message: Message) -> None:
        dst = self.peers[message.dst]
        src = self.peers[message.src]
        try:
            packet = decode_packet(message.data, expected=self.specs)
        except WireError:
            self.stats.rejected += 1  # the daemon refuses it too: no reply, no merge
            return
        who = packet.header.sender_id  # the identity its connection proves (an attacker may rotate it)
        if self.reputations is not None and self.reputations[dst.index].is_banned(who, self.now):
            self.stats.dropped += 1  # banned: dropped unmerged, no reply
            return
        if not message.reply:
            # Push-pull: answer with the model we had before merging, as GossipEngine does.
            self._send(dst, self.peers[message.src], reply=True)
        received = Contribution(packet.tensors, samples=packet.header.samples, sender=who)
        batch = merge_batch(self.rules[dst.index])
        buffer = self._buffers[dst.index]
        buffer[src.index] = (received, message.receiver_steps)  # one per sender: the newest
        if len(buffer) >= batch:
            self._merge_buffer(dst)

    def _merge_buffer(self, dst: VirtualPeer) -> None:
        """Merge every buffered model into ``dst`` at once, each aged by the receiver's steps since sent."""
        steps = dst.trainer.stats().steps
        buffer = self._buffers[dst.index]
        received = [Contribution(c.tensors, samples=c.samples, age=steps - sent, sender=c.sender)
                    for _, (c, sent) in sorted(buffer.items())]
        buffer.clear()
        report = apply_models(dst.trainer, self.rules[dst.index], received, self.stakes[dst.index])
        self.stats.merges += 1
        self.stats.max_age = max(self.stats.max_age, max(c.age for c in received))
        by_id = {p.peer_id: p.index for p in self.peers}
        for v in report.verdicts:
            bad = by_id.get(v.sender.split("#", 1)[0], -1) in self.attackers
            self.stats.verdicts[(v.kind, bad)] += 1
            if v.kind == "outlier" and v.reason:
                self.stats.refused_by[(v.reason.split(" ", 1)[0], bad)] += 1
        if self.reputations is not None:
            self.reputations[dst.index].observe(report.verdicts, self.now)

    # --- attackers -----------------------------------------------------------------------------
    def _setup_attackers(self) -> None:
        """Label-flip attackers train on ``C − 1 − label``; validators see each peer's validation split."""
        classes = self.data.num_classes
        for i in self.attackers:
            if self.config.attack == "label-flip":
                t = self.peers[i].trainer
                t.train_y = (classes - 1) - t.train_y
        if self.config.validate:
            for p, rule in zip(self.peers, self.rules):
                if hasattr(rule, "validator"):
                    rule.validator = self._validator(p)

    def _validator(self, peer: VirtualPeer) -> Validator:
        """Loss of a model on ``peer``'s validation split (its held-out samples, true labels;
        its training shard when nothing is held out), as the daemon's ``peer.validation``."""
        idx = self.validation[peer.index]
        return make_validator(self._scratch, torch.as_tensor(self.data.train_x[idx]),
                              torch.as_tensor(self.data.train_y[idx]))

    def _claims(self, attacker: VirtualPeer) -> dict:
        """What an attacker's header claims: a fresh identity per packet, or a huge sample count."""
        if self.config.attack == "rotate":
            self._rotations += 1
            return {"sender_id": f"{attacker.peer_id}#{self._rotations}"}
        if self.config.attack == "huge-count":
            return {"samples": HUGE_COUNT}
        return {}

    def _scale(self) -> float:
        return self.config.attack_scale or DEFAULT_ATTACK_SCALE.get(self.config.attack, 1.0)

    def _poisoned(self, attacker: VirtualPeer, victim: VirtualPeer) -> dict[str, np.ndarray]:
        """The model ``attacker`` sends ``victim`` instead of its own (see ``ATTACKS``)."""
        own = attacker.trainer.state()
        kind, k = self.config.attack, self._scale()
        if kind in ("sign-flip", "rotate", "huge-count"):
            return {n: (-k * x).astype(x.dtype) if x.dtype.kind == "f" else x for n, x in own.items()}
        if kind == "noise":
            return {n: (x + k * math.sqrt(float(np.mean(np.square(x, dtype=np.float64)))) *
                        self._noise.standard_normal(x.shape)).astype(x.dtype) if x.dtype.kind == "f" else x
                    for n, x in own.items()}
        if kind in ("small-shift", "loss-shift"):
            target = victim.trainer.state()
            direction = self._ascent(attacker, target)
            r = k * self._victim_bound(victim, target)
            if kind == "loss-shift":
                r = self._most_taken(victim, target, direction, r)
            return _moved(target, direction, r)
        raise ValueError(f"attack {kind!r} sends no poisoned model")

    def _most_taken(self, victim: VirtualPeer, state: dict[str, np.ndarray], direction: dict[str, np.ndarray],
                    r_max: float) -> float:
        """The step along ``direction`` (of ``r_max · 2^−i``, i = 0..12) of which the victim's loss
        check takes the most (``trust × step``); ``r_max`` when the victim has no loss check, 0 when
        no step passes (the attacker then sends the victim's own model and keeps its reputation)."""
        check = getattr(self.rules[victim.index], "loss_check", None)
        if not isinstance(check, LossCheck):
            return r_max
        limit = check.limit()
        steps = [r_max * 0.5 ** i for i in range(13)]
        rises = check.rises(state, [_moved(state, direction, r) for r in steps])
        taken = [(check.trust(rise, limit) * r if rise <= limit else 0.0, r) for rise, r in zip(rises, steps)]
        best, r = max(taken)
        return r if best > 0 else 0.0

    def _victim_bound(self, victim: VirtualPeer, state: dict[str, np.ndarray]) -> float:
        """The victim rule's current clipping/outlier bound, or 2 × its median distance to honest peers."""
        bound = getattr(self.rules[victim.index], "bound", None)
        if callable(bound):
            return float(bound(state))
        from protocol.merge import delta_norm

        dists = [delta_norm(state, self.peers[j].trainer.state()) for j in self.honest if j != victim.index]
        return 2.0 * float(np.median(dists)) if dists else 0.0

    def _ascent(self, attacker: VirtualPeer, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Unit-norm gradient of the loss at ``state`` on the attacker's shard (true labels)."""
        model = self._scratch
        model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
        model.train()
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(attacker.trainer.train_x), attacker.trainer.train_y).backward()
        grads = {n: p.grad.detach().numpy().astype(np.float64) for n, p in model.named_parameters()
                 if p.grad is not None}
        norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
        return {n: g / norm for n, g in grads.items()} if norm > 0 else {}

    # --- observations --------------------------------------------------------------------------
    def accuracies(self) -> np.ndarray:
        """Every peer's test accuracy now (the same held-out set for all)."""
        return np.array([p.trainer.evaluate() for p in self.peers])

    def honest_accuracies(self) -> np.ndarray:
        """Test accuracy of every peer that is not an attacker."""
        return np.array([self.peers[i].trainer.evaluate() for i in self.honest])

    def states(self) -> list[dict[str, np.ndarray]]:
        return [p.trainer.state() for p in self.peers]

    def consensus_distance(self) -> float:
        """``sqrt(mean_i ||x_i − x̄||²)`` over all float tensors: 0 when every peer agrees."""
        return consensus_distance(self.states())


def _moved(state: dict[str, np.ndarray], direction: dict[str, np.ndarray], r: float) -> dict[str, np.ndarray]:
    """``state + r · direction`` on the tensors ``direction`` has (the parameters)."""
    return {n: (x + r * direction[n]).astype(x.dtype) if n in direction else x for n, x in state.items()}


def consensus_distance(states: Sequence[dict[str, np.ndarray]]) -> float:
    """Root mean squared distance of the models from their average (float tensors only)."""
    total = 0.0
    for name, x0 in states[0].items():
        if np.dtype(x0.dtype).kind != "f":
            continue
        stack = np.stack([np.asarray(s[name], dtype=np.float64) for s in states])
        total += float(((stack - stack.mean(axis=0)) ** 2).sum())
    return math.sqrt(total / len(states))
