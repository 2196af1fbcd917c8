"""Splitting training indices across peers: IID, or label-skewed by Dirichlet(α).

Every peer computes the same partition from the same seed and keeps its own shard,
so no coordinator is needed and shards never overlap.
"""

from __future__ import annotations

import numpy as np


def iid_partition(n: int, shards: int, seed: int) -> list[np.ndarray]:
    """A random permutation of ``range(n)`` cut into ``shards`` near-equal parts."""
    if shards < 1 or n < shards:
        raise ValueError(f"cannot split {n} samples into {shards} shards")
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, shards)]


def dirichlet_partition(labels: np.ndarray, shards: int, alpha: float, seed: int,
                        min_size: int = 10, max_tries: int = 100) -> list[np.ndarray]:
    """Label-skewed shards: each class is split across shards by proportions ~ Dir(α).

    Small α gives each shard a few dominant classes. Draws are repeated until every
    shard holds at least ``min_size`` samples (the usual practice since Hsu et al. 2019),
    so no peer is left with nothing to train on.
    """
    if alpha <= 0:
        raise ValueError("alpha must be positive")
    if shards < 1 or len(labels) < shards * min_size:
        raise ValueError(f"cannot split {len(labels)} samples into {shards} shards of >= {min_size}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(shards)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(shards, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for s, chunk in enumerate(np.split(idx, cuts)):
                parts[s].append(chunk)
        result = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(r) for r in result) >= min_size:
            return result
    raise ValueError(f"no Dirichlet(alpha={alpha}) split with >= {min_size} samples per shard "
                     f"in {max_tries} draws; use a larger alpha or fewer shards")


def partition(labels: np.ndarray, shards: int, scheme: str, alpha: float, seed: int) -> list[np.ndarray]:
    """The shards for ``scheme`` ('iid' or 'dirichlet')."""
    if scheme == "iid":
        return iid_partition(len(labels), shards, seed)
    if scheme == "dirichlet":
        return dirichlet_partition(labels, shards, alpha, seed)
    raise ValueError(f"unknown partition scheme {scheme!r}")
