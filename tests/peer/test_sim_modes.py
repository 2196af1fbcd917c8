"""Issue 11 in the simulator and the engine: fanout (Epidemic Learning), stragglers, churn."""

from __future__ import annotations

import pytest

from peer.data import load_dataset
from peer.sim.swarm import SimConfig, Simulator

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():  # noqa: ANN201 - a peer.data.Dataset
    return load_dataset("digits")


def small(**kw) -> SimConfig:  # noqa: ANN003
    base = {"peers": 5, "gossip_interval": 5.0, "batch_size": 16}
    return SimConfig(**{**base, **kw})


def test_fanout_exchanges_with_several_peers_and_merges_once_per_round(digits) -> None:  # noqa: ANN001
    sim = Simulator(small(fanout=3), digits)
    merged_inputs: list[int] = []
    for p in sim.peers:  # count the inputs of each merge the defence makes
        original = p.engine.defence._merge_now

        def spy(trainer, rule, batch, *rest, original=original):  # noqa: ANN001, ANN002, ANN202
            merged_inputs.append(len(batch))
            return original(trainer, rule, batch, *rest)
        p.engine.defence._merge_now = spy
    sim.run_until(21.0)  # 4 ticks per peer (random phases in [0, 5))
    ticks = 4 * sim.config.peers
    assert sim.stats.exchanges == 3 * ticks
    # Nothing is merged on arrival: one merge per tick at most, each of everything that arrived.
    assert 0 < sim.stats.merges <= ticks and sim.stats.merges == len(merged_inputs)
    assert max(merged_inputs) >= 3 and all(1 <= k <= sim.config.peers - 1 for k in merged_inputs)
    assert all(p.engine.fanout == 3 and p.engine.defence.defer for p in sim.peers)


def test_stragglers_step_slower_and_crashed_peers_neither_train_nor_answer(digits) -> None:  # noqa: ANN001
    sim = Simulator(small(slow_fraction=0.4, slow_factor=4.0, churn=((0, 10.0, 30.0),)), digits)
    sim.run_until(40.0)
    steps = sorted(p.trainer.stats().steps for p in sim.peers[1:])
    slow = [p for p in sim.peers if p.speed < 0.5]
    assert len(slow) == 2 and all(p.trainer.stats().steps <= 10 for p in slow if p.index != 0)
    assert steps[-1] == 40
    # Peer 0 was down for 20 of the 40 s: it missed those steps, and exchanges to it failed.
    assert sim.peers[0].trainer.stats().steps <= 40 * sim.peers[0].speed - 19 * sim.peers[0].speed + 1
    assert any(p.engine.links.get(sim.peers[0].address) and p.engine.links[sim.peers[0].address].failures
               for p in sim.peers[1:])


def test_merged_accuracies_score_each_peers_model_as_it_was_right_after_its_latest_merge(digits) -> None:  # noqa: ANN001
    import numpy as np
    import torch

    from peer.sim.swarm import make_model

    sim = Simulator(small(), digits)
    sim.run_until(12.0)
    merged, now = sim.merged_accuracies(), sim.accuracies()
    assert sim.stats.merges > 0 and not np.array_equal(merged, now)
    p = next(p for p in sim.peers if p.engine.defence.merged_state is not None)
    model = make_model(sim.config, digits, 0)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                           for k, v in p.engine.defence.merged_state.items()})
    with torch.no_grad():
        model.eval()
        expected = float((model(p.trainer.test_x).argmax(1) == p.trainer.test_y).float().mean())
    assert merged[p.index] == pytest.approx(expected, abs=1e-6)  # one image is 1/360: float32 mean vs exact
    lonely = Simulator(small(loss=1.0), digits)  # nothing ever merged: the current models are scored
    lonely.run_until(12.0)
    assert np.array_equal(lonely.merged_accuracies(), lonely.accuracies())


def test_fanout_2_learns_no_slower_than_fanout_1_at_equal_rounds(digits) -> None:  # noqa: ANN001
    """Epidemic Learning's merge (each of the K + 1 models 1/(K + 1), right after the round's
    exchanges) must pay for its extra exchanges. With the local model kept at β = 1/2 against
    all K, and the replies merged a round late, fanout 2 ended 0.20 below fanout 1 here
    (0.657 vs 0.861, mean of rounds 8-10)."""
    import numpy as np

    def last_rounds(fanout: int) -> float:
        sim = Simulator(SimConfig(peers=8, gossip_interval=10.0, batch_size=32, split="dirichlet", alpha=0.5,
                                  shared_init=True, seed=0, fanout=fanout), digits)
        accuracies = []
        for r in range(1, 11):  # 10 rounds of 10 local steps
            sim.run_until(10.0 * r)
            accuracies.append(float(sim.merged_accuracies().mean()))
        return float(np.mean(accuracies[-3:]))

    one, two = last_rounds(1), last_rounds(2)
    assert two >= one, (one, two)  # measured: 0.861 (fanout 1), 0.879 (fanout 2)


def test_fanout_rounds_over_links_with_latency_end(digits) -> None:  # noqa: ANN001
    """A fanout round gathers its exchanges in child tasks; with link latency they all sleep on
    the virtual clock at once. The clock used to count only the coroutines it spawned, so
    this hung forever (bench/wallclock.py's gossip_vc_fanout never returned)."""
    sim = Simulator(small(fanout=2, delay=0.05, bandwidth=10e6), digits)
    sim.run_until(21.0)
    assert sim.stats.exchanges == 2 * 4 * sim.config.peers and sim.stats.merges > 0
    assert sim.now == 21.0


