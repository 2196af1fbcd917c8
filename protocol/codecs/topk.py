"""``topk`` and ``topk_int8``: the largest-magnitude entries of a delta, and where they are.

Top-k keeps magnitudes, not the largest signed values (p2pfl's mistake: a large
negative update is as important as a large positive one), and is biased on its own;
it is meant to run under ``protocol.feedback``, whose per-link replica carries what
was not sent into the next delta (EF21 / CHOCO). ``decode`` returns the dense tensor,
zero where nothing was sent; ``decode_sparse`` the entries and their positions
(``SparseTensor``), which a receiver adds to its replica in place.

Payload: the values section, then the index block (``protocol.codecs.indices``).
Values are float32 for ``topk``; for ``topk_int8`` they are quantised like the
``int8`` codec (chunked scales, stochastic rounding), so an entry costs about one
byte of value plus one to two bytes of index instead of eight.
Params: ``k`` (entries sent), ``iw`` (index gap width), ``il`` (index block length),
and for quantised values ``c`` (chunk) and ``seed``.
"""

from __future__ import annotations

import numpy as np

from protocol.codecs import blocks, indices, quant, sparse
from protocol.codecs.base import Encoded, Params, SparseTensor
from protocol.codecs.checks import SEED_LIMIT, expect_keys, expect_length, float_dtype, int_param, numel
from protocol.codecs.noise import SeededFloatCodec
from protocol.errors import MalformedPacket


class TopKCodec(SeededFloatCodec):
    """The ``ratio`` fraction of largest magnitudes, values as float32 or quantised.

    ``levels=None`` sends float32 values; otherwise values are quantised with
    ``levels`` in chunks of ``chunk``.
    """

    def __init__(self, name: str, ratio: float = 0.01, levels: quant.Levels | None = None,
                 chunk: int = 256, seed: int | None = None) -> None:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        if levels is not None and not (quant.MIN_CHUNK <= chunk <= quant.MAX_CHUNK and chunk % 2 == 0):
            raise ValueError(f"chunk must be even and in [{quant.MIN_CHUNK}, {quant.MAX_CHUNK}], got {chunk}")
        self.name = name
        self.ratio = ratio
        self.levels = levels
        self.chunk = chunk
        super().__init__(seed)

    def _keys(self) -> tuple[str, ...]:
        return ("k", "iw", "il") if self.levels is None else ("k", "iw", "il", "c", "seed")

    def _values_bytes(self, k: int, chunk: int) -> int:
        return 4 * k if self.levels is None else self.levels.payload_bytes(k, chunk)

    def encode(self, x: np.ndarray, *, seed: int | None = None) -> Encoded:
        seed = self._seed(seed)
        src = blocks.flat_f32(x)
        where = sparse.select(src, sparse.count_for(self.ratio, src.size), seed)
        values = src[where]
        blob, width = indices.encode(where)
        k = where.size
        params: Params = {"k": k, "iw": width, "il": len(blob)}
        if self.levels is None:
            head = values.tobytes()
        else:
            buf = blocks.empty(self.levels.payload_bytes(k, self.chunk), np.uint8)
            quant.quantise(blocks.view(values), self.chunk, self.levels, seed, buf)
            head = buf.tobytes()
            params.update(c=self.chunk, seed=seed)
        return Encoded(head + blob, params)

    def decode(self, payload: bytes | memoryview, shape: tuple[int, ...], dtype: np.dtype,
               params: Params) -> np.ndarray:
        return self.decode_sparse(payload, shape, dtype, params).dense()

    def decode_sparse(self, payload: bytes | memoryview, shape: tuple[int, ...], dtype: np.dtype,
                      params: Params) -> SparseTensor:
        expect_keys(self.name, params, self._keys())
        dtype = float_dtype(self.name, dtype)
        n = numel(shape)
        k = int_param(self.name, params, "k", 0, n)
        width = int_param(self.name, params, "iw", 1, 4)
        blob_len = int_param(self.name, params, "il", 0, len(payload))
        chunk = 0
        if self.levels is not None:
            chunk = int_param(self.name, params, "c", quant.MIN_CHUNK, quant.MAX_CHUNK)
            int_param(self.name, params, "seed", 0, SEED_LIMIT - 1)
            if chunk % 2:
                raise MalformedPacket(f"codec {self.name!r}: chunk length {chunk} must be even")
        head = self._values_bytes(k, chunk)
        expect_length(self.name, payload, head + blob_len, shape)
        where = indices.decode(memoryview(payload)[head:], k, width, n)
        if self.levels is None:
            values = np.frombuffer(payload, np.float32, k)
        else:
            values = quant.dequantise(payload, 0, k, chunk, self.levels)
        return SparseTensor(tuple(shape), dtype, where, np.asarray(values, np.float32).astype(dtype))

def topk(ratio: float = 0.01, seed: int | None = None) -> TopKCodec:
    return TopKCodec("topk", ratio, None, seed=seed)


def topk_int8(ratio: float = 0.01, chunk: int = 256, seed: int | None = None) -> TopKCodec:
    return TopKCodec("topk_int8", ratio, quant.INT8, chunk, seed)
