"""A peer keeps to its ``threads``: torch's and numpy's BLAS pools both (in a fresh process,
since both pools are per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, torch, threadpoolctl
from peer.runtime.config import PeerConfig
from peer.runtime.node import build_trainer_and_validation
before = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
build_trainer_and_validation(PeerConfig(threads=1, steps_per_second=0, seed=3))
after = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
print(json.dumps({"before": before, "after": after, "torch": torch.get_num_threads()}))
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: every pool has one thread anyway")
def test_a_peer_caps_numpys_blas_threads_as_well_as_torchs() -> None:
    """OpenBLAS starts a worker per core that spins between calls; the merges' numpy work kept
    it spinning, and in 8 peers on 2 cores it took more CPU than training did."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120,
                         check=True).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["before"] and max(seen["before"]) > 1, f"BLAS starts with one thread here, nothing to show: {seen}"
    assert seen["after"] == [1] * len(seen["after"]) and seen["torch"] == 1, seen
