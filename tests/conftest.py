"""Shared fixtures: real peer processes on loopback, stopped at the end of each test.

Also how the default run is spread over pytest-xdist workers (``-n 3 --dist loadfile`` in
pyproject's addopts): every test module is one unit of work, so a module's shared peers
(module-scoped fixtures) start once, in one worker; the fuzz package is one unit, because
its session checks (tests/fuzz/test_zz_session.py) count the inputs of every fuzz test
in their own process. The longest units go first (LONGEST_FIRST), then the other modules
that start real peers, so the many short unit tests fill the workers' tails instead of one
long system test running alone at the end.

Test peers are real `hearsay run` processes forked from one pre-imported process per worker
(tests/peer_zygote.py; HEARSAY_TEST_ZYGOTE=0 turns that off), and HEARSAY_SUITE_CPU=folder
records where the run's CPU goes (tests/cpu_accounting.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import contextmanager
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import pytest

from peer.tools.procs import PeerProcess, launch_peers, use_launcher
from tests.peer_zygote import ZygoteLauncher

# Every peer in the tests trains with one thread and a bounded step rate: the suite runs
# on 2 cores, and several peers share them.
COMMON_PEER_ARGS = ["--threads", "1", "--log-level", "info"]

LaunchPeers = Callable[..., list[PeerProcess]]

# Test directories in the order their modules are handed out: longest-running first.
RUN_ORDER = ("integration", "deploy", "fuzz", "peer", "protocol")
# Units handed out before all others, longest first (a directory: all its modules): a long
# unit started last would run alone on one worker at the end. From the --durations of a
# default run with peers forked from the zygote (session 6, bench/RESULTS.md): the fuzz
# package is one unit of ~2.5 min under load, `hearsay cluster`'s four real runs next.
LONGEST_FIRST = ("fuzz", "integration/test_cluster.py", "integration/test_cluster_unreachable.py",
                 "integration/test_partition_netns.py",
                 "integration/test_hostile_peers.py", "integration/test_cli.py", "peer/test_mqtt_discovery.py",
                 "deploy/test_compose_netns.py", "integration/test_adaptive_deadlines.py",
                 "peer/test_byzantine_sim.py", "integration/test_admin.py", "integration/test_crash_safety.py",
                 # In-process modules of 20-50 s under load (session 7's accounting, bench/RESULTS.md): by
                 # directory order they came among the last, one of them alone at a worker's end.
                 "protocol/test_membership_hardening.py", "peer/test_sim.py", "peer/test_sampled_rounds.py",
                 "peer/test_models_trainer.py", "protocol/test_merge.py", "peer/test_sim_modes.py")


def _relative(item: pytest.Item) -> tuple[str, ...]:
    return Path(str(item.path)).relative_to(Path(__file__).parent).parts


def _rank(item: pytest.Item) -> tuple[int, int]:
    parts = _relative(item)
    path = "/".join(parts)
    first = next((i for i, unit in enumerate(LONGEST_FIRST) if path == unit or path.startswith(unit + "/")),
                 len(LONGEST_FIRST))
    directory = parts[0] if len(parts) > 1 else ""
    return first, RUN_ORDER.index(directory) if directory in RUN_ORDER else len(RUN_ORDER)


def pytest_configure(config: pytest.Config) -> None:
    folder = os.environ.get("HEARSAY_SUITE_CPU")  # measurement only: where the run's CPU goes
    if folder:
        from tests.cpu_accounting import CpuAccounting

        config.pluginmanager.register(CpuAccounting(Path(folder)), "hearsay-cpu-accounting")


@pytest.hookimpl(tryfirst=True)  # before the fuzz conftest moves its session checks behind the fuzz tests
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: file order kept within a module


try:
    from xdist.scheduler import LoadFileScheduling
except ImportError:  # without pytest-xdist (-p no:xdist or not installed) the suite runs in one process
    LoadFileScheduling = None

if LoadFileScheduling is not None:
    class ModuleScheduling(LoadFileScheduling):
        """``--dist loadfile``, with the whole fuzz package as one unit of work.

        (xdist's own loadgroup marks its groups by rewriting node ids, which pytest 9 ignores.)
        """

        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "tests/fuzz" if path.startswith("tests/fuzz/") else path

    def pytest_xdist_make_scheduler(config: pytest.Config, log):  # noqa: ANN001, ANN201 - xdist's types
        return ModuleScheduling(config, log) if config.getvalue("dist") == "loadfile" else None


def stop_peers(peers: Iterable[PeerProcess], timeout: float = 15.0) -> list[int | None]:
    """``PeerProcess.stop`` for many peers at once: SIGTERM to all, then SIGKILL what still runs
    ``timeout`` s later. Their shutdowns (leave, drain, grace) overlap instead of adding up."""
    peers = list(peers)
    for p in peers:
        p.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    codes: list[int | None] = []
    for p in peers:
        if p.proc is None:
            codes.append(None)
            continue
        try:
            codes.append(p.proc.wait(max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            p.proc.kill()
            codes.append(p.proc.wait())
    return codes


@contextmanager
def running_peers(count: int, log_dir: Path, args_for: Callable[[int, list[str]], Sequence[str]],
                  ready_timeout: float = 90.0) -> Iterator[list[PeerProcess]]:
    """``count`` peers (``launch_peers`` with COMMON_PEER_ARGS first), ready, stopped together at
    the end: the body of a module-scoped fixture whose peers several tests share."""
    peers = launch_peers(count, log_dir, lambda i, seeds: [*COMMON_PEER_ARGS, *args_for(i, seeds)])
    try:
        for p in peers:
            p.wait_ready(ready_timeout)
        yield peers
    finally:
        stop_peers(peers)


@pytest.fixture(scope="session", autouse=True)
def peer_launcher(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZygoteLauncher | None]:
    """Test peers forked from one pre-imported process per worker (tests/peer_zygote.py): each
    is still a real `hearsay run` process, without the ~3 CPU-s of importing torch and grpc
    again. HEARSAY_TEST_ZYGOTE=0: every peer a fresh `python -m` process, as `hearsay cluster`'s."""
    if os.environ.get("HEARSAY_TEST_ZYGOTE", "1") == "0":
        yield None
        return
    launcher = ZygoteLauncher(tmp_path_factory.getbasetemp() / f"peer-zygote-{os.getpid()}.log")
    if any(_relative(item)[0] in ("integration", "deploy") for item in request.session.items):
        launcher.start()  # its imports overlap this worker's first tests, not its first peer's start
    use_launcher(launcher)
    try:
        yield launcher
    finally:
        use_launcher(None)
        launcher.close()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[LaunchPeers]:
    """``launch(n, args_for)`` starts ``n`` real `hearsay run` processes and waits until they answer."""
    started: list[PeerProcess] = []

    def _launch(count: int, args_for: Callable[[int, list[str]], Sequence[str]],
                ready_timeout: float = 90.0) -> list[PeerProcess]:
        peers = launch_peers(count, tmp_path / f"logs-{len(started)}",
                             lambda i, seeds: [*COMMON_PEER_ARGS, *args_for(i, seeds)])
        started.extend(peers)
        for p in peers:
            p.wait_ready(ready_timeout)
        return peers

    yield _launch
    stop_peers(started)
