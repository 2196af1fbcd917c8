"""A data directory holding things the peer did not write: it starts, saves and resumes all the same."""

from __future__ import annotations

import os
import re
from pathlib import Path

from peer.tools.procs import PeerProcess


def test_a_peer_resumes_from_the_newest_valid_checkpoint_among_foreign_entries(launch, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "ckpt-99999999.hsck").write_bytes(b"junk under the largest 8-digit number")
    (data / "ckpt-00000002.hsck").mkdir()  # a directory named like a checkpoint
    os.mkfifo(data / "ckpt-00000003.hsck")  # a FIFO: a blocking open would hang the start for good
    (peer,) = launch(1, lambda i, seeds: ["--data-dir", str(data), "--checkpoint-interval", "0"])
    with peer.admin() as client:
        saved = [client.save_checkpoint().path for _ in range(2)]
    assert [Path(p).name for p in saved] == ["ckpt-00000001.hsck", "ckpt-00000004.hsck"]
    assert peer.stop(timeout=90) == 0  # a clean stop writes one more: ckpt-00000005
    steps = int(re.findall(r"stopped after (\d+) steps", peer.log_path.read_text())[-1])

    again = PeerProcess(peer.peer_id, peer.gossip_port, peer.admin_port, peer.args, peer.log_path).start()
    try:
        again.wait_ready(120)
        status = again.status()
        assert Path(status.resumed_from).name == "ckpt-00000005.hsck"
        assert status.resumed_step == steps > 0  # nothing lost to the junk
        log = again.log_path.read_text()
        for name in ("ckpt-99999999.hsck", "ckpt-00000002.hsck", "ckpt-00000003.hsck"):
            assert f"skipping {name}" in log, name
        assert (data / "ckpt-00000002.hsck").is_dir() and (data / "ckpt-99999999.hsck").exists()  # left alone
    finally:
        again.stop(timeout=90)
