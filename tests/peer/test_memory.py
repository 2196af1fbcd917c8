"""The memory knobs of ``hearsay run`` (HEARSAY_MMAP_THRESHOLD, HEARSAY_HEAP_KEEP): pinned, model-sized blocks
are returned when freed; by default glibc keeps them for reuse."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import sys
    import numpy as np
    from peer.runtime.memory import return_large_blocks

    def rss():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))

    if sys.argv[1] == "pinned":
        assert return_large_blocks(256 << 10)
    else:
        assert not return_large_blocks()  # the default: glibc's own policy
    block = 8 << 20  # below glibc's dynamic ceiling (32 MiB): the case the pin is for
    np.ones(block // 8)  # allocated and freed: raises the dynamic threshold, if any
    before = rss()
    kept = []
    for _ in range(12):  # allocate, touch and free many blocks; a heap would keep them
        x = np.ones(block // 8)
        kept.append(x[:1].copy())
        del x
    print((rss() - before) / block)
""")


def _run_probe(script: str, mode: str) -> float:
    """Run a probe script in a fresh interpreter (allocator settings apply at start) and read its figure."""
    out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True,
                         cwd=".", timeout=60)
    return float(out.stdout.strip())


def _growth(mode: str) -> float:
    return _run_probe(PROBE, mode)


def test_freed_model_sized_blocks_leave_the_process_when_pinned() -> None:
    # Pinned: every 8 MiB block is mmapped and unmapped on free, so RSS hardly moves.
    assert _growth("pinned") < 0.5


def test_without_the_pin_a_freed_block_stays_resident() -> None:
    # The reason for the pin, on this C library: the heap keeps a freed block resident.
    assert _growth("default") > 0.5


ARENAS = textwrap.dedent("""
    import sys
    import threading
    import numpy as np
    from peer.runtime.memory import limit_arenas

    def rss():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))

    if sys.argv[1] == "limited":
        assert limit_arenas(1)
    else:
        assert not limit_arenas(0)  # glibc's own limit: 8 arenas per core
    block = 8 << 20
    np.ones(block // 8)  # allocated and freed: raises glibc's dynamic mmap threshold above a block
    before = rss()
    # Worker threads that stay alive, each allocating, touching and freeing one block in
    # turn, as an exchange's steps do in asyncio.to_thread's workers.
    threads = 6
    turns = [threading.Event() for _ in range(threads + 1)]
    finished = threading.Event()

    def work(i):
        turns[i].wait()
        x = np.ones(block // 8)
        del x
        turns[i + 1].set()
        finished.wait()

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    turns[0].set()
    turns[threads].wait()
    grown = (rss() - before) / block
    finished.set()
    for w in workers:
        w.join()
    print(grown)
""")


def _arena_growth(mode: str) -> float:
    return _run_probe(ARENAS, mode)


def test_one_arena_keeps_one_freed_temporary_for_all_worker_threads() -> None:
    # What an exchange's steps do in worker threads: with glibc's arenas each thread's
    # freed block stays resident in its own arena; with one arena the next thread reuses it.
    assert _arena_growth("limited") < 2.0
    assert _arena_growth("default") > 3.0


HEAP = textwrap.dedent("""
    import resource
    import sys
    import numpy as np
    from peer.runtime.memory import keep_heap

    if sys.argv[1] == "kept":
        assert keep_heap(64 << 20)
    else:
        assert not keep_heap(0)  # glibc's dynamic thresholds
    parts = 5  # a 20 MiB "keyframe copy" of five 4 MiB tensors, made and dropped per exchange
    for _ in range(2):
        copy = [np.ones((4 << 20) // 8) for _ in range(parts)]
        del copy
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        copy = [np.ones((4 << 20) // 8) for _ in range(parts)]
        del copy
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
""")


def test_a_kept_heap_serves_the_next_exchange_without_faulting_it_in_again() -> None:
    # Why HEARSAY_HEAP_KEEP (peer/runtime/memory.py): glibc's start-up thresholds hand a freed
    # model-sized copy back to the system, and the next one is page-faulted in afresh.
    fresh, kept = _run_probe(HEAP, "dynamic"), _run_probe(HEAP, "kept")
    assert kept < 0.1 * fresh, (fresh, kept)
