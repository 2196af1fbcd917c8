"""Where the default run's CPU goes: a pytest plugin, on only when HEARSAY_SUITE_CPU names a folder.

    HEARSAY_SUITE_CPU=/tmp/cpu pytest ...      # then: python -m tests.cpu_accounting /tmp/cpu

Per test it writes one JSON line (per worker process): the worker's own CPU (RUSAGE_SELF) and
every child process it reaped during the test, with the child's CPU read from /proc at exit
(its utime+stime, plus its own reaped children's), before the reap (waitid WNOWAIT), and what
the child was (a peer, a `hearsay` CLI command, another program). A peer's CPU is split into
start-up (until `wait_ready` returned) and the rest (running while the test waits, stop).
Measurement only: nothing here changes what a test does.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

_TICK = os.sysconf("SC_CLK_TCK")
_reaped: list[dict] = []
_ready_cpu: dict[int, float] = {}
_forked: list[dict] = []
_zygotes: list = []
_zygote_cpu: list[float] = []
_excluded: list[float] = []


def _proc_cpu(pid: int, own_only: bool = False) -> float | None:
    """utime + stime (+ cutime + cstime unless ``own_only``) of ``pid`` in seconds (also for a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return sum(int(f) for f in fields[11:13 if own_only else 15]) / _TICK


def _kind(args: object) -> str:
    argv = [str(a) for a in args] if isinstance(args, (list, tuple)) else str(args).split()
    if "-m" in argv:
        module = argv[argv.index("-m") + 1]
        rest = argv[argv.index("-m") + 2:]
        if module == "peer.tools.cli" and rest:
            return "peer" if rest[0] == "run" else f"cli {rest[0]}"
        return f"python -m {module}"
    if argv and argv[0] == sys.executable:
        return "python " + (Path(argv[1]).name if len(argv) > 1 else "")
    return Path(argv[0]).name if argv else "?"


def _note_exit(popen: subprocess.Popen, flags: int) -> None:
    try:
        info = os.waitid(os.P_PID, popen.pid, os.WEXITED | os.WNOWAIT | (os.WNOHANG if flags else 0))
    except ChildProcessError:
        return
    if info is None:
        return
    cpu = _proc_cpu(popen.pid)
    if cpu is None:
        return
    ready = _ready_cpu.pop(popen.pid, None)
    _reaped.append({"kind": _kind(popen.args), "cpu": cpu, "startup": ready})


def _install() -> None:
    original = subprocess.Popen._try_wait

    def _try_wait(self: subprocess.Popen, wait_flags: int):  # noqa: ANN202
        _note_exit(self, wait_flags)
        return original(self, wait_flags)

    subprocess.Popen._try_wait = _try_wait

    from peer.tools import procs

    wait_ready = procs.PeerProcess.wait_ready

    def _wait_ready(self: procs.PeerProcess, timeout: float = 60.0) -> None:
        wait_ready(self, timeout)
        pid = getattr(self.proc, "pid", None)
        if pid is not None:
            cpu = _proc_cpu(pid)
            if cpu is not None:
                _ready_cpu[pid] = cpu

    procs.PeerProcess.wait_ready = _wait_ready

    # Peers forked by the zygote are not this process's children: the zygote reports their CPU.
    from tests import peer_zygote

    reap = peer_zygote.ForkedProcess._reap

    def _reap(self: peer_zygote.ForkedProcess) -> None:
        reap(self)
        _forked.append({"kind": _kind(self.args), "cpu": self.cpu, "startup": _ready_cpu.pop(self.pid, None)})

    peer_zygote.ForkedProcess._reap = _reap
    close = peer_zygote.ZygoteLauncher.close

    def _close(self: peer_zygote.ZygoteLauncher) -> None:  # its own CPU, before it is reaped
        if self.process is not None:
            _zygote_cpu.append(_proc_cpu(self.process.pid, own_only=True) or 0.0)
        before = _cpu(resource.getrusage(resource.RUSAGE_CHILDREN))
        close(self)
        # Reaping the zygote adds its CPU and its children's, counted already: not twice.
        _excluded.append(_cpu(resource.getrusage(resource.RUSAGE_CHILDREN)) - before)

    peer_zygote.ZygoteLauncher.close = _close
    launch = peer_zygote.ZygoteLauncher._launch

    def _launch(self: peer_zygote.ZygoteLauncher) -> None:
        launch(self)
        _zygotes.append(self)

    peer_zygote.ZygoteLauncher._launch = _launch


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


class CpuAccounting:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.out = open(folder / f"cpu-{os.getpid()}.jsonl", "a")  # noqa: SIM115 - open for the session
        _install()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item):  # noqa: ANN201
        _reaped.clear()
        _forked.clear()
        _excluded.clear()
        before = (_cpu(resource.getrusage(resource.RUSAGE_SELF)), _cpu(resource.getrusage(resource.RUSAGE_CHILDREN)),
                  time.monotonic())
        yield
        after = (_cpu(resource.getrusage(resource.RUSAGE_SELF)), _cpu(resource.getrusage(resource.RUSAGE_CHILDREN)),
                 time.monotonic())
        self.out.write(json.dumps({"test": item.nodeid, "self": after[0] - before[0],
                                   "children": after[1] - before[1] - sum(_excluded), "wall": after[2] - before[2],
                                   "forked": sum(c["cpu"] for c in _forked),
                                   "reaped": [*_reaped, *_forked]}) + "\n")
        self.out.flush()

    def pytest_sessionfinish(self) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        zygotes = _zygote_cpu
        not_forked = [line for z in _zygotes for line in z.not_forked] + [z.refused for z in _zygotes if z.refused]
        self.out.write(json.dumps({"session_self": _cpu(usage), "zygotes": sum(zygotes),
                                   "not_forked": not_forked}) + "\n")
        self.out.close()


