"""The simulator's configuration (``peer.sim.swarm``): one simulated swarm, checked before it runs."""

from __future__ import annotations

import math
from dataclasses import dataclass

from peer.runtime.config import KEYFRAME_CODECS, LR_SCHEDULES, MERGE_MOMENTUM, SMALL_CODECS, PeerConfig
from protocol import codecs
from protocol.merge import make_rule

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
    """One simulated swarm. Defaults mirror the daemon's (``peer.runtime.config.PeerConfig``)."""

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
    topk_ratio: float = PeerConfig.topk_ratio  # share of coordinates a top-k / rand-k delta keeps
    # The daemon's keyframe_codec and small_codec: how a link's first (whole) model travels, and
    # the deltas of tensors under 4096 elements. At 64 peers a peer starts 63 links, and on a
    # small model the small tensors are a fixed cost of every delta, so both show in bytes/round.
    keyframe_codec: str = PeerConfig.keyframe_codec
    small_codec: str = PeerConfig.small_codec
    # Every peer starts from the same weights, seeded from ``cluster`` as the daemon's
    # init=shared does (peer.sim.setup.initial_model_seed). Off by default here, unlike the
    # daemon, so the learning benchmarks and tests keep measuring independent starts too.
    shared_init: bool = False
    cluster: str = "default"            # the daemon's default cluster name
    init: str = "default"               # "default" (PyTorch's) or "xavier" (uniform, zero bias)
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    merge_momentum: str = PeerConfig.merge_momentum  # keep or reset SGD momentum at a merge (the daemon's)
    drift_correction: float = PeerConfig.drift_correction  # gain of the daemon's drift correction (0: off)
    # The daemon's lr_schedule; the horizon in virtual seconds from the start (every virtual
    # peer starts training at once), lr_floor a fraction of lr.
    lr_schedule: str = PeerConfig.lr_schedule
    lr_horizon: float = 0.0
    lr_floor: float = PeerConfig.lr_floor
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
    # Other ReputationConfig fields set otherwise than the daemon's defaults, as (name, value)
    # pairs (bench/byzantine.py's variants, e.g. ("stand_out", inf): session 10's weighting).
    reputation_args: tuple[tuple[str, float], ...] = ()
    absent: tuple[int, ...] = ()        # peers left out of the swarm (a control: their shards unused)
    # Issue 11: the daemon's mixing modes and a clock with compute, links and churn.
    fanout: int = 1                     # exchanges a peer starts per gossip interval; > 1: Epidemic Learning
    #                                     (every model received since the last merge merged at once)
    timeout: float = 5.0                # gossip timeout (virtual s): a lost message costs this long
    bandwidth: float = 0.0              # bytes per virtual second of every link (0: unlimited)
    slow_fraction: float = 0.0          # this fraction of the peers (chosen by the seed) computes ...
    slow_factor: float = 1.0            # ... this many times slower (stragglers)
    # Crash/rejoin schedule: (peer, down at, up again at) in virtual seconds; a peer down neither
    # trains nor answers, and comes back with the model it had (a restart from its checkpoint).
    churn: tuple[tuple[int, float, float], ...] = ()

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
            (self.fanout >= 1, "fanout must be at least 1"),
            (0 <= self.drift_correction <= 1, "drift_correction must be in [0, 1]"),
            (self.keyframe_codec in KEYFRAME_CODECS, f"keyframe_codec must be one of {', '.join(KEYFRAME_CODECS)}"),
            (self.small_codec in SMALL_CODECS, f"small_codec must be one of {', '.join(SMALL_CODECS)}"),
            (self.merge_momentum in MERGE_MOMENTUM, f"merge_momentum must be one of {', '.join(MERGE_MOMENTUM)}"),
            (self.lr_schedule in LR_SCHEDULES and 0 <= self.lr_floor <= 1
             and (self.lr_schedule == "constant" or self.lr_horizon > 0),
             f"lr_schedule must be one of {', '.join(LR_SCHEDULES)} (annealing: lr_horizon > 0, lr_floor in [0, 1])"),
            (self.timeout > 0 and self.bandwidth >= 0, "timeout must be positive, bandwidth non-negative"),
            (0 <= self.slow_fraction <= 1 and self.slow_factor >= 1, "slow_fraction in [0, 1], slow_factor >= 1"),
            (all(0 <= p < self.peers and 0 <= a <= b for p, a, b in self.churn), "churn: (peer, down, up) with down <= up"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        make_rule(self.merge)
        codecs.get(self.codec)
        if not 0 < self.topk_ratio <= 1:
            raise ValueError("topk_ratio in (0, 1]")
        return self

