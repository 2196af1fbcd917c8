"""`hearsay cluster` tells the truth: real peer processes, small scale.

- "target reached" means every peer at or above it in the same poll, with that time;
- a peer that does not answer at the end is an error (exit 1, reason in results.json:
  test_cluster_unreachable.py);
- peers not yet answering show as "starting", never as "unreachable";
- data set, model and evaluation options reach every peer; --duration is kept;
- the final accuracy is on the full test set, the live one on the evaluation subset.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from peer.data.datasets import FASHION_MNIST_DIR
from peer.tools.cluster import FINAL_TIMEOUT, STATUS_TIMEOUT
from tests.integration.cluster_runs import cluster, finish, results


def assert_starting_until_first_answer(r: dict[str, Any]) -> None:
    """Before a peer first answers, it is "starting" in every poll, never "unreachable"."""
    for peer in r["peers"]:
        first = peer["started_answering_s"]
        assert first is not None, peer
        before = [h["state"][peer["id"]] for h in r["history"] if h["t"] < first]
        assert set(before) <= {"starting"}, (peer["id"], before)
        assert r["history"][0]["state"][peer["id"]] in ("starting", "up")


def test_reached_means_every_peer_at_the_target_together_and_final_accuracy_is_on_the_full_set(
        tmp_path: Path) -> None:
    target = 0.85
    code, output = finish(cluster(tmp_path, "-n", "2", "--duration", "240", "--target-accuracy", str(target),
                                  "--eval-samples", "200", "--gossip-interval", "0.5"), timeout=400)
    assert code == 0, output[-3000:]
    r = results(tmp_path)
    assert r["outcome"] == "target reached" and r["all_reached_target"] is True
    at = r["reached_target_at_s"]
    moment = next(h for h in r["history"] if h["t"] == at)
    assert len(moment["accuracy"]) == 2 and min(moment["accuracy"].values()) >= target
    earlier = [h for h in r["history"] if h["t"] < at]
    assert all(len(h["accuracy"]) < 2 or min(h["accuracy"].values()) < target for h in earlier)
    assert_starting_until_first_answer(r)
    # Live accuracy on 200 of the 360 digits test images; the final one on all 360.
    assert "200" in r["evaluation"]["accuracy"] and "all 360 test samples" in r["evaluation"]["final_accuracy"]
    for peer in r["peers"]:
        assert peer["state"] == "up" and peer["dataset"] == "digits" and 0.5 < peer["final_accuracy"] <= 1.0
        assert "evaluating on 200 of 360 test samples" in Path(peer["log"]).read_text()
        assert peer["deaths"] == 0, peer  # nobody was killed: a death would be a false one
    assert "full test" in output
    # What an operator reads: where the results and the plot are, the counters, a real PNG.
    assert "results:" in output and "plot:" in output
    assert [p["id"] for p in r["peers"]] == ["peer-0", "peer-1"]
    for peer in r["peers"]:
        for key in ("steps", "exchanges", "bytes_sent", "bytes_received"):
            assert peer[key] > 0, (peer["id"], key)
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_duration_is_kept_from_launch_and_start_up_shows_as_starting(tmp_path: Path) -> None:
    duration = 12.0
    code, output = finish(cluster(tmp_path, "-n", "2", "--duration", str(duration)), timeout=300)
    r = results(tmp_path)
    # The stop signal goes out at the duration, plus at most the final status window.
    assert duration <= r["run_seconds"] <= duration + FINAL_TIMEOUT + 1, r["run_seconds"]
    # The peers' learning rate anneals to 0 at the duration, counted from their launch too.
    assert r["peer_lr_args"] == ["--lr-schedule", "cosine", "--lr-horizon", str(duration)]
    for peer in r["peers"]:
        if peer.get("steps"):  # it trained (on a loaded machine a peer may never answer: see below)
            left = re.search(r"learning rate 0.05, cosine down to 0 over the (-?[\d.]+) s left",
                             Path(peer["log"]).read_text())
            # Start-up counts: less than the duration is left (nothing, under a heavy load).
            assert left is not None and float(left.group(1)) < duration, peer["log"]
    assert r["history"][-1]["t"] <= duration + STATUS_TIMEOUT + 1
    for peer in r["peers"]:
        first = peer["started_answering_s"]
        states = [h["state"][peer["id"]] for h in r["history"]]
        if first is None:  # a loaded machine: it never answered, and that is the reason given
            assert set(states) == {"starting"} and code == 1 and "never answered" in peer["reason"], peer
        else:
            assert set(states[:[h["t"] for h in r["history"]].index(first)]) <= {"starting"}, states


def test_one_peer_alone_on_its_shard_with_a_plugin_data_set_and_eval_options(tmp_path: Path) -> None:
    # Target 0: the run ends at the first poll where the peer answers with an evaluation.
    code, output = finish(cluster(tmp_path, "-n", "1", "--shard-count", "3", "--duration", "300",
                                  "--target-accuracy", "0", "--dataset", "tests.peer.user_plugins:sized_dataset",
                                  "--dataset-arg", "n=60", "--model", "tests.peer.user_plugins:linear_model",
                                  "--eval-samples", "10", "--eval-every", "5", "--eval-budget", "0.5"), timeout=400)
    assert code == 0, output[-3000:]
    r = results(tmp_path)
    (peer,) = r["peers"]
    assert peer["samples"] == 20  # the first of 3 shards of the plug-in's 60 training samples
    assert peer["dataset"] == "tests.peer.user_plugins:sized_dataset"
    assert "evaluating on 10 of 30 test samples (seeded subset, seed 0), at most every 5 steps and 50%" \
        in Path(peer["log"]).read_text()
    assert 0.0 <= peer["final_accuracy"] <= 1.0 and "all 30 test samples" in r["evaluation"]["final_accuracy"]


def test_bad_cluster_options_are_one_line_errors_before_any_peer_starts(tmp_path: Path) -> None:
    for args, message in ((["-n", "4", "--shard-count", "2"], "smaller than -n 4"),
                          (["--dataset", "idx:/nonexistent"], "is not a directory"),
                          (["--model", "resnet"], "resnet"),
                          (["--eval-budget", "0"], "eval_budget must be in (0, 1]")):
        code, output = finish(cluster(tmp_path / "bad", *args), timeout=120)
        assert code == 2, (args, output)
        assert len(output.strip().splitlines()) == 1 and message in output, (args, output)
        assert not (tmp_path / "bad" / "logs").exists()


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_four_peers_learn_fashion_mnist_with_default_settings_and_no_false_deaths(tmp_path: Path) -> None:
    """A variant of issue 15's check (4 peers, the CNN, default settings, 180 s: every peer
    reachable, exit 0, every peer >= 0.85, no false deaths) that holds on a loaded machine
    too: it runs until every peer's live accuracy is >= 0.85 at once (at most 10 minutes),
    then checks the full test set. The full-set bounds are lower than the live target
    because the live figure is a 1000-sample subset of a model up to ~100 steps old: in
    one run at load 25, peer-0 showed 0.871 live and 0.800 on the full set a second later
    (the other three: 0.861, 0.839, 0.834), the models still moving a few points per merge
    at ~450 steps."""
    code, output = finish(cluster(tmp_path, "-n", "4", "--dataset", "fashion-mnist", "--model", "cnn",
                                  "--target-accuracy", "0.85", "--duration", "600"), timeout=900)
    assert code == 0, output[-3000:]
    r = results(tmp_path)
    assert r["all_reached_target"] and not r["unreachable"]
    for peer in r["peers"]:
        assert peer["state"] == "up", peer
        assert peer["final_accuracy"] >= 0.78, peer
        assert peer["deaths"] == 0, peer  # nobody was killed: every death would be a false one
    assert sum(p["final_accuracy"] for p in r["peers"]) / 4 >= 0.82
