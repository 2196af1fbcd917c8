"""Running `hearsay cluster` from a test: its process (a session of its own), its end, its results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
# Peers under test train with one thread; --peer-arg adds it to every `hearsay run`.
PEER_ARGS = ["--peer-arg=--threads=1"]


def cluster(out: Path, *args: str) -> subprocess.Popen[str]:
    # A session of its own: on failure the test kills the cluster and its peers together.
    return subprocess.Popen([sys.executable, "-m", "peer.tools.cli", "cluster", "--out", str(out), *PEER_ARGS, *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def kill_all(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the cluster and every peer it started (they share its process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_all(proc)
        output, _ = proc.communicate()
        pytest.fail(f"hearsay cluster still running after {timeout} s:\n{output[-3000:]}")
    return proc.returncode, output


def results(out: Path) -> dict[str, Any]:
    return json.loads((out / "results.json").read_text())
