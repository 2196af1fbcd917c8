"""Merge rules: how a peer combines its model with models it received.

A rule is a pure function of the local model and the received ones. Which
tensors take part is decided here, once: floating-point tensors are merged;
integer tensors (counters such as BatchNorm's ``num_batches_tracked``) stay local.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

Tensors = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Contribution:
    """One model taking part in a merge, with what its weight may depend on."""

    tensors: Tensors
    # Training samples behind the model (its shard size).
    samples: int = 1
    # How many local steps old the model is relative to the receiver (0 = fresh).
    age: int = 0


def is_mergeable(x: np.ndarray) -> bool:
    """Floating tensors are averaged; integer counters and flags keep the local value."""
    return np.dtype(x.dtype).kind == "f"


class MergeRule(Protocol):
    """Combine ``local`` with ``received`` into a new model with the same tensors."""

    name: str

    def merge(self, local: Contribution, received: Sequence[Contribution]) -> dict[str, np.ndarray]:
        ...


def weighted_average(models: Sequence[Tensors], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Per-tensor ``Σ w_i x_i`` with weights normalised to sum to one.

    Non-mergeable tensors are taken from ``models[0]`` (by convention the local model).
    Accumulates in float64 so the order of inputs changes nothing beyond rounding.
    """
    if not models or len(models) != len(weights):
        raise ValueError("need one weight per model and at least one model")
    w = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero: {list(weights)}")
    w = w / w.sum()
    out: dict[str, np.ndarray] = {}
    for name, x0 in models[0].items():
        if not is_mergeable(x0):
            out[name] = np.array(x0, copy=True)
            continue
        acc = np.zeros(x0.shape, dtype=np.float64)
        for wi, m in zip(w, models):
            acc += wi * m[name]
        out[name] = acc.astype(x0.dtype, copy=False)
    return out


class MeanRule:
    """Plain average: every model counts the same."""

    name = "mean"

    def merge(self, local: Contribution, received: Sequence[Contribution]) -> dict[str, np.ndarray]:
        models = [local, *received]
        return weighted_average([c.tensors for c in models], [1.0] * len(models))


class WeightedRule:
    """Average weighted by sample count: a peer with more data counts more (FedAvg's weights)."""

    name = "weighted"

    def merge(self, local: Contribution, received: Sequence[Contribution]) -> dict[str, np.ndarray]:
        models = [local, *received]
        return weighted_average([c.tensors for c in models], [max(c.samples, 1) for c in models])


RULES: dict[str, type[MergeRule]] = {"mean": MeanRule, "weighted": WeightedRule}


def make_rule(name: str) -> MergeRule:
    """The merge rule called ``name``; ``ValueError`` listing the known ones otherwise."""
    try:
        return RULES[name]()
    except KeyError:
        raise ValueError(f"unknown merge rule {name!r}; known: {', '.join(sorted(RULES))}") from None
