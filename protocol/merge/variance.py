"""Variance-corrected averaging: ``vc``, ``vc-self``, ``vc-blend``.

"Vanishing Variance Problem in Fully Decentralized Neural-Network Systems" (Tian et al.
2024): averaging models that started from independent initialisations shrinks each
layer's weight variance (two uncorrelated layers averaged have half the variance); the
correction rescales every weight layer of the average back to a target variance. The
three rules differ only in the target: the received models' variance ("follow others",
the paper's choice), the local model's, or a β-blend of both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import numpy as np

from protocol.merge.averaging import (_accumulate, _chunks, _flats, _weighted_chunk, age_discount, keep, write_target,
                                     written)
from protocol.merge.base import (
    DEFAULT_BETA,
    DEFAULT_DECAY,
    Contribution,
    Tensors,
    _check_unit,
    is_mergeable,
    register,
)

# Keeps the rescale finite for constant layers; far below any trained layer's variance
# (float32 weights of a layer with fan-in 10^4 have variance ~10^-4).
DEFAULT_EPS = 1e-8

# Buffers that hold statistics of activations, not weights: they are averaged but
# never rescaled (their spread says nothing about initialisation).
_STAT_SUFFIXES = ("running_mean", "running_var")


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


def _mean_var(chunks: Callable[[], Iterator[np.ndarray]], n: int) -> tuple[float, float]:
    """Mean and (population) variance of ``n`` values given as float64 chunks, two passes."""
    mean = sum(float(c.sum()) for c in chunks()) / n
    squares = 0.0
    for c in chunks():
        c -= mean
        # einsum, not np.dot: dot hands vectors to multithreaded BLAS, whose threads, on a
        # loaded 2-core machine, made this 6 ms a call (half of a simulated swarm's time).
        squares += float(np.einsum("i,i->", c, c))
    return mean, squares / n


def variance(x: np.ndarray) -> float:
    """Population variance of ``x`` in float64, a chunk at a time (no float64 copy of ``x``)."""
    flat = np.asarray(x).reshape(-1)
    if flat.size == 0:
        return float("nan")
    return _mean_var(lambda: (flat[p].astype(np.float64) for p in _chunks(flat.size)), flat.size)[1]


def _rescaled_average(models: Sequence[Tensors], w: np.ndarray, name: str, variance_target: float,
                      eps: float, into: np.ndarray | None = None) -> np.ndarray:
    """``rescale_to_variance(Σ w_i x_i, target, eps)`` without the float64 average in memory:
    its mean and variance are taken over chunks, then each chunk is recomputed and rescaled
    (and written into ``into`` when given, which may be one of the inputs: each chunk is
    written after it was recomputed, and no chunk is read again)."""
    x0 = np.asarray(models[0][name])
    flats = _flats(models, name)

    def chunks() -> Iterator[np.ndarray]:
        return (_weighted_chunk(flats, w, part) for part in _chunks(x0.size))

    mean, var = _mean_var(chunks, x0.size)
    scale = math.sqrt((variance_target + eps) / (var + eps))
    out = write_target(into, x0)
    flat_out = out.reshape(-1)
    for part, c in zip(_chunks(x0.size), chunks()):
        c -= mean
        c *= scale
        c += mean
        flat_out[part] = c
    return written(into, out)



Target = Literal["others", "self", "blend"]


def received_share(k: int, beta: float) -> float:
    """The share of the average ``k`` fresh received models of established senders take together.

    ``β`` is the local model's share against *one* received model (the paper's merge of
    two); against ``k`` the local model counts as ``β / (1 − β)`` received models, so each
    model keeps the weight it has in a merge of two: ``k(1 − β) / (β + k(1 − β))``. With the
    paper's β = 1/2 that is Epidemic Learning's ``1/(k + 1)`` for every one of the ``k + 1``
    models (de Vos et al. 2023); a fixed ``1 − β`` would leave the local model half of the
    average however many models arrived, and fanout 2 mixed more slowly than fanout 1
    (bench/RESULTS.md, "Fanout weighting"). ``k = 1`` gives exactly ``1 − β``.
    """
    if k <= 0:
        return 0.0
    return k * (1.0 - beta) / (beta + k * (1.0 - beta))


def vc_mixing_weights(local: Contribution, received: Sequence[Contribution], beta: float,
                      decay: float = DEFAULT_DECAY, *, fixed_share: bool = False) -> np.ndarray:
    """Weights of ``[local, *received]`` in the variance-corrected average; they sum to one.

    The ``K`` received models share ``received_share(K, β)`` (``1 − β`` for one model; each
    of the ``K + 1`` models ``1/(K + 1)`` at β = 1/2: a batch of Epidemic Learning), in
    proportion to samples · decay^age; the local model keeps the rest. Staleness also
    shrinks that share as a whole: it is scaled by the received models' mean age discount
    (``age_discount``, weighted by samples), and the local model takes up the rest — with
    one received model, normalising alone would make its age moot. The senders' stakes
    (``Contribution.stake``) scale the share the same way. One fresh model of an
    established sender gets exactly the paper's ``β`` / ``1 − β``.

    ``fixed_share``: the received models share ``1 − β`` however many there are — for the
    robust rules, which promise that one merge moves the local model at most ``(1 − β)·τ``.
    """
    if not received:
        return np.ones(1)
    samples = np.array([max(c.samples, 1) * c.weight for c in received], dtype=np.float64)
    discount = np.array([age_discount(c.age, decay) for c in received], dtype=np.float64)
    stake = np.array([min(max(c.stake, 0.0), 1.0) for c in received], dtype=np.float64)
    k = 1 if fixed_share else len(received)
    share = received_share(k, beta) * float((samples * discount * stake).sum() / samples.sum())
    inner = samples * discount / (samples * discount).sum()
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


@register
class VarianceCorrectedRule:
    """Per-layer variance-corrected average (DESIGN.md, "Variance-corrected averaging").

    For every tensor: ``W̄ = β_K·W_self + (1−β_K)·Σ_k w_k W_k`` (``vc_mixing_weights``: β_K = β
    for one received model, the local model's equal share 1/(K+1) of a batch of K at β = 1/2); for
    weight tensors (``is_variance_corrected``) the average is then rescaled around its
    mean to the target variance (``target_variance``). Everything else is the plain
    ``W̄`` (biases, BatchNorm statistics, 0-d floats) or stays local (integer counters).

    ``beta`` (default 0.5, the paper's) is the local model's share; ``eps`` (1e-8)
    keeps the rescale finite; ``decay`` (0.98) discounts stale models;
    ``include_biases`` (False) extends the correction to rank-1 ``*bias`` tensors;
    ``fixed_share`` (False) keeps the received models' share at ``1 − β`` in a batch too
    (``vc_mixing_weights``; the robust rules' inner merge, which bounds each merge's move).
    ε must stay far below every layer's variance: at ε = 1e-3 (the MLP's weight
    variances are ~5e-3) the correction is damped and gossip needed 17 rounds instead
    of 12 in the ablation; β in [0.5, 0.75] made no difference, 0.25 was slightly slower.
    """

    name = "vc"
    target: Target = "others"
    merges_in_place = True

    def __init__(self, beta: float = DEFAULT_BETA, eps: float = DEFAULT_EPS, decay: float = DEFAULT_DECAY,
                 include_biases: bool = False, fixed_share: bool = False) -> None:
        _check_unit("beta", beta)
        _check_unit("decay", decay, open_low=True)
        if not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be finite and non-negative, got {eps}")
        self.beta = beta
        self.eps = eps
        self.decay = decay
        self.include_biases = include_biases
        self.fixed_share = fixed_share

    def merge(self, local: Contribution, received: Sequence[Contribution], out: Tensors | None = None
              ) -> dict[str, np.ndarray]:
        """The merged model; written into ``out``'s arrays when given (``local.tensors``' own
        arrays, say: merged in place, a tensor at a time, with the same bits)."""
        w = vc_mixing_weights(local, received, self.beta, self.decay, fixed_share=self.fixed_share)
        models = [c.tensors for c in (local, *received)]
        received_w = w[1:] / w[1:].sum() if received else w[1:]
        trust = float(np.dot(received_w, [min(max(c.stake, 0.0), 1.0) for c in received])) if received else 1.0
        result: dict[str, np.ndarray] = {}
        for name, x0 in local.tensors.items():
            into = None if out is None else out[name]
            if not is_mergeable(x0):
                result[name] = keep(x0, into)
                continue
            if received and is_variance_corrected(name, x0, include_biases=self.include_biases) and x0.size:
                variances = np.array([variance(m[name]) for m in models[1:]])
                sigma2 = target_variance(variance(x0), variances, received_w, self.target, self.beta)
                # Senders still earning their stake set the target only in proportion to it:
                # a stranger's model must not dictate our layers' variance either.
                sigma2 = (1.0 - trust) * variance(x0) + trust * sigma2
                result[name] = _rescaled_average(models, w, name, sigma2, self.eps, into)
            else:
                result[name] = _accumulate(models, w, name, into)
        return result


@register
class VarianceCorrectedSelfRule(VarianceCorrectedRule):
    """Variance-corrected average that keeps the local model's per-layer variance."""

    name = "vc-self"
    target: Target = "self"


@register
class VarianceCorrectedBlendRule(VarianceCorrectedRule):
    """Variance-corrected average whose target is ``β·Var(self) + (1 − β)·Var(others)``."""

    name = "vc-blend"
    target: Target = "blend"

