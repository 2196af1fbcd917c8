"""Averaging: the weighted average every rule ends in, and the two plain rules.

- ``mean``: plain average, every model counts the same (senders still earning their stake
  count less: ``Contribution.stake``).
- ``weighted``: average weighted by sample count and age (FedAvg's weights, with stale
  models discounted: ``age_discount``).

The averages are computed a chunk at a time in float64 (``MERGE_CHUNK``); the
variance-corrected rules (``protocol.merge.variance``) reuse the same chunked sums.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from protocol.merge.base import DEFAULT_DECAY, Contribution, Tensors, _check_unit, is_mergeable, register


def _check_weights(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero: {list(weights)}")
    return w / w.sum()


def weighted_average(models: Sequence[Tensors], weights: Sequence[float], out: Tensors | None = None
                     ) -> dict[str, np.ndarray]:
    """Per-tensor ``Σ w_i x_i`` with weights normalised to sum to one.

    Non-mergeable tensors are taken from ``models[0]`` (by convention the local model).
    Accumulates in float64 so the order of inputs changes nothing beyond rounding.
    ``out``: writable arrays (``models[0]``'s own, say) the result is written into, in place.
    """
    if not models or len(models) != len(weights):
        raise ValueError("need one weight per model and at least one model")
    w = _check_weights(weights)
    result: dict[str, np.ndarray] = {}
    for name, x0 in models[0].items():
        into = None if out is None else out[name]
        if not is_mergeable(x0):
            result[name] = keep(x0, into)
            continue
        result[name] = _accumulate(models, w, name, into)
    return result


def keep(x0: np.ndarray, into: np.ndarray | None) -> np.ndarray:
    """A tensor that is not merged: ``x0`` itself, copied (or into ``into``, unless it is ``x0``)."""
    if into is None:
        return np.array(x0, copy=True)
    if into is not x0:
        into[...] = x0
    return into


def write_target(into: np.ndarray | None, x0: np.ndarray) -> np.ndarray:
    """Where a merged tensor is written a chunk at a time: ``into`` itself when its elements
    can be addressed flat (in place: each chunk of it is written only after that chunk of
    every input was read, so ``into`` may be an input), else a new array (``written`` copies it)."""
    if (into is not None and into.shape == x0.shape and into.dtype == x0.dtype and into.flags.c_contiguous
            and into.flags.writeable):
        return into
    return np.empty(x0.shape, dtype=x0.dtype)


def written(into: np.ndarray | None, merged: np.ndarray) -> np.ndarray:
    """``merged`` as the result, copied into ``into`` if it was not written there already."""
    if into is None or into is merged:
        return merged
    into[...] = merged
    return into


# Elements per chunk of a merge's float64 work. A layer is combined a chunk at a time, so
# the temporaries are a few MiB instead of several float64 copies of the layer (25M
# parameters: the vc merge's peak fell from ~2x the model to ~1.1x, its output), with the
# same float64 arithmetic, hence the same float32 results up to the last bit of a sum's order.
MERGE_CHUNK = 1 << 18


def _chunks(n: int) -> Iterator[slice]:
    return (slice(i, min(i + MERGE_CHUNK, n)) for i in range(0, n, MERGE_CHUNK))


def _flats(models: Sequence[Tensors], name: str) -> list[np.ndarray]:
    return [np.asarray(m[name]).reshape(-1) for m in models]


def _weighted_chunk(flats: Sequence[np.ndarray], w: np.ndarray, part: slice) -> np.ndarray:
    """``Σ w_i x_i`` over one chunk, in float64."""
    acc = np.multiply(flats[0][part], w[0], dtype=np.float64)
    for wi, f in zip(w[1:], flats[1:]):
        acc += np.multiply(f[part], wi, dtype=np.float64)
    return acc


def _accumulate(models: Sequence[Tensors], w: np.ndarray, name: str, into: np.ndarray | None = None
                ) -> np.ndarray:
    """``Σ w_i x_i`` of tensor ``name``, computed in float64, returned in its own dtype
    (written into ``into`` when given, which may be one of the inputs: ``write_target``)."""
    x0 = np.asarray(models[0][name])
    flats = _flats(models, name)
    out = write_target(into, x0)
    flat_out = out.reshape(-1)
    for part in _chunks(x0.size):
        flat_out[part] = _weighted_chunk(flats, w, part)
    return written(into, out)


def toward(local: Tensors, other: Tensors, share: float) -> dict[str, np.ndarray]:
    """``local + share · (other − local)`` on floating tensors; the rest stays local."""
    out: dict[str, np.ndarray] = {}
    for name, x0 in local.items():
        if not is_mergeable(x0):
            out[name] = np.array(x0, copy=True)
            continue
        x0f = np.asarray(x0, dtype=np.float64)
        out[name] = (x0f + share * (np.asarray(other[name], dtype=np.float64) - x0f)).astype(x0.dtype)
    return out


def age_discount(age: int, decay: float) -> float:
    """``decay ** age``: how much a model ``age`` steps old still counts (1 when fresh)."""
    return float(decay) ** max(int(age), 0)


def contribution_weights(models: Sequence[Contribution], decay: float = DEFAULT_DECAY) -> np.ndarray:
    """Normalised weights ∝ samples · stake · decay^age: more data counts more, staleness less."""
    return _check_weights([max(c.samples, 1) * c.weight * c.stake * age_discount(c.age, decay) for c in models])


@register
class MeanRule:
    """Plain average: every model counts the same."""

    name = "mean"
    merges_in_place = True

    def merge(self, local: Contribution, received: Sequence[Contribution], out: Tensors | None = None
              ) -> dict[str, np.ndarray]:
        models = [local, *received]
        return weighted_average([c.tensors for c in models], [1.0] + [c.stake for c in received], out)


@register
class WeightedRule:
    """Average weighted by sample count (FedAvg's weights) and age (``age_discount``: ``decay ** age``)."""

    name = "weighted"
    merges_in_place = True

    def __init__(self, decay: float = DEFAULT_DECAY) -> None:
        _check_unit("decay", decay, open_low=True)
        self.decay = decay

    def merge(self, local: Contribution, received: Sequence[Contribution], out: Tensors | None = None
              ) -> dict[str, np.ndarray]:
        models = [local, *received]
        return weighted_average([c.tensors for c in models], contribution_weights(models, self.decay), out)