def summarise(folder: Path, top_tests: int = 0) -> str:
    """The breakdown: worker CPU outside and inside tests, children by kind, peers' start-up;
    with ``top_tests``, that many of the costliest tests too."""
    by_test: dict[str, list[float]] = {}
    by_kind: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    by_module: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0])
    startup = running = 0.0
    session_self = in_tests_self = children = zygotes = 0.0
    not_forked: list[str] = []
    for path in sorted(folder.glob("cpu-*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if "session_self" in row:
                session_self += row["session_self"]
                zygotes += row.get("zygotes", 0.0)
                not_forked += row.get("not_forked", [])
                continue
            module = row["test"].split("::", 1)[0]
            by_test[row["test"]] = [row["self"], row["children"] + row.get("forked", 0.0), row["wall"]]
            in_tests_self += row["self"]
            children += row["children"] + row.get("forked", 0.0)
            m = by_module[module]
            m[0] += row["self"]
            m[1] += row["children"] + row.get("forked", 0.0)
            m[2] += row["wall"]
            for child in row["reaped"]:
                k = by_kind[child["kind"]]
                k[0] += 1
                k[1] += child["cpu"]
                if child["kind"] == "peer":
                    m[3] += 1
                    if child["startup"] is not None:
                        startup += child["startup"]
                        running += child["cpu"] - child["startup"]
    lines = [f"workers' own CPU: {session_self:.1f} s ({in_tests_self:.1f} s inside tests, "
             f"{session_self - in_tests_self:.1f} s start-up/collection/outside tests)",
             f"children reaped during tests: {children:.1f} CPU-s (RUSAGE_CHILDREN, and the zygotes' reports)",
             f"the peer zygotes' own CPU (imports once per worker): {zygotes:.1f} s",
             f"peers: start-up until ready {startup:.1f} CPU-s, after ready {running:.1f} CPU-s "
             f"(peers with a wait_ready)", f"peers not forked: {len(not_forked)} {not_forked[:5]}", "", "| child kind | count | CPU-s |", "|---|---|---|"]
    for kind, (count, cpu) in sorted(by_kind.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"| {kind} | {count} | {cpu:.1f} |")
    lines += ["", "| module | worker CPU-s | children CPU-s | wall s | peers |", "|---|---|---|---|---|"]
    for module, (s, c, w, n) in sorted(by_module.items(), key=lambda kv: -(kv[1][0] + kv[1][1])):
        lines.append(f"| {module} | {s:.1f} | {c:.1f} | {w:.1f} | {n} |")
    if top_tests:
        lines += ["", "| test (module-scoped fixtures count in their first and last test) | worker CPU-s | "
                      "children CPU-s | wall s |", "|---|---|---|---|"]
        for test, (s, c, w) in sorted(by_test.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))[:top_tests]:
            lines.append(f"| {test} | {s:.1f} | {c:.1f} | {w:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    # python -m tests.cpu_accounting FOLDER [TOP_TESTS]
    print(summarise(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0))
