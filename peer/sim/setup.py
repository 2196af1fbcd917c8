"""Building a simulated swarm: who may talk to whom, who holds which shard, initial weights."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from peer.data import Dataset
from peer.data.partition import dirichlet_partition, partition
from peer.models import build_model
from peer.runtime.config import cluster_init_seed
from peer.runtime.lr_schedule import LrSchedule
from peer.sim.config import SimConfig

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


def initial_model_seed(config: SimConfig, index: int) -> int:
    """Peer ``index``'s initial-model seed, derived as the daemon derives it
    (``peer.runtime.node.build_trainer_and_validation``): with ``shared_init`` the cluster's
    seed (``init = shared``), otherwise the peer's own (``init = own``)."""
    return cluster_init_seed(config.cluster) if config.shared_init else peer_seed(config, index)


def peer_seed(config: SimConfig, index: int) -> int:
    """Peer ``index``'s seed: distinct per peer, a function of the run's seed only."""
    return config.seed * 100_003 + index



def sim_lr_schedule(cfg: SimConfig) -> LrSchedule | None:
    """The daemon's learning-rate schedule on the virtual clock: every virtual peer starts
    training at time 0, so the horizon is the virtual time the rate reaches its floor."""
    if cfg.lr_schedule == "constant":
        return None
    return LrSchedule(cfg.lr_schedule, end=cfg.lr_horizon, floor=cfg.lr_floor)
