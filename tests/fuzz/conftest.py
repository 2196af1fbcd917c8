"""Session bookkeeping for the fuzz suite (see ``tests/fuzz/harness.py`` for the budget).

- Records which fuzz tests were selected, so the session checks in
  ``test_zz_session.py`` know whether the whole suite ran.
- Moves the tests marked ``fuzz_session`` to the end of the run.
- Takes the resident-memory baseline when the first fuzz test starts (after imports
  and the seed corpus, which are not growth).
- Prints the inputs each fuzzer ran, and the total, at the end of the session.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fuzz.harness import (
    BUDGET,
    DEFAULT_BUDGET,
    REQUIRED_INPUTS,
    TALLY,
    rss_bytes,
    rss_growth_bound,
    warm_up,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fuzz_session: a whole-session check of the fuzz suite; runs last")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        key = getattr(getattr(item, "function", None), "_fuzz_key", None)
        if key is not None:
            TALLY.selected.add(key)
    # The session checks run right after the last fuzz test, not at the end of the whole
    # run: the memory bound is about the fuzzers, not about whatever else shares the process.
    last = [item for item in items if item.get_closest_marker("fuzz_session")]
    if last:
        rest = [item for item in items if not item.get_closest_marker("fuzz_session")]
        fuzz_positions = [i for i, item in enumerate(rest) if "tests/fuzz/" in item.nodeid.replace("\\", "/")]
        cut = fuzz_positions[-1] + 1 if fuzz_positions else len(rest)
        items[:] = rest[:cut] + last + rest[cut:]


@pytest.fixture(autouse=True, scope="package")
def _rss_baseline() -> Iterator[None]:
    if TALLY.rss_start is None:
        _warm_up()
        _reset_peak_rss()
        TALLY.rss_start = rss_bytes()
    yield


def _reset_peak_rss() -> None:
    """Start the peak (VmHWM) afresh, so tests that ran earlier in this process and freed
    their memory do not count as the fuzzers' growth (Linux: clear_refs value 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # elsewhere the bound is checked against the process's lifetime peak


def _warm_up() -> None:
    """Run every decoder once on honest input, so that one-time costs (torch kernels and
    thread pools paged in, numpy/msgpack/zstd first use) are not counted as growth."""
    from protocol import codecs
    from protocol.membership import Ping
    from protocol.membership.wire import from_wire, to_wire
    from protocol.wire import decode_packet
    from tests.fuzz.corpus import seeds

    for seed in seeds():
        decode_packet(seed.data, expected=seed.specs)
    for name in codecs.available():
        codecs.get(name)  # registered; the seed packets above decoded through each of them
    from_wire(to_wire(Ping(1, "a:1", "b:1")))
    warm_up()
    TALLY.outcomes.clear()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TALLY.runs:
        return
    tr = terminalreporter
    tr.section("hearsay fuzz suite")
    for key in BUDGET:
        if key in TALLY.runs:
            outcomes = TALLY.outcomes.get(key, {})
            detail = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
            tr.write_line(f"{key:26s} {TALLY.runs[key]:8d} inputs" + (f"  ({detail})" if detail else ""))
    budget = "CI budget" if DEFAULT_BUDGET else "scaled/seeded budget"
    tr.write_line(f"{'total':26s} {TALLY.total:8d} inputs ({budget}; CI requires >= {REQUIRED_INPUTS})")
    if TALLY.rss_growth_checked is not None:
        # Measured by the memory check right after the fuzz tests; later tests (real peers,
        # benchmarks of other parts) raise the process's peak without concerning the fuzzers.
        growth = TALLY.rss_growth_checked / 2**20
        tr.write_line(f"peak RSS growth over the fuzz tests {growth:.1f} MiB (bound {rss_growth_bound() >> 20} MiB)")
