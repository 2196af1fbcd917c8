"""Selecting the largest entries fast: a sampled threshold instead of a sort.

An exact ``torch.topk`` over 25M elements runs at ~0.4 GB/s on one core. Deep
Gradient Compression's observation is that the k-th largest magnitude can be
estimated from a small random sample: one pass then compares every element with
that threshold. The estimate makes the count approximate (a few percent off k);
when it overshoots, or the data has ties (a delta of exact zeros, say), the
candidate set is cut back to exactly ``k`` by their own k-th magnitude, and from then
on only strictly larger elements are admitted, which keeps memory at ``O(k)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from protocol.codecs import blocks

SAMPLE_FRACTION = 0.01
MIN_SAMPLE = 8192
# The sample should hold this many of the top k, so that the count lands within a few
# percent of k (its relative error is about 1 / sqrt of this); the sample grows for a
# small k, up to a quarter of the tensor.
MIN_SAMPLED_TOP = 256
# Below this size a plain exact topk is as fast as sampling and always exact.
EXACT_BELOW = 1 << 16
# The candidate set may grow to this multiple of k before it is cut back to k.
SLACK = 1.25


def count_for(ratio: float, n: int) -> int:
    """How many of ``n`` elements a ``ratio`` keeps: at least one of a non-empty tensor."""
    return min(n, max(1, math.ceil(ratio * n))) if n else 0


def _cut(src: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Exactly the ``k`` largest of the candidates ``idx`` (order kept) and their k-th
    magnitude; ties at that magnitude are broken by position."""
    mags = np.abs(src[idx])
    kth = float(torch.topk(torch.from_numpy(mags), k, sorted=False).values.min())
    above = mags > kth
    at = mags == kth
    room = k - int(np.count_nonzero(above))
    at &= np.cumsum(at) <= room
    return idx[above | at], kth


def _threshold(src: np.ndarray, k: int, seed: int) -> float:
    """The k-th largest magnitude, estimated from a stratified sample: one random element
    in each of ``m`` equal strata, so the sample is spread over the whole tensor (no
    aliasing with row lengths) and its positions are sorted (gathered in one forward
    sweep instead of ``m`` cache misses; measured 4x faster than uniform positions)."""
    n = src.size
    m = min(n // 4, max(MIN_SAMPLE, int(n * SAMPLE_FRACTION), MIN_SAMPLED_TOP * n // k))
    stride = n // m
    where = np.random.default_rng(seed).integers(0, stride, m)
    where += np.arange(0, m * stride, stride)
    sample = torch.from_numpy(np.abs(src[where]))
    return float(torch.topk(sample, max(1, round(k * m / n)), sorted=False).values.min())


def select(src: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Sorted int64 positions of (about) the ``k`` largest magnitudes in flat float32
    ``src``: never more than ``SLACK * k`` of them, and the largest ones are never missed
    by more than the threshold estimate's error."""
    n = src.size
    if k >= n:
        return np.arange(n)
    if k == 0:
        return np.empty(0, np.int64)
    if n < EXACT_BELOW:
        return np.sort(torch.topk(torch.from_numpy(np.abs(src)), k, sorted=False).indices.numpy())
    threshold = _threshold(src, k, seed)
    # A zero threshold means fewer than ~k nonzeros: keep exactly the nonzeros.
    strict = threshold == 0.0
    tmp = np.empty(min(blocks.BLOCK, n), np.float32)
    mask = np.empty(tmp.shape, np.bool_)
    found: list[np.ndarray] = []
    count = 0
    # numpy, not torch, for this scan: torch's nonzero was 3x slower than flatnonzero here.
    for start in range(0, n, blocks.BLOCK):
        part = src[start:start + blocks.BLOCK]
        mags = np.abs(part, out=tmp[:part.size])
        hit = mask[:part.size]
        (np.greater if strict else np.greater_equal)(mags, threshold, out=hit)
        where = np.flatnonzero(hit)
        if where.size:
            where += start
            found.append(where)
            count += where.size
        if count > SLACK * k:
            kept, threshold = _cut(src, np.concatenate(found), k)
            found, count, strict = [kept], kept.size, True
    return np.concatenate(found) if found else np.empty(0, np.int64)
