"""Per-tensor codec choice: compress the big tensors, send the small ones exactly.

Biases, norm scales and other small tensors are a negligible share of the bytes but
sensitive to error (a quantised LayerNorm gain perturbs every activation after it),
and a sparse or chunked codec has fixed overheads that dominate on a few hundred
elements. So below ``min_elements`` a float tensor goes dense ``fp32``; a tensor the
chosen codec cannot carry (integer counters, booleans) goes ``raw``, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocol.codecs.base import Codec
from protocol.codecs.identity import Fp32Codec, RawCodec

# 4096 elements = 16 KiB of float32: a 64x64 matrix is compressed, any bias vector of a
# layer narrower than 4096 units is not.
MIN_ELEMENTS = 4096


@dataclass(frozen=True)
class SizeAdaptive:
    """``codec`` for float tensors of at least ``min_elements``; exact codecs otherwise."""

    codec: Codec
    min_elements: int = MIN_ELEMENTS
    dense: Codec = Fp32Codec()
    exact: Codec = RawCodec()

    @property
    def name(self) -> str:
        """The policy's name for packet headers and logs: that of its main codec."""
        return self.codec.name

    def __call__(self, name: str, x: np.ndarray) -> Codec:
        dtype = np.dtype(x.dtype)
        if dtype.kind != "f":
            return self.exact
        if x.size < self.min_elements or not self.codec.supports(dtype):
            return self.dense
        return self.codec
