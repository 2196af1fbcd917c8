"""Memory plumbing for the fast codecs: flat float32 views, fresh buffers, blocks.

Why these exist (measured on one core, 25M float32):

- Codecs work block by block (``BLOCK`` elements, 1 MiB of float32) so that the
  several elementwise passes a codec needs run on data that sits in cache, and only
  one pass per codec touches main memory.
- Output buffers are allocated by numpy, not torch: numpy asks the kernel for
  transparent huge pages on large allocations, torch does not, and first-touch page
  faults on 4 KiB pages made a fresh 100 MB torch tensor three to four times slower
  to fill than a numpy one.
- Arithmetic runs in torch (wrapping numpy memory without copying), because its
  vectorised float/int8 kernels are several times faster than numpy's for the
  mixed-dtype operations quantisation needs.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import torch

if sys.byteorder != "little":  # pragma: no cover - the wire format is little-endian by definition
    raise ImportError("protocol.codecs' fast paths assume a little-endian host")

# Payload buffers from the network are read-only bytes; we only ever read through the
# tensors that wrap them, so torch's one-time warning about it is noise, not a hazard.
warnings.filterwarnings("ignore", message="The given (NumPy array|buffer) is not writable",
                        category=UserWarning)

BLOCK = 1 << 18


def flat_f32(x: np.ndarray) -> np.ndarray:
    """``x`` as a contiguous 1-D float32 array, copying only when it has to."""
    return np.ascontiguousarray(x, dtype=np.float32).reshape(-1)


def empty(n: int, dtype: type | np.dtype) -> np.ndarray:
    """An uninitialised numpy buffer (huge-page friendly, see the module docstring)."""
    return np.empty(n, dtype=dtype)


def view(a: np.ndarray) -> torch.Tensor:
    """A torch tensor sharing ``a``'s memory (no copy)."""
    return torch.from_numpy(a)


def read(payload: bytes | memoryview, dtype: np.dtype | type, count: int, offset: int = 0) -> torch.Tensor:
    """A read-only torch view of ``count`` items of ``dtype`` in ``payload`` at ``offset``."""
    return torch.from_numpy(np.frombuffer(payload, dtype=dtype, count=count, offset=offset))


def to_dtype(flat: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Reshape a decoded float32 result and convert it to the requested float dtype."""
    out = flat.reshape(shape)
    return out if out.dtype == dtype else out.astype(dtype)
