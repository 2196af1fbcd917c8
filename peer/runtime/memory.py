"""Process memory policy: malloc arenas, and an operator's choice between resident memory and speed.

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

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

# Malloc arenas by default (HEARSAY_MALLOC_ARENAS; 0: glibc's own, 8 per core). An exchange's
# steps run in worker threads (asyncio.to_thread), and glibc gives threads their own arenas:
# each arena then keeps its own freed temporaries resident, so one exchange's transient
# memory is held several times over. Measured (python -m bench.transport --quick, 20 MB
# model, bench/RESULTS.md "Memory an exchange adds"): a push-pull over the steady state
# added 1.88x the model with glibc's arenas and 1.08x with one, at no loss of delta
# exchanges per second. Python's own small objects do not go through malloc's arenas,
# and torch's tensors are few and large, so one arena costs little contention.
DEFAULT_ARENAS = 1


def _mallopt(param: int, value: int) -> bool:
    """glibc's ``mallopt(param, value)``; False under another C library or when refused."""
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
    return bool(mallopt(param, value))


def _env_bytes(name: str, default: int) -> int | None:
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        log.warning("%s=%r is not a number; ignored", name, raw)
        return None


def return_large_blocks(threshold: int | None = None) -> bool:
    """Pin glibc's mmap threshold at ``threshold`` bytes (default: the environment's
    ``HEARSAY_MMAP_THRESHOLD``; unset or 0 leaves glibc's dynamic threshold alone).
    Returns whether a threshold was pinned (False also under another C library)."""
    if threshold is None:
        threshold = _env_bytes("HEARSAY_MMAP_THRESHOLD", 0)
    if threshold is None or threshold <= 0:
        return False
    ok = _mallopt(_M_MMAP_THRESHOLD, threshold)
    if not ok:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused; keeping the C library's default")
    return ok


def limit_arenas(count: int | None = None) -> bool:
    """Let glibc make at most ``count`` malloc arenas (default: ``HEARSAY_MALLOC_ARENAS``, or
    ``DEFAULT_ARENAS``; 0 leaves glibc's own limit). Call it before threads start: a thread
    that already has an arena keeps it. Returns whether a limit was set."""
    if count is None:
        count = _env_bytes("HEARSAY_MALLOC_ARENAS", DEFAULT_ARENAS)
    if count is None or count <= 0:
        return False
    return _mallopt(_M_ARENA_MAX, count)


# The heap an exchange may keep for the next one (HEARSAY_HEAP_KEEP, bytes; 0: glibc's dynamic
# thresholds). glibc starts with blocks of 128 KiB and more mmapped and a heap trimmed as soon
# as 128 KiB lie free at its top, raising both only as blocks are freed; an exchange's buffers
# (a keyframe's copy of the model, frames, gRPC's slices) then kept coming from fresh memory,
# faulted in a 4 KiB page at a time. Measured in one process (20 MB model, thread CPU time,
# load 8-12, bench/RESULTS.md "Session 6: the keyframe path"): a keyframe's copy of the model 15.4 ms
# -> 2.9 ms, framing 3.9 -> 2.6 ms, decoding 3.3 -> 2.2 ms. The cost: up to this many bytes
# of freed heap stay resident between exchanges (reused by the next one).
DEFAULT_HEAP_KEEP = 64 << 20


def keep_heap(keep: int | None = None) -> bool:
    """Serve blocks below half of ``keep`` bytes from the heap and keep up to ``keep`` bytes
    of it free for reuse (default ``HEARSAY_HEAP_KEEP``, or ``DEFAULT_HEAP_KEEP``; 0 leaves
    glibc's dynamic thresholds). Half is glibc's own largest dynamic mmap threshold (32 MiB on
    64-bit) for the default. Returns whether both were set."""
    if keep is None:
        keep = _env_bytes("HEARSAY_HEAP_KEEP", DEFAULT_HEAP_KEEP)
    if keep is None or keep <= 0:
        return False
    return _mallopt(_M_MMAP_THRESHOLD, keep // 2) and _mallopt(_M_TRIM_THRESHOLD, keep)


def configure_allocator() -> None:
    """What ``hearsay run`` sets before the model exists: the arena limit, the heap kept for
    reuse, and, if asked for, the pinned mmap threshold (which then overrides the heap's)."""
    limit_arenas()
    if not return_large_blocks():
        keep_heap()
