"""Process memory policy: an operator's choice between resident memory and speed.

An exchange allocates model-sized buffers (a packet being reassembled, a fresh copy of
the model, a merge's output) and frees them a moment later. glibc serves allocations
above its mmap threshold with ``mmap`` and unmaps them on ``free``; but the threshold
is dynamic — after the first model-sized block is freed it rises to that block's size
(up to 32 MiB), and from then on such blocks come from the heap, where freed memory
stays resident for reuse. Pinning the threshold (which also turns the adjustment off)
keeps every large block mmapped: freed means returned, and the peak is lower — but
every new block is page-faulted afresh, which on a virtual machine is expensive.

Measured with ``python -m bench.transport`` (25M parameters, bench/RESULTS.md): pinned
at 256 KiB the answering peer's peak RSS over its baseline was 4.25x the model instead
of 6.51x, but merges took 1.03 s instead of 0.22 s and delta exchanges ran at 0.38/s
instead of 1.51/s. So the default leaves glibc alone, and ``HEARSAY_MMAP_THRESHOLD``
(bytes) pins it where memory is tighter than time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def return_large_blocks(threshold: int | None = None) -> bool:
    """Pin glibc's mmap threshold at ``threshold`` bytes (default: the environment's
    ``HEARSAY_MMAP_THRESHOLD``; unset or 0 leaves glibc's dynamic threshold alone).
    Returns whether a threshold was pinned (False also under another C library)."""
    if threshold is None:
        raw = os.environ.get("HEARSAY_MMAP_THRESHOLD", "").strip()
        try:
            threshold = int(raw) if raw else 0
        except ValueError:
            log.warning("HEARSAY_MMAP_THRESHOLD=%r is not a number of bytes; ignored", raw)
            return False
    if threshold <= 0:
        return False
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
