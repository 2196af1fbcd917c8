"""``randk``: a random subset of a delta whose positions are derived from a shared seed.

Only the seed travels, not the indices, so an entry costs its four value bytes and
nothing else. The subset is stratified: the tensor is cut into ``k`` equal strata and
one position is drawn in each, so positions are distinct and sorted (cheap, cache
friendly gathers and scatters) and every element is picked with probability ~k/n.
Values are not rescaled by n/k: under error feedback a contractive compressor
(``E||x - C(x)||^2 = (1 - k/n) ||x||^2``) is what converges; rescaling would make
it unbiased but expansive.

Positions come from a splitmix64 hash of (seed, stratum) in pure integer
arithmetic, so every peer computes the same ones regardless of library versions.
Params: ``k`` and ``seed``. Payload: ``k`` float32 values.
"""

from __future__ import annotations

import numpy as np

from protocol.codecs import blocks, sparse
from protocol.codecs.base import Encoded, Params, SparseTensor
from protocol.codecs.checks import SEED_LIMIT, expect_keys, expect_length, float_dtype, int_param, numel
from protocol.codecs.noise import SeededFloatCodec, splitmix64, splitmix64_array


def positions(seed: int, k: int, n: int) -> np.ndarray:
    """The sorted, distinct int64 positions that ``seed`` picks: one in each of ``k`` strata."""
    if k == 0:
        return np.empty(0, np.int64)
    j = np.arange(k, dtype=np.int64)
    lo = j * n // k
    span = (j + 1) * n // k - lo  # >= 1 because k <= n
    h = splitmix64_array(j.astype(np.uint64) ^ np.uint64(splitmix64(seed)))
    return lo + (h % span.astype(np.uint64)).astype(np.int64)


class RandKCodec(SeededFloatCodec):
    """A ``ratio`` fraction of the entries at seed-derived positions, values as float32."""

    name = "randk"

    def __init__(self, ratio: float = 0.01, seed: int | None = None) -> None:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        self.ratio = ratio
        super().__init__(seed)

    def encode(self, x: np.ndarray, *, seed: int | None = None) -> Encoded:
        seed = self._seed(seed)
        src = blocks.flat_f32(x)
        k = sparse.count_for(self.ratio, src.size)
        return Encoded(src[positions(seed, k, src.size)].tobytes(), {"k": k, "seed": seed})

    def decode(self, payload: bytes | memoryview, shape: tuple[int, ...], dtype: np.dtype,
               params: Params) -> np.ndarray:
        return self.decode_sparse(payload, shape, dtype, params).dense()

    def decode_sparse(self, payload: bytes | memoryview, shape: tuple[int, ...], dtype: np.dtype,
                      params: Params) -> SparseTensor:
        expect_keys(self.name, params, ("k", "seed"))
        dtype = float_dtype(self.name, dtype)
        n = numel(shape)
        k = int_param(self.name, params, "k", 0, n)
        seed = int_param(self.name, params, "seed", 0, SEED_LIMIT - 1)
        expect_length(self.name, payload, 4 * k, shape)
        values = np.frombuffer(payload, np.float32, k)
        return SparseTensor(tuple(shape), dtype, positions(seed, k, n), values.astype(dtype))