def test_round_based_methods_follow_the_lr_schedule_on_gossips_virtual_time(digits) -> None:  # noqa: ANN001
    """bench.learning gives every method the same schedule: FedAvg's and sampled rounds' clients
    (bench.sampled.train_on_clock) take step k at the virtual time a gossip peer takes it, so
    after the same steps they step at the same rate, and a straggler anneals on its own time."""
    from bench.sampled import train_on_clock
    from peer.runtime.lr_schedule import lr_factor

    cfg = small(lr_schedule="cosine", lr_horizon=20.0, gossip_interval=1000.0)  # no exchange: steps only
    gossip, rounds = Simulator(cfg, digits), Simulator(cfg, digits)
    gossip.run_until(12.0)
    for i in range(cfg.peers):
        train_on_clock(rounds, i, 0.0, 6)
        train_on_clock(rounds, i, 6.0, 6)
    for g, r in zip(gossip.peers, rounds.peers):
        assert r.trainer.stats().steps == g.trainer.stats().steps == 12
        # The rate of step 12 (begun at step 1, t = 1; 11 of the 19 s to the horizon gone).
        assert r.trainer.lr == pytest.approx(g.trainer.lr) == pytest.approx(0.05 * lr_factor("cosine", 11 / 19, 0.0))
    slow = Simulator(cfg, digits)
    train_on_clock(slow, 0, 0.0, 5, speed=0.25)  # steps at t = 4, 8, ..., 20: the last one at the horizon
    assert slow.peers[0].trainer.lr == 0.0


def test_must_hold_2_judges_every_gossip_method_of_the_grid() -> None:
    """The grid's verdict names every method that meets must-hold 2's halves; session 12's
    gossip_vc_topk16 met the asynchronous half and was left out because the judge listed
    the methods it looked at by hand."""
    from bench.learning import METHODS, must_hold_2

    def row(rounds: int | None, mb: float) -> dict:
        return {"rounds_to_95pct_fedavg": rounds, "bytes_per_round": mb * 1e6}

    gossip = [m for m in METHODS if m.startswith("gossip_vc")]
    rows = {"fedavg": row(10, 10.0), "centralized": row(1, 0.0), **{m: row(15, 19.0) for m in gossip}}
    verdict = must_hold_2(rows)
    assert "server-free <=1.2x at <=1x bytes: NONE" in verdict  # 1.5x the rounds; centralized is not server-free
    assert all(m in verdict for m in gossip)
    assert "gossip_vc_topk16" in verdict
    rows["gossip_vc_topk16"] = row(16, 10.0)  # 1.6x the rounds: misses
    rows.update({m: row(None, 1.0) for m in gossip if m != "gossip_vc_topk16"})
    assert must_hold_2(rows).endswith(f"async VC <=1.5x at <=2x bytes: NONE (of {', '.join(gossip)})")


def test_average_model_accuracy_scores_the_mean_of_the_peers_models(digits) -> None:  # noqa: ANN001
    """The bench's split of gossip's gap into progress and drift rests on this figure: the
    accuracy of the element-wise mean of every peer's weights, not of any one peer's model."""
    import numpy as np
    import torch

    from peer.sim.setup import make_model

    sim = Simulator(small(gossip_interval=1000.0), digits)  # independent inits, no exchange
    sim.run_until(30.0)
    states = sim.states()
    model = make_model(sim.config, digits, 0)
    model.load_state_dict({k: torch.from_numpy(np.mean([s[k] for s in states], axis=0).astype(states[0][k].dtype))
                           for k in states[0]})
    trainer = sim.peers[0].trainer
    with torch.no_grad():
        model.eval()
        expected = float((model(trainer.test_x).argmax(1) == trainer.test_y).float().mean())
    assert sim.average_model_accuracy() == pytest.approx(expected)
    own = sim.accuracies()
    assert not np.allclose(own, expected)  # five trained models and their (untrained-looking) mean differ


def test_drift_bench_reads_simconfig_overrides_by_their_types() -> None:
    """bench.drift's --set: each value as its SimConfig field's type; a name SimConfig lacks, or a
    pair without '=', is refused rather than silently ignored."""
    from bench.drift import overrides

    got = overrides(["fanout=3", "merge_momentum=reset", "loss=0.25", "shared_init=true"])
    assert got == {"fanout": 3, "merge_momentum": "reset", "loss": 0.25, "shared_init": True}
    assert SimConfig(**got).check().fanout == 3
    for bad in (["fanouts=3"], ["fanout"]):
        with pytest.raises(SystemExit, match="FIELD=VALUE"):
            overrides(bad)


def test_learning_bench_names_its_plots_after_its_json(tmp_path) -> None:  # noqa: ANN001
    """Grid settings run one process each into one directory: the PNGs next to each JSON take its
    name, so a later setting cannot overwrite an earlier one's plots."""
    import json

    from bench.learning import main

    common = ["--rounds", "2", "--no-wallclock", "--datasets", "digits", "--peers", "16", "--models", "mlp",
              "--methods", "fedavg"]
    for split in ("iid", "dir0.1"):
        assert main([*common, "--splits", split, "--json", str(tmp_path / f"{split}.json")]) == 0
    for split, alpha in (("iid", None), ("dir0.1", 0.1)):
        (row,) = json.loads((tmp_path / f"{split}.json").read_text())["configs"]
        assert (row["method"], row["alpha"]) == ("fedavg", alpha)
        for kind in ("rounds", "bytes"):
            assert (tmp_path / f"{split}_accuracy_vs_{kind}.png").stat().st_size > 0
    assert not list(tmp_path.glob("accuracy_vs_*.png"))
