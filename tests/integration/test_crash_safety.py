"""SIGKILL a peer at random moments while it writes checkpoints, 20 times; every restart
resumes from a complete checkpoint with its step counter and model intact, and rejoins."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest

from peer import checkpoint
from peer.config import PeerConfig
from peer.node import CHECKPOINT_FORMAT, build_trainer
from peer.procs import PeerProcess, free_ports, wait_for
from tests.conftest import COMMON_PEER_ARGS

KILLS = 20
MODEL = "tests.peer.user_plugins:wide_mlp"


# 21 process starts: ≈ 2 min on 2 idle cores, much more when the machine is shared.
@pytest.mark.timeout(900)
def test_sigkill_during_checkpoint_writes_always_resumes_from_a_valid_checkpoint(launch, tmp_path: Path) -> None:
    rng = random.Random(2026)
    data_dir = tmp_path / "victim"
    # The victim writes a ~35 MB checkpoint back to back (interval 0.05 s); each kill waits for a write in progress.
    victim_args = [*COMMON_PEER_ARGS, "--model", MODEL, "--data-dir", str(data_dir), "--checkpoint-interval", "0.05",
                   "--steps-per-second", "20", "--gossip-interval", "0.3", "--seed", "7"]
    (anchor,) = launch(1, lambda i, seeds: ["--model", MODEL, "--gossip-interval", "0.3"])
    gossip_port, admin_port = free_ports(2)
    reference = build_trainer(PeerConfig(model=MODEL, seed=7))  # same architecture, to check restored models

    victims: list[PeerProcess] = []
    try:
        killed_mid_write = _kill_and_restart(rng, data_dir, victim_args, anchor, gossip_port, admin_port, reference,
                                             tmp_path, victims)
    finally:
        for v in victims:
            v.stop(timeout=10)
    # A few saves may finish between seeing the temporary and the kill landing.
    assert killed_mid_write >= KILLS * 3 // 4, f"only {killed_mid_write} of {KILLS} kills hit a checkpoint write"
    print(f"{killed_mid_write} of {KILLS} SIGKILLs landed during a checkpoint write")


def _kill_and_restart(rng: random.Random, data_dir: Path, victim_args: list[str], anchor: PeerProcess,
                      gossip_port: int, admin_port: int, reference, tmp_path: Path,  # noqa: ANN001
                      victims: list[PeerProcess]) -> int:
    last_seen_step = 0
    killed_mid_write = 0
    for attempt in range(KILLS + 1):
        # Only the first start knows the anchor from --seeds; later ones rejoin from the checkpoint's member list.
        seeds = ["--seeds", anchor.gossip_address] if attempt == 0 else []
        victim = PeerProcess("victim", gossip_port, admin_port, [*victim_args, *seeds],
                             tmp_path / f"victim-{attempt}.log").start()
        victims.append(victim)
        victim.wait_ready(90)
        status = victim.status()
        if attempt > 0:
            assert status.resumed_from, f"restart {attempt} did not resume"
            assert status.resumed_step >= last_seen_step, (status.resumed_step, last_seen_step)
            state = checkpoint.decode(Path(status.resumed_from).read_bytes())  # complete and checksum-valid
            assert state["format"] == CHECKPOINT_FORMAT
            assert state["trainer"]["steps"] == status.resumed_step
            reference.restore(state["trainer"])
            assert reference.digest() == status.resumed_digest, "restored model differs from the checkpoint"
            assert status.steps >= status.resumed_step
        if attempt == KILLS:
            break
        wait_for(lambda: victim.status().last_checkpoint_step > last_seen_step, timeout=60,
                 what="a new checkpoint")
        last_seen_step = victim.status().last_checkpoint_step

        def writing() -> bool:  # a save is in progress; kill at a random point within it
            return any(p.name.startswith(checkpoint.TMP_PREFIX) for p in data_dir.iterdir()) and rng.random() < 0.5

        wait_for(writing, timeout=30, interval=0.01, what="a checkpoint write in progress")
        victim.signal(signal.SIGKILL)
        assert victim.proc is not None and victim.proc.wait(timeout=10) == -signal.SIGKILL
        killed_mid_write += any(p.name.startswith(checkpoint.TMP_PREFIX) for p in data_dir.iterdir())

    # The final incarnation found the anchor with no seeds, from the saved member list.
    wait_for(lambda: victim.status().merges > 0, timeout=60, what="the restarted peer to rejoin")

    def anchor_sees_victim_alive() -> bool:
        with anchor.admin() as client:
            return any(p.peer_id == "victim" and p.address == victim.gossip_address and p.state == "alive"
                       and p.merges > 0 for p in client.list_peers().peers)

    wait_for(anchor_sees_victim_alive, timeout=30, what="the anchor to see the restarted peer alive")
    return killed_mid_write
