"""Three real peers on loopback, non-IID (Dirichlet α = 0.3): gossip beats training alone."""

from __future__ import annotations

from peer.runtime.config import PeerConfig
from tests.trainers import build_trainer
from peer.tools.procs import PeerProcess, wait_for

PEERS = 3
STEPS = 300
SPLIT = dict(partition="dirichlet", alpha=0.3, shard_count=PEERS, data_seed=0)


def peer_args(i: int, seeds: list[str]) -> list[str]:
    return ["--seeds", ",".join(seeds), "--shard-index", str(i), "--shard-count", str(PEERS),
            "--partition", "dirichlet", "--alpha", "0.3", "--data-seed", "0", "--seed", str(i),
            "--max-steps", str(STEPS), "--steps-per-second", "60", "--gossip-interval", "0.4"]


def merged_from_both_others(peers: list[PeerProcess]) -> bool:
    for p in peers:
        with p.admin() as client:
            merged = {m.peer_id for m in client.list_peers().peers if m.merges > 0}
        if merged != {q.peer_id for q in peers if q is not p}:
            return False
    return True


def test_gossiping_peers_beat_peers_trained_alone_on_their_shard(launch) -> None:
    peers = launch(PEERS, peer_args)
    wait_for(lambda: all(p.status().training_done for p in peers), timeout=120, what="training to finish")
    wait_for(lambda: merged_from_both_others(peers), timeout=60, what="every peer to merge both others")
    for i, p in enumerate(peers):
        status = p.status()
        assert status.steps == STEPS and status.merges >= 2
        alone = build_trainer(PeerConfig(shard_index=i, seed=i, steps_per_second=0, **SPLIT))
        alone.train_steps(STEPS)
        alone_accuracy = alone.evaluate()
        print(f"{p.peer_id}: gossip {status.accuracy:.3f} ({status.merges} merges) vs alone {alone_accuracy:.3f}")
        assert status.accuracy > alone_accuracy + 0.05, (
            f"{p.peer_id}: gossip {status.accuracy:.3f} vs alone {alone_accuracy:.3f}")
