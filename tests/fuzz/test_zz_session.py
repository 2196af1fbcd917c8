"""Whole-session checks of the fuzz suite (marked ``fuzz_session``; conftest runs them last).

- At least 10,000 generated inputs ran (issue 7, must-hold 1), and each fuzzer ran at
  least half of its budget (a strategy that filters away its own inputs would
  otherwise pass quietly).
- The structure-aware fuzzers reached deep: valid packets and every rejection reason
  the wire layer has, every codec both accepting and refusing, every receiver answer.
- Memory: peak resident memory grew by less than ``rss_growth_bound()`` (128 MiB at
  the CI budget) from the first fuzz test (after a warm-up) to the end; and replaying
  a sample of the fuzzed inputs of every fuzzer twice more leaves traced Python memory
  and resident memory flat (no per-input leak in anything under test).

The first three need the whole suite in the same session; with a subset selected
(``-k``, one file) they skip.
"""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from protocol import codecs
from tests.fuzz.harness import (
    BUDGET,
    REPLAY_RSS_BOUND,
    REPLAY_TRACED_BOUND,
    REQUIRED_INPUTS,
    SCALE,
    TALLY,
    max_examples,
    peak_rss_bytes,
    rss_bytes,
    rss_growth_bound,
)

pytestmark = pytest.mark.fuzz_session


def _whole_suite() -> None:
    missing = sorted(set(BUDGET) - (TALLY.selected & set(TALLY.runs)))
    if missing:
        pytest.skip(f"only part of the fuzz suite ran (not: {', '.join(missing)})")


def test_the_suite_ran_at_least_ten_thousand_generated_inputs() -> None:
    _whole_suite()
    # The CI budget (or more) must reach the must-hold; a deliberately smaller run
    # (HEARSAY_FUZZ_EXAMPLES below the CI total) must still run what it asked for.
    required = REQUIRED_INPUTS if SCALE >= 1 else sum(max_examples(k) for k in BUDGET) // 2
    assert TALLY.total >= required, f"{TALLY.total} inputs ran, {required} required"
    starved = {k: TALLY.runs[k] for k in BUDGET if TALLY.runs[k] < max_examples(k) // 2}
    assert not starved, f"fuzzers that ran under half their budget: {starved}"


def test_the_structure_aware_fuzzers_reached_every_stage() -> None:
    _whole_suite()
    if SCALE < 1:
        pytest.skip("a budget below CI's is too small to promise every stage")
    fields = TALLY.outcomes["packet_field_mutations"]
    reasons = {label.split(":", 1)[1] for label in fields}
    assert {"valid", "malformed", "too_large", "version", "fingerprint", "size", "codec",
            "non_finite"} <= reasons, sorted(reasons)
    per_codec = TALLY.outcomes["codec_decode"]
    for name in codecs.available():
        assert per_codec[f"{name}:valid"] > 0, f"{name} never decoded a fuzzed payload"
        refused = sum(v for k, v in per_codec.items() if k.startswith(f"{name}:") and not k.endswith(":valid"))
        assert refused > 0, f"{name} never refused a fuzzed payload"
    assert {"applied", "unknown_link", "epoch", "stale", "gap", "spec"} <= set(
        TALLY.outcomes["receiver_hostile_frames"])
    membership = TALLY.outcomes["membership_mutations"]
    assert {"Ping", "Ack", "PingReq", "Gossip", "PushPull", "malformed", "truncated"} <= set(membership)
    assert {"Ping", "Ack", "Nack", "PingReq", "Gossip", "PushPull"} <= set(TALLY.outcomes["swim_hostile_script"])


def test_peak_memory_grew_less_than_the_bound_over_the_session() -> None:
    _whole_suite()
    assert TALLY.rss_start is not None
    growth = peak_rss_bytes() - TALLY.rss_start
    TALLY.rss_growth_checked = growth  # the summary reports this, not the whole session's peak
    bound = rss_growth_bound()
    assert growth < bound, f"peak RSS grew {growth / 2**20:.1f} MiB (bound {bound >> 20} MiB)"


def _replay() -> int:
    count = 0
    for key, kept in TALLY.samples.items():
        body = TALLY.bodies[key][0]
        for kwargs in kept:
            body(**kwargs)
            count += 1
    return count


def test_replaying_fuzzed_inputs_leaves_memory_flat() -> None:
    if not TALLY.samples:
        pytest.skip("no fuzz test ran in this session")
    _replay()  # once more to warm anything the replay order itself touches
    gc.collect()
    rss_before = rss_bytes()
    tracemalloc.start()
    try:
        gc.collect()
        traced_before, _ = tracemalloc.get_traced_memory()
        replayed = _replay() + _replay()
        gc.collect()
        traced_after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert replayed > 0
    assert traced_after - traced_before < REPLAY_TRACED_BOUND, (
        f"{traced_after - traced_before} bytes still live after replaying {replayed} inputs")
    assert rss_bytes() - rss_before < REPLAY_RSS_BOUND
