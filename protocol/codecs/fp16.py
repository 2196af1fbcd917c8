"""``fp16``: floats rounded to IEEE half precision (2x smaller, relative error <= 2**-11).

Finite values beyond half's range saturate at +-65504 instead of becoming infinite,
because an infinity would make the receiver refuse the whole packet; a delta that
large is a bug upstream, a keyframe that large is a model fp16 cannot carry and
should use ``fp32``. NaN stays NaN and is refused by the receiver's finiteness check.
"""

from __future__ import annotations

import numpy as np
import torch

from protocol.codecs import blocks
from protocol.codecs.base import Encoded, Params
from protocol.codecs.checks import expect_keys, expect_length, float_dtype, numel

FP16_MAX = float(np.finfo(np.float16).max)


class Fp16Codec:
    """IEEE half precision, round to nearest; no parameters."""

    name = "fp16"

    def supports(self, dtype: np.dtype) -> bool:
        return np.dtype(dtype).kind == "f"

    def encode(self, x: np.ndarray) -> Encoded:
        src = blocks.view(blocks.flat_f32(x))
        out = blocks.empty(src.numel(), np.float16)
        dst = blocks.view(out)
        tmp = torch.empty(min(blocks.BLOCK, src.numel()))
        # Clamp then narrow, block by block, so the clamped copy never leaves the cache.
        for start in range(0, src.numel(), blocks.BLOCK):
            part = src[start:start + blocks.BLOCK]
            clamped = torch.clamp(part, -FP16_MAX, FP16_MAX, out=tmp[:part.numel()])
            dst[start:start + part.numel()].copy_(clamped)
        return Encoded(out.tobytes())

    def decode(self, payload: bytes | memoryview, shape: tuple[int, ...], dtype: np.dtype,
               params: Params) -> np.ndarray:
        expect_keys(self.name, params, ())
        dtype = float_dtype(self.name, dtype)
        n = numel(shape)
        expect_length(self.name, payload, 2 * n, shape)
        out = blocks.empty(n, np.float32)
        blocks.view(out).copy_(blocks.read(payload, np.float16, n))
        return blocks.to_dtype(out, shape, dtype)
