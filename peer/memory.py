"""Process memory policy: large buffers go back to the operating system when freed.

An exchange allocates model-sized buffers (a packet being reassembled, a fresh copy of
the model, a merge's output) and frees them a moment later. glibc serves allocations
above its mmap threshold with ``mmap`` and unmaps them on ``free``; but the threshold
is dynamic — after the first model-sized block is freed it rises to that block's size
(up to 32 MiB), and from then on such blocks come from the heap, where freed memory
stays resident and fragments. A peer's resident memory then ratchets up exchange after
exchange. Pinning the threshold (which also turns the dynamic adjustment off) keeps
every large block mmapped: freed means returned. Measured with ``bench.transport
--quick``: the answering peer's peak RSS over its baseline fell from 8.6x to 5.8x the
model.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD_BYTES = 256 << 10


def return_large_blocks(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Pin glibc's mmap threshold at ``threshold`` bytes; False where that is not possible
    (another C library): the peer runs the same, only its resident memory may ratchet."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, threshold))
    if not ok:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused; keeping the C library's default")
    return ok
