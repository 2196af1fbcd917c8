"""Cheap randomness for stochastic rounding and random-k: seeds and a noise table.

Drawing a fresh uniform float per element costs more than the quantisation itself,
so the quantisers read their rounding noise from a precomputed table instead. The
table is a random permutation of the grid ``(j + 0.5) / PERIOD``, repeated; every
block of a tensor reads it at an offset derived from the call's seed. Whatever the
offset, each element sees one grid point, and over uniformly random offsets every
grid point is equally likely, so each element's noise is uniform on the grid and
the rounding is unbiased up to ``1 / (2 * PERIOD)`` of a quantisation step. Only the
encoder ever needs noise; the seed travels in the codec params for reproducibility.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import torch

from protocol.codecs.blocks import BLOCK

PERIOD = 1 << 15
_MASK = (1 << 64) - 1
# A fixed seed: the table is a constant of the algorithm, not a secret or a state.
_TABLE_SEED = 0x5EED_7AB1E


def splitmix64(x: int) -> int:
    """A well-mixed 64-bit hash of ``x`` (the splitmix64 finaliser)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def splitmix64_array(x: np.ndarray) -> np.ndarray:
    """``splitmix64`` elementwise on a uint64 array (wrapping arithmetic, no Python loop)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


class SeedStream:
    """Distinct per-call seeds for one codec instance, safe to use from several threads.

    ``next`` on an ``itertools.count`` is atomic in CPython, so no lock is needed.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._base = int.from_bytes(os.urandom(8), "little") if seed is None else seed
        self._counter = itertools.count()

    def next(self) -> int:
        return splitmix64(self._base ^ splitmix64(next(self._counter))) >> 1  # 63 bits


class SeededFloatCodec:
    """The common part of the codecs that draw random numbers (stochastic rounding,
    sampled positions): they take floating-point tensors, and each call uses a fresh
    seed of the codec's stream unless the caller names one. The seed travels in the
    packet's params, so the receiver never needs the stream."""

    def __init__(self, seed: int | None = None) -> None:
        self._seeds = SeedStream(seed)

    def supports(self, dtype: np.dtype) -> bool:
        return np.dtype(dtype).kind == "f"

    def _seed(self, seed: int | None) -> int:
        return self._seeds.next() if seed is None else seed


def block_offset(seed: int, block: int) -> int:
    """Where block ``block`` of a call seeded ``seed`` starts reading the noise table."""
    return splitmix64(seed ^ (block * 0x2545F4914F6CDD1D & _MASK)) % PERIOD


class NoiseTable:
    """Uniform noise on ``[bias, bias + 1)`` for blocks of up to ``BLOCK`` elements.

    ``bias`` folds the quantiser's zero point into the table so that scaling, shifting
    and adding noise are one fused ``addcmul``. With ``PERIOD = 2**15`` and a bias below
    256 every table value is exact in float32 (their spacing, 2**-16, is the float32
    resolution just below 256).
    """

    def __init__(self, bias: float) -> None:
        rng = np.random.default_rng(_TABLE_SEED)
        grid = (rng.permutation(PERIOD).astype(np.float64) + 0.5) / PERIOD + bias
        reps = (BLOCK + PERIOD) // PERIOD + 1
        self.values = torch.from_numpy(np.tile(grid.astype(np.float32), reps))

    def at(self, seed: int, block: int, count: int) -> torch.Tensor:
        """``count`` noise values for block ``block`` of the call seeded ``seed``."""
        start = block_offset(seed, block)
        return self.values[start:start + count]
