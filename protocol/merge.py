"""Merge rules: how a peer combines its model with models it received.

A rule is a pure function of the local model and the received ones. Which
tensors take part is decided here, once: floating-point tensors are merged;
integer tensors (counters such as BatchNorm's ``num_batches_tracked``) stay local.

Rules, by registry name (``make_rule(name)`` builds each with its defaults):

- ``mean``: plain average, every model counts the same.
- ``weighted``: average weighted by sample count and freshness (FedAvg's weights,
  with stale models discounted).
- ``vc``, ``vc-self``, ``vc-blend``: variance-corrected averaging ("Vanishing Variance
  Problem in Fully Decentralized Neural-Network Systems", Tian et al. 2024). Averaging
  models that started from independent initialisations shrinks each layer's weight
  variance (two uncorrelated layers averaged have half the variance); the correction
  rescales every weight layer of the average back to a target variance. The three
  names differ only in the target: the received models' variance ("follow others",
  the paper's choice), the local model's, or a β-blend of both.

Every merge — in the daemon and in the simulator — goes through ``merge_received``,
so both produce bit-identical weights for the same inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

Tensors = Mapping[str, np.ndarray]

# A received model's weight is multiplied by DEFAULT_DECAY ** age: half weight after
# ~34 of the receiver's local steps. Fresh models (age 0, the daemon's synchronous
# push-pull) are not discounted at all.
DEFAULT_DECAY = 0.98
# Paper's value: the local model and the received ones count half each.
DEFAULT_BETA = 0.5
# Keeps the rescale finite for constant layers; far below any trained layer's variance
# (float32 weights of a layer with fan-in 10^4 have variance ~10^-4).
DEFAULT_EPS = 1e-8

# Buffers that hold statistics of activations, not weights: they are averaged but
# never rescaled (their spread says nothing about initialisation).
_STAT_SUFFIXES = ("running_mean", "running_var")


@dataclass(frozen=True)
class Contribution:
    """One model taking part in a merge, with what its weight may depend on."""

    tensors: Tensors
    # Training samples behind the model (its shard size).
    samples: int = 1
    # How many of the receiver's local steps old the model is (0 = fresh).
    age: int = 0


def is_mergeable(x: np.ndarray) -> bool:
    """Floating tensors are averaged; integer counters and flags keep the local value."""
    return np.dtype(x.dtype).kind == "f"


def is_variance_corrected(name: str, x: np.ndarray, *, include_biases: bool = False) -> bool:
    """Whether the variance correction rescales tensor ``name``.

    Weight matrices and conv kernels (rank >= 2) are corrected: their variance is
    what Xavier/Kaiming initialisation sets and what averaging uncorrelated models
    shrinks. Never corrected: integer tensors, 0-d scalars, and BatchNorm running
    statistics. Rank-1 tensors (biases, norm affine parameters) only with
    ``include_biases`` and only when named ``*bias``: Xavier initialises biases to
    zero, so there is no "optimal variance" for them to keep, and rescaling a
    near-constant vector mostly amplifies noise. Measured (``python -m bench.learning
    --quick --ablate``, 16 peers, MLP, iid): correcting biases too changes nothing
    (12 rounds to 95 % of FedAvg's accuracy either way), so the default stays off.
    """
    if not is_mergeable(x) or x.ndim == 0 or x.size < 2 or name.endswith(_STAT_SUFFIXES):
        return False
    if x.ndim >= 2:
        return True
    return include_biases and name.endswith("bias")


class MergeRule(Protocol):
    """Combine ``local`` with ``received`` into a new model with the same tensors."""

    name: str

    def merge(self, local: Contribution, received: Sequence[Contribution]) -> dict[str, np.ndarray]:
        ...


def _check_weights(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero: {list(weights)}")
    return w / w.sum()


def weighted_average(models: Sequence[Tensors], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Per-tensor ``Σ w_i x_i`` with weights normalised to sum to one.

    Non-mergeable tensors are taken from ``models[0]`` (by convention the local model).
    Accumulates in float64 so the order of inputs changes nothing beyond rounding.
    """
    if not models or len(models) != len(weights):
        raise ValueError("need one weight per model and at least one model")
    w = _check_weights(weights)
    out: dict[str, np.ndarray] = {}
    for name, x0 in models[0].items():
        if not is_mergeable(x0):
            out[name] = np.array(x0, copy=True)
            continue
        out[name] = _accumulate(models, w, name).astype(x0.dtype, copy=False)
    return out


def _accumulate(models: Sequence[Tensors], w: np.ndarray, name: str) -> np.ndarray:
    acc = np.zeros(np.shape(models[0][name]), dtype=np.float64)
    for wi, m in zip(w, models):
        acc += wi * np.asarray(m[name], dtype=np.float64)
    return acc


def freshness(age: int, decay: float) -> float:
    """``decay ** age``: how much a model ``age`` steps old still counts (1 when fresh)."""
    return float(decay) ** max(int(age), 0)


def contribution_weights(models: Sequence[Contribution], decay: float = DEFAULT_DECAY) -> np.ndarray:
    """Normalised weights ∝ samples · decay^age: more data counts more, staleness less."""
    return _check_weights([max(c.samples, 1) * freshness(c.age, decay) for c in models])


class MeanRule:
    """Plain average: every model counts the same."""

    name = "mean"

    def merge(self, local: Contribution, received: Sequence[Contribution]) -> dict[str, np.ndarray]:
        models = [local, *received]
        return weighted_average([c.tensors for c in models], [1.0] * len(models))


class WeightedRule:
    """Average weighted by sample count (FedAvg's weights) and freshness (``decay ** age``)."""

    name = "weighted"

    def __init__(self, decay: float = DEFAULT_DECAY) -> None:
        _check_unit("decay", decay, open_low=True)
        self.decay = decay

    def merge(self, local: Contribution, received: Sequence[Contribution]) -> dict[str, np.ndarray]:
        models = [local, *received]
        return weighted_average([c.tensors for c in models], contribution_weights(models, self.decay))


# --- variance-corrected averaging --------------------------------------------------------------

Target = Literal["others", "self", "blend"]


def _check_unit(what: str, value: float, *, open_low: bool = False) -> None:
    low_ok = value > 0 if open_low else value >= 0
    if not (math.isfinite(value) and low_ok and value <= 1):
        raise ValueError(f"{what} must be in {'(0' if open_low else '[0'}, 1], got {value}")


def vc_mixing_weights(local: Contribution, received: Sequence[Contribution], beta: float,
                      decay: float = DEFAULT_DECAY) -> np.ndarray:
    """Weights of ``[local, *received]`` in the variance-corrected average; they sum to one.

    The local model keeps ``β``; the received models share ``1 − β`` in proportion to
    samples · decay^age. Staleness also shrinks that share as a whole: it is scaled by
    the received models' mean freshness (weighted by samples), and the local model takes
    up the rest — with one received model, normalising alone would make its age moot.
    Fresh models get exactly the paper's ``β`` / ``1 − β``.
    """
    if not received:
        return np.ones(1)
    samples = np.array([max(c.samples, 1) for c in received], dtype=np.float64)
    fresh = np.array([freshness(c.age, decay) for c in received], dtype=np.float64)
    share = (1.0 - beta) * float((samples * fresh).sum() / samples.sum())
    inner = samples * fresh / (samples * fresh).sum()
    return np.concatenate([[1.0 - share], share * inner])


def target_variance(local_var: float, received_vars: np.ndarray, received_w: np.ndarray,
                    target: Target, beta: float) -> float:
    """The variance a corrected layer is rescaled to.

    ``others``: the received models' variances, averaged with their mixing weights (the
    paper's (1/K)·Σ Var(W_k) when the weights are equal); ``self``: the local model's;
    ``blend``: ``β·self + (1 − β)·others``.
    """
    others = float(np.dot(received_w, received_vars))
    if target == "others":
        return others
    if target == "self":
        return float(local_var)
    return beta * float(local_var) + (1.0 - beta) * others


def rescale_to_variance(x: np.ndarray, target: float, eps: float) -> np.ndarray:
    """``(x − mean)·sqrt((target + ε)/(Var(x) + ε)) + mean``: same mean, variance ≈ target."""
    mean = float(x.mean())
    scale = math.sqrt((target + eps) / (float(x.var()) + eps))
    return (x - mean) * scale + mean


class VarianceCorrectedRule:
    """Per-layer variance-corrected average (DESIGN.md, "Variance-corrected averaging").

    For every tensor: ``W̄ = β·W_self + (1−β)·Σ_k w_k W_k`` (``vc_mixing_weights``); for
    weight tensors (``is_variance_corrected``) the average is then rescaled around its
    mean to the target variance (``target_variance``). Everything else is the plain
    ``W̄`` (biases, BatchNorm statistics, 0-d floats) or stays local (integer counters).

    ``beta`` (default 0.5, the paper's) is the local model's share; ``eps`` (1e-8)
    keeps the rescale finite; ``decay`` (0.98) discounts stale models;
    ``include_biases`` (False) extends the correction to rank-1 ``*bias`` tensors.
    ε must stay far below every layer's variance: at ε = 1e-3 (the MLP's weight
    variances are ~5e-3) the correction is damped and gossip needed 17 rounds instead
    of 12 in the ablation; β in [0.5, 0.75] made no difference, 0.25 was slightly slower.
    """

    name = "vc"
    target: Target = "others"

    def __init__(self, beta: float = DEFAULT_BETA, eps: float = DEFAULT_EPS, decay: float = DEFAULT_DECAY,
                 include_biases: bool = False) -> None:
        _check_unit("beta", beta)
        _check_unit("decay", decay, open_low=True)
        if not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be finite and non-negative, got {eps}")
        self.beta = beta
        self.eps = eps
        self.decay = decay
        self.include_biases = include_biases

    def merge(self, local: Contribution, received: Sequence[Contribution]) -> dict[str, np.ndarray]:
        w = vc_mixing_weights(local, received, self.beta, self.decay)
        models = [c.tensors for c in (local, *received)]
        received_w = w[1:] / w[1:].sum() if received else w[1:]
        out: dict[str, np.ndarray] = {}
        for name, x0 in local.tensors.items():
            if not is_mergeable(x0):
                out[name] = np.array(x0, copy=True)
                continue
            avg = _accumulate(models, w, name)
            if received and is_variance_corrected(name, x0, include_biases=self.include_biases):
                variances = np.array([np.var(np.asarray(m[name], dtype=np.float64)) for m in models[1:]])
                local_var = float(np.var(np.asarray(x0, dtype=np.float64)))
                sigma2 = target_variance(local_var, variances, received_w, self.target, self.beta)
                avg = rescale_to_variance(avg, sigma2, self.eps)
            out[name] = avg.astype(x0.dtype, copy=False)
        return out


class VarianceCorrectedSelfRule(VarianceCorrectedRule):
    """Variance-corrected average that keeps the local model's per-layer variance."""

    name = "vc-self"
    target: Target = "self"


class VarianceCorrectedBlendRule(VarianceCorrectedRule):
    """Variance-corrected average whose target is ``β·Var(self) + (1 − β)·Var(others)``."""

    name = "vc-blend"
    target: Target = "blend"


RULES: dict[str, type[MergeRule]] = {
    "mean": MeanRule,
    "weighted": WeightedRule,
    "vc": VarianceCorrectedRule,
    "vc-self": VarianceCorrectedSelfRule,
    "vc-blend": VarianceCorrectedBlendRule,
}


def make_rule(name: str) -> MergeRule:
    """The merge rule called ``name``; ``ValueError`` listing the known ones otherwise."""
    try:
        return RULES[name]()
    except KeyError:
        raise ValueError(f"unknown merge rule {name!r}; known: {', '.join(sorted(RULES))}") from None


def merge_received(rule: MergeRule, local_state: Tensors, local_samples: int,
                   received: Sequence[Contribution]) -> dict[str, np.ndarray]:
    """Merge ``received`` models into ``local_state`` with ``rule``: the one merge entry point.

    The daemon (``peer.gossip``) and the simulator (``peer.sim``) both call this, so a
    test can show they produce the same weights by construction, not by copy.
    """
    return rule.merge(Contribution(local_state, samples=local_samples, age=0), received)
