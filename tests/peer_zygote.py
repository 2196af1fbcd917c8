"""Test peers without re-importing torch: one pre-imported process per pytest worker forks them.

Starting a real `python -m peer.tools.cli run ...` costs ~3 CPU-s before the peer does
anything (importing torch, grpc, sklearn: `import peer.runtime.node` alone is 2.5 s), and the
default run starts ~86 of them. The zygote (``python -m tests.peer_zygote FD``) imports those
modules once, creating no thread, channel, event loop or torch pool, then for each request forks
a child that does what a fresh `python -m MODULE ARGS` does from there on: the request's
environment and working directory, stdin /dev/null, stdout and stderr appended to the log
file, fresh random states, ``runpy`` running MODULE as ``__main__`` with its arguments, the exit
code of ``SystemExit`` or 1 after an uncaught exception's traceback, ``atexit`` handlers.
Each child is a real, separate process with its own pid: tests SIGKILL, SIGSTOP and SIGCONT it,
and read its exit code, through ``ForkedProcess`` (the subset of ``subprocess.Popen`` they use).

Fork safety is checked, not assumed: the zygote refuses to serve (and the tests fall back to
``subprocess.Popen``) unless it is single-threaded right after a first fork (OpenBLAS, which
numpy starts at import, stops its pool in its own fork handler and restarts it lazily).
Requests whose environment differs from the zygote's in anything a library could read at
import time (anything but HEARSAY_* and XDG_CACHE_HOME) are not forked either.
HEARSAY_TEST_ZYGOTE=0 turns the launcher off: every peer is a `python -m` process again.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

# Read only after the fork (by the peer's config, its data cache, argparse's terminal size):
# a child's environment may differ from the zygote's in these. PYTEST_CURRENT_TEST changes per
# test; pytest sets COLUMNS and LINES after the zygote has started.
_AFTER_FORK_ENV = ("HEARSAY_", "XDG_CACHE_HOME", "PYTEST_", "COLUMNS", "LINES")
# What `hearsay run` imports before and while it starts (peer.tools.cli's run path, node.run's
# lazy imports); peer.tools.cli itself is left out: runpy runs it as __main__.
_PRELOAD = ("peer.runtime.logs", "peer.runtime.config", "peer.transport.ports", "peer.runtime.node",
            "peer.runtime.memory", "sklearn.datasets", "sklearn.model_selection", "prometheus_client",
            "uvloop", "argparse", "difflib", "ipaddress")


# ---------------------------------------------------------------- the zygote process


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _exit_code(e: SystemExit) -> int:
    """What the interpreter exits with for ``SystemExit(e.code)``."""
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code & 0xFF
    print(e.code, file=sys.stderr)
    return 1


def _child(request: Mapping, keep_closed: Sequence[int], set_by_imports: Mapping[str, str]) -> None:
    """In the forked child: become `python -m MODULE ARGS` and never return."""
    code = 1
    try:
        if request.get("probe"):
            return
        for fd in keep_closed:
            os.close(fd)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for name, value in set_by_imports.items():  # sklearn's os.environ.setdefault(...) at import
            os.environ.setdefault(name, value)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import random

        import numpy as np

        random.seed()  # a fresh interpreter's states, not the zygote's copy shared by every child
        np.random.seed()
        module = request["module"]
        sys.modules.pop(module, None)
        sys.argv = ["-m", *request["args"]]
        sys.path[0] = request["cwd"]  # as `python -m` puts its working directory first
        import runpy

        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = _exit_code(e)
        except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
            sys.excepthook(*sys.exc_info())
            code = 1
        threading._shutdown()  # noqa: SLF001 - the interpreter's own exit steps, in its order
        import atexit

        atexit._run_exitfuncs()  # noqa: SLF001
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _serve(fd: int) -> None:
    import importlib

    before = dict(os.environ)
    for name in _PRELOAD:
        importlib.import_module(name)
    set_by_imports = {k: v for k, v in os.environ.items() if before.get(k) != v}
    conn = socket.socket(fileno=fd)
    reader = conn.makefile("rb")

    def reply(message: Mapping) -> None:
        conn.sendall(json.dumps(message).encode() + b"\n")

    def fork(request: Mapping) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request, (conn.fileno(),), set_by_imports)
        return pid

    # A first fork shows whether forking leaves this process single-threaded (every pool stopped).
    probe = fork({"probe": True})
    os.waitpid(probe, 0)
    if threading.active_count() != 1 or _threads() != 1:
        reply({"error": f"not fork-safe: {_threads()} threads after importing {', '.join(_PRELOAD)}"})
        return
    reply({"ready": os.getpid(), "env": before, "set_by_imports": set_by_imports})
    for line in reader:
        request = json.loads(line)
        if request["op"] == "spawn":
            reply({"pid": fork(request)})
        else:  # "wait": the caller saw the child exit on its pidfd, so this does not block long
            _, status, usage = os.wait4(request["pid"], 0)
            reply({"code": os.waitstatus_to_exitcode(status), "cpu": usage.ru_utime + usage.ru_stime})


# ---------------------------------------------------------------- the pytest worker's side


class ForkedProcess:
    """A zygote's child, handled like ``subprocess.Popen``: pid, poll, wait, signals, returncode.

    Waiting uses a pidfd (readable once the process has exited, though it is not our child);
    the exit code comes from the zygote, which reaps the child only when asked, so the pid
    cannot be reused while a signal may still be sent to it.
    """

    stdin = stdout = stderr = None

    def __init__(self, launcher: ZygoteLauncher, pid: int, args: list[str]) -> None:
        self._launcher = launcher
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self.cpu: float | None = None  # its CPU seconds (user + system), once reaped
        self._pidfd = os.pidfd_open(pid)

    def _exited(self, timeout: float | None) -> bool:
        ready, _, _ = select.select([self._pidfd], [], [], timeout)
        return bool(ready)

    def _reap(self) -> None:
        self.returncode, self.cpu = self._launcher.exit_code(self.pid)
        os.close(self._pidfd)

    def poll(self) -> int | None:
        if self.returncode is None and self._exited(0):
            self._reap()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not self._exited(timeout):
                raise subprocess.TimeoutExpired(self.args, timeout)
            self._reap()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ZygoteLauncher:
    """The worker's zygote: started by ``start`` or the first request, ended by ``close``."""

    def __init__(self, log_path: Path) -> None:
        self._log_path = log_path
        self._lock = threading.Lock()
        self._conn: socket.socket | None = None
        self._reader = None
        self._env: dict[str, str] = {}
        self._set_by_imports: dict[str, str] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self._greeted = False
        self.not_forked: list[str] = []  # the requests left to a fresh interpreter, and why
        self.refused: str | None = None  # why the zygote does not serve, once known

    def start(self) -> None:
        """Start the zygote now: its imports run beside whatever the worker does until its
        first peer, which then waits only for what is left of them."""
        with self._lock:
            if self.process is None:
                self._launch()

    def _launch(self) -> None:
        ours, theirs = socket.socketpair()
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "tests.peer_zygote", str(theirs.fileno())],
                                            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent)
        theirs.close()
        self._conn = ours
        self._reader = ours.makefile("rb")

    def _greet(self) -> None:
        hello = self._receive()
        self._greeted = True
        if "error" in hello:
            self.refused = hello["error"]
        else:
            self._env = hello["env"]
            self._set_by_imports = hello["set_by_imports"]

    def _receive(self) -> dict:
        assert self._reader is not None
        line = self._reader.readline()
        if not line:
            raise RuntimeError(f"the peer zygote ended; its log: {self._log_path}")
        return json.loads(line)

    def _ask(self, request: Mapping) -> dict:
        assert self._conn is not None
        self._conn.sendall(json.dumps(request).encode() + b"\n")
        return self._receive()

    def spawn(self, module: str, args: Sequence[str], env: Mapping[str, str],
              log_path: Path) -> ForkedProcess | None:
        """A forked `python -m module args`, or None where only a fresh interpreter will do."""
        with self._lock:
            if self.process is None:
                self._launch()
            if not self._greeted:
                self._greet()
            if self.refused is not None:
                return None
            unsafe = sorted(k for k in self._differing(env) if not k.startswith(_AFTER_FORK_ENV))
            if unsafe:
                self.not_forked.append(f"{module} {' '.join(args[:1])}: environment differs in {', '.join(unsafe)}")
                return None
            pid = self._ask({"op": "spawn", "module": module, "args": list(args), "env": dict(env),
                             "cwd": os.getcwd(), "log": str(log_path)})["pid"]
        return ForkedProcess(self, pid, [sys.executable, "-m", module, *args])

    def close(self) -> None:
        """End the zygote and reap it, so that its children's CPU counts in this process's
        RUSAGE_CHILDREN (and in `time pytest`). Children still running are left running."""
        with self._lock:
            # The reader first: a socket closed while a makefile() of it is open stays open
            # (its _io_refs), the zygote never reads EOF, and this waited out its 30 s.
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self.process is not None:
                try:
                    self.process.wait(30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()

    def _differing(self, env: Mapping[str, str]) -> set[str]:
        """Variables whose value in ``env`` a fresh interpreter would not see in the zygote's
        child: not the zygote's own, and not what the preloaded modules set themselves (the
        worker has usually imported sklearn too, which sets two KMP_* variables)."""
        return {k for k in set(env) | set(self._env)
                if env.get(k) != self._env.get(k) and env.get(k) != self._set_by_imports.get(k)}

    def exit_code(self, pid: int) -> tuple[int, float]:
        """The exit code of the zygote's exited child ``pid`` and its CPU seconds; reaps it."""
        with self._lock:
            reply = self._ask({"op": "wait", "pid": pid})
        return reply["code"], reply["cpu"]


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
    os._exit(0)  # the worker has gone; its children stay reparented, as Popen's would
