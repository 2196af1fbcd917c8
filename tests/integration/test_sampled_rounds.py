"""`--mode sampled` between real peers on loopback: server-free rounds advance, every peer
ends on the aggregate, accuracy rises, and a round whose aggregator is SIGKILLed mid-round
is taken by the next live peer in hash order."""

from __future__ import annotations

import json
import signal

import pytest

from peer.tools.cli import main
from peer.tools.procs import PeerProcess, wait_for
from protocol.rounds import ranking

PEERS = 4
ROLES = {"trainer", "aggregator", "trainer+aggregator", "idle"}


def sampled_args(trainers: int, deadline: float = 2.0):  # noqa: ANN201 - the launcher's args_for
    def args_for(i: int, seeds: list[str]) -> list[str]:
        return ["--seeds", ",".join(seeds), "--shard-index", str(i), "--shard-count", str(PEERS),
                "--data-seed", "0", "--seed", str(i), "--mode", "sampled", "--round-trainers", str(trainers),
                "--round-steps", "10", "--round-deadline", str(deadline), "--probe-period", "0.5"]
    return args_for


def rounds(peers: list[PeerProcess]) -> list[int]:
    return [p.status().round for p in peers]


def test_sampled_rounds_advance_and_every_peer_learns_from_the_aggregate(launch, capsys) -> None:
    peers = launch(PEERS, sampled_args(trainers=3))
    start = [p.status() for p in peers]
    assert all(s.mode == "sampled" for s in start)
    first = max(s.round for s in start)
    # Three trainers of four: each round leaves one peer out, which keeps the latest aggregate
    # it saw and catches up when sampled again (or by asking a peer after a deadline).
    wait_for(lambda: min(rounds(peers)) >= first + 8, timeout=60, what="every peer to hold 8 more rounds' aggregate")
    wait_for(lambda: all(p.status().accuracy >= 0.8 for p in peers), timeout=30, what="every peer to learn")
    statuses = [p.status() for p in peers]
    for s in statuses:
        print(f"{s.peer_id}: round {s.round} ({s.round_role}), accuracy {s.accuracy:.3f}, "
              f"{s.rounds_aggregated} aggregated, {s.steps} steps")
        assert s.round_role in ROLES, s
    assert sum(s.rounds_aggregated for s in statuses) >= 8  # server-free: the rounds were closed by peers
    assert sum(s.rounds_aggregated > 0 for s in statuses) >= 2  # ... and by more than one of them
    # Training happens only in rounds: about round_steps per round a peer was sampled in.
    assert all(0 < s.steps <= 10 * (s.round + 2) for s in statuses)
    with peers[0].admin() as admin:
        samples = admin.metrics().samples
    assert samples["hearsay_mode_info{mode=sampled}"] == 1
    assert samples["hearsay_round"] >= 8
    # `hearsay status`, as text and as JSON.
    assert main(["status", "--admin", peers[0].admin_address]) == 0
    assert "mode          sampled rounds: holds round " in capsys.readouterr().out
    assert main(["status", "--json", "--admin", peers[0].admin_address]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["mode"] == "sampled" and shown["round"] >= 8 and shown["round_role"] in ROLES


@pytest.mark.slow  # tests/peer/test_sampled_rounds.py runs the same scenario in-process in the default run
def test_an_aggregator_killed_mid_round_is_replaced_and_rounds_go_on(launch) -> None:
    peers = launch(PEERS, sampled_args(trainers=0))
    wait_for(lambda: min(rounds(peers)) >= 2, timeout=60, what="every peer to hold round 2's aggregate")
    addresses = [p.gossip_address for p in peers]
    held = max(rounds(peers))
    # The aggregator of the round in progress, as every peer's view (all four live) has it.
    victim = next(p for p in peers if p.gossip_address == ranking(held + 1, addresses, "aggregate")[0])
    victim.signal(signal.SIGKILL)
    survivors = [p for p in peers if p is not victim]
    before = sum(p.status().rounds_aggregated for p in survivors)
    # The next rounds whose first aggregator in hash order is the dead peer: the next live one takes them.
    victim_rounds = [r for r in range(held + 1, held + 40)
                     if ranking(r, addresses, "aggregate")[0] == victim.gossip_address][:2]
    target = max(victim_rounds[-1], held + 4)
    wait_for(lambda: min(rounds(survivors)) >= target, timeout=90,
             what=f"the survivors to pass round {target} (the dead aggregator's rounds: {victim_rounds})")
    statuses = [p.status() for p in survivors]
    assert sum(s.rounds_aggregated for s in statuses) >= before + (target - held - 1)
    assert all(s.accuracy >= 0.5 for s in statuses), statuses  # from 0.11 at the shared start
