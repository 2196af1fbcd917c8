from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch

from peer.runtime.config import PeerConfig
from peer.data.datasets import FASHION_MNIST_DIR
from peer.runtime.evaluation import EvalPolicy
from peer.models import build_model
from tests.trainers import build_trainer
from peer.runtime.plugins import PluginError
from peer.runtime.trainer import TRAINER_NICENESS, Trainer, resolve_device


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_zoo_models_train_on_digits(name: str) -> None:
    t = build_trainer(PeerConfig(model=name, seed=1, steps_per_second=0))
    before = t.evaluate()
    t.train_steps(150)
    assert t.evaluate() > max(0.8, before + 0.3)
    assert t.stats().steps == 150 and t.stats().version == 150


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_cnn_on_28x28_is_the_pooled_cnn_and_learns_fashion_mnist(tmp_path) -> None:  # noqa: ANN001
    from peer.models import PooledCNN, SmallCNN

    assert isinstance(build_model("cnn", (1, 28, 28), 10), PooledCNN)
    assert isinstance(build_model("cnn", (1, 8, 8), 10), SmallCNN)  # digits keep the measured model
    pooled = sum(p.numel() for p in build_model("cnn", (1, 28, 28), 10).parameters())
    small = sum(p.numel() for p in build_model("cnn-small", (1, 28, 28), 10).parameters())
    assert pooled < small / 2
    t = build_trainer(PeerConfig(dataset="fashion-mnist", dataset_arg=["limit=3000"], data_cache=str(tmp_path),
                                 model="cnn", seed=1, steps_per_second=0, eval_every=10**9))
    t.train_steps(200)
    assert t.evaluate() > 0.7  # 200 steps of batch 32 on 3000 real images; random guessing is 0.10


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_evaluation_scores_a_channels_last_copy_and_the_training_model_stays_contiguous(tmp_path) -> None:  # noqa: ANN001
    """The evaluation copy takes the layout its forward pass is fastest in (bench.eval_layout: about
    half the CPU for the CNN on 28x28), keeps it across later loads of the weights, and scores as
    the contiguous model does; the training model's tensors, which merges and codecs write and
    read as flat buffers, are never converted."""
    from peer.runtime.evaluation import accuracy, eval_layout

    t = build_trainer(PeerConfig(dataset="fashion-mnist", dataset_arg=["limit=500"], data_cache=str(tmp_path),
                                 model="cnn", seed=1, steps_per_second=0, eval_every=10**9, eval_samples=600))
    for _ in range(2):  # the first evaluation copies the model, the second loads the weights into the copy
        t.train_steps(20)
        score = t.evaluate()
        convs = [p for p in t._eval_model.parameters() if p.dim() == 4]
        assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
        assert any(not p.is_contiguous() for p in convs)  # the 16-channel conv (one channel is both layouts)
        assert all(p.is_contiguous() for p in t.model.parameters())
        assert all(a.flags.c_contiguous for a in t.state().values())
        assert abs(score - accuracy(t.model, t.test_x, t.test_y)) <= 1 / len(t.test_y)
    mlp = build_model("mlp", (1, 28, 28), 10)
    assert all(p.is_contiguous() for p in eval_layout(mlp).parameters())  # nothing to lay out


def test_training_is_reproducible_from_the_seed() -> None:
    a = build_trainer(PeerConfig(seed=5, steps_per_second=0))
    b = build_trainer(PeerConfig(seed=5, steps_per_second=0))
    c = build_trainer(PeerConfig(seed=6, steps_per_second=0))
    for t in (a, b, c):
        t.train_steps(20)
    assert a.digest() == b.digest() != c.digest()


def test_merge_with_replaces_the_model_and_bumps_the_version() -> None:
    t = build_trainer(PeerConfig(steps_per_second=0))
    zeros = {k: np.zeros_like(v) for k, v in t.state().items()}
    t.merge_with(lambda current: zeros)
    assert all(not v.any() for v in t.state().values())
    assert t.stats().version == 1


def test_merge_in_place_writes_the_models_own_tensors_and_live_reads_them_without_a_copy() -> None:
    t = build_trainer(PeerConfig(steps_per_second=0))
    params = {k: v.data_ptr() for k, v in t.model.state_dict().items()}
    before = t.state()
    seen: dict[str, int] = {}

    def halve(current: dict[str, np.ndarray]) -> None:
        for k, x in current.items():
            seen[k] = x.__array_interface__["data"][0]
            if x.dtype.kind == "f":
                x *= 0.5

    t.merge_in_place(halve)
    assert seen == params  # the merge got the model's own memory, not a copy of it
    after = t.state()
    assert all(np.array_equal(after[k], before[k] * 0.5 if before[k].dtype.kind == "f" else before[k]) for k in after)
    assert t.stats().version == 1
    live, hold = t.live()
    assert hold is not None
    with hold():
        assert all(live[k].__array_interface__["data"][0] == params[k] for k in params)
    from protocol.feedback import spec_of

    assert spec_of(live) == spec_of(dict(live.items())) == spec_of(t.state())  # the spec it carries is the real one


def test_tied_weights_are_merged_once() -> None:
    # Two names for one tensor: merged in place, the second name would be merged again.
    from tests.peer.user_plugins import tiny_dataset

    layer = torch.nn.Linear(4, 4, bias=False)
    model = torch.nn.Sequential(layer, torch.nn.ReLU(), torch.nn.Linear(4, 4, bias=False))
    model[2].weight = layer.weight
    data = tiny_dataset()
    t = Trainer(model, data, np.arange(len(data.train_y)), device=torch.device("cpu"), seed=0, batch_size=8,
                lr=0.1, momentum=0.0)
    before = t.state()["0.weight"].copy()

    def add_one(current: dict[str, np.ndarray]) -> None:
        for x in current.values():
            x += 1.0

    t.merge_in_place(add_one)
    assert np.array_equal(t.state()["0.weight"], before + 1.0) and np.array_equal(t.state()["2.weight"], before + 1.0)


def _momentum(t: Trainer) -> list[torch.Tensor]:
    return [t.optimizer.state[p]["momentum_buffer"].clone() for p in t.model.parameters()]


def test_merge_momentum_keeps_or_zeroes_the_buffer_and_the_next_step_follows() -> None:
    """After a merge, ``reset`` starts SGD's momentum from zero (the next step is a plain
    gradient step from the merged weights); ``keep`` carries on with the old buffer."""
    runs = {}
    # Both ways a merge lands: merge_with (a new model loaded) and merge_in_place (the daemon's).
    for merge_momentum, in_place in (("keep", False), ("reset", False), ("keep", True), ("reset", True)):
        t = build_trainer(PeerConfig(steps_per_second=0, merge_momentum=merge_momentum))
        t.train_steps(5)
        before = _momentum(t)
        if in_place:
            t.merge_in_place(lambda current: None)  # the weights stay: only the optimiser's state can differ
        else:
            t.merge_with(lambda current: current)
        after = _momentum(t)
        if merge_momentum == "reset":
            assert all(not b.any() for b in after) and any(b.any() for b in before)
        else:
            assert all(torch.equal(a, b) for a, b in zip(after, before))
        t.train_steps(1)
        runs[merge_momentum, in_place] = t.digest()
    assert runs["keep", False] != runs["reset", False] and runs["keep", True] != runs["reset", True]
    assert runs["keep", False] == runs["keep", True] and runs["reset", False] == runs["reset", True]
    with pytest.raises(ValueError, match="merge_momentum"):
        build_trainer(PeerConfig(steps_per_second=0, merge_momentum="halve"))


def test_user_model_by_import_path_and_errors() -> None:
    m = build_model("tests.peer.user_plugins:linear_model", (4,), 3)
    assert isinstance(m, torch.nn.Module)
    t = build_trainer(PeerConfig(dataset="tests.peer.user_plugins:tiny_dataset",
                                 model="tests.peer.user_plugins:linear_model", steps_per_second=0, lr=0.1))
    t.train_steps(200)
    assert t.evaluate() > 0.8
    with pytest.raises(PluginError, match="cnn needs"):
        build_model("cnn", (4,), 3)
    with pytest.raises(PluginError, match="not torch.nn.Module"):
        build_model("tests.peer.user_plugins:wrong_type", (4,), 3)


def test_device_choice() -> None:
    assert resolve_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")


# --- evaluation: bounded, seeded, off the model lock, within its share of time ---------------

class _Gates:
    """Events shared by a model and its copies (evaluation runs in a deep copy)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __deepcopy__(self, memo: dict) -> _Gates:
        return self


class _GatedModel(torch.nn.Module):
    """A linear model whose evaluation (eval mode) waits at a gate, so a test can act while
    an evaluation is in progress; ``slow_eval`` instead makes every evaluation take that long."""

    def __init__(self, slow_eval: float = 0.0) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.gates = _Gates()
        self.slow_eval = slow_eval

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            if self.slow_eval:  # the fault injected: an evaluation that costs this much CPU time
                spin_until = time.thread_time() + self.slow_eval
                while time.thread_time() < spin_until:
                    pass
            else:
                self.gates.entered.set()
                self.gates.gate.wait(60)
        return self.linear(x)


def _tiny_trainer(model: torch.nn.Module, policy: EvalPolicy) -> Trainer:
    from tests.peer.user_plugins import tiny_dataset

    data = tiny_dataset()
    return Trainer(model, data, np.arange(len(data.train_y)), device=torch.device("cpu"), seed=0, batch_size=8,
                   lr=0.1, momentum=0.0, eval_policy=policy)


def test_evaluation_leaves_the_model_lock_free_for_gossip_and_status() -> None:
    model = _GatedModel()
    t = _tiny_trainer(model, EvalPolicy())
    evaluating = threading.Thread(target=t.evaluate)
    evaluating.start()
    try:
        assert model.gates.entered.wait(60), "evaluation never started"
        others = threading.Thread(target=lambda: (t.state(), t.digest(), t.merge_with(lambda s: s), t.step()))
        others.start()
        others.join(30)
        assert not others.is_alive(), "state/merge/step waited for an evaluation in progress"
        assert t.stats().version == 2  # the merge and the step went through
    finally:
        model.gates.gate.set()
        evaluating.join(30)
    assert 0.0 <= t.stats().accuracy <= 1.0


class _GatedTrainingModel(_GatedModel):
    """A linear model whose training forward pass waits at a gate: a step held mid-way."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.gates.entered.set()
            self.gates.gate.wait(60)
        return self.linear(x)


def test_a_model_copy_does_not_wait_for_a_step_in_progress_but_a_merge_does() -> None:
    model = _GatedTrainingModel()
    t = _tiny_trainer(model, EvalPolicy(every=1 << 30))
    before = t.state()
    stepping = threading.Thread(target=t.step)
    stepping.start()
    try:
        assert model.gates.entered.wait(60), "the step never started"
        copied: list[dict] = []
        copying = threading.Thread(target=lambda: copied.append(t.state()))
        copying.start()
        copying.join(30)
        assert not copying.is_alive(), "state() waited for a step's forward pass"
        assert all(np.array_equal(copied[0][k], before[k]) for k in before)  # the weights before the step
        merging = threading.Thread(target=lambda: t.merge_with(lambda s: s))
        merging.start()
        merging.join(0.2)
        assert merging.is_alive(), "a merge went through while a step was computing its gradients"
    finally:
        model.gates.gate.set()
        stepping.join(30)
    merging.join(30)
    assert t.stats().version == 2  # the step, then the merge
    assert not all(np.array_equal(t.state()[k], before[k]) for k in before)


def test_the_training_thread_runs_nicer_than_the_peers_other_threads() -> None:
    # An exchange competing with a training step at equal weight for a core lost half its
    # throughput (bench.transport, trainer running): training yields the CPU to the rest.
    model = _GatedModel()
    t = _tiny_trainer(model, EvalPolicy())
    t.start()
    try:
        assert model.gates.entered.wait(60), "the training thread never started"  # in its first evaluation
        trainer = next(th for th in threading.enumerate() if th.name == "hearsay-trainer")
        ours = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        theirs = os.getpriority(os.PRIO_PROCESS, trainer.native_id)
        assert theirs == min(19, ours + TRAINER_NICENESS) and (theirs > ours or ours == 19)
    finally:
        model.gates.gate.set()
        t.stop()


def test_evaluation_keeps_to_its_share_of_the_trainers_time() -> None:
    t = _tiny_trainer(_GatedModel(slow_eval=0.02), EvalPolicy(every=1, budget=0.2))
    evaluations = 0
    t.on_evaluated = lambda _stats: None
    # Until training has used 0.4 CPU-s, not a number of steps: the budget allows an evaluation
    # (0.02 CPU-s) per 0.08 CPU-s of training, and a step of this model costs 0.1-8 ms, so 400
    # steps were sometimes too few for a second evaluation.
    while t.train_cpu_seconds < 0.4:
        before = t.eval_cpu_seconds
        t.step()
        evaluations += t.eval_cpu_seconds > before
    single = t.eval_cpu_seconds / max(1, evaluations)
    assert evaluations >= 2  # it does evaluate; every=1 notwithstanding, only as often as the budget allows
    total = t.eval_cpu_seconds + t.train_cpu_seconds
    assert t.eval_cpu_seconds <= 0.2 * total + single, (t.eval_cpu_seconds, total, evaluations)
    assert evaluations < t.stats().steps / 2


def test_eval_policy_subset_is_seeded_bounded_and_the_same_for_every_peer() -> None:
    a, b = EvalPolicy(samples=500, seed=3), EvalPolicy(samples=500, seed=3)
    assert np.array_equal(a.subset(10000), b.subset(10000)) and len(a.subset(10000)) == 500
    assert not np.array_equal(a.subset(10000), EvalPolicy(samples=500, seed=4).subset(10000))
    assert len(set(a.subset(10000).tolist())) == 500 and np.all(np.diff(a.subset(10000)) > 0)
    assert len(EvalPolicy(samples=0).subset(360)) == 360 and len(EvalPolicy(samples=2000).subset(360)) == 360
    assert EvalPolicy(budget=0.1).wait_after(1.0) == pytest.approx(9.0)
    for bad in ({"samples": -1}, {"every": 0}, {"budget": 0.0}, {"budget": 1.5}):
        with pytest.raises(ValueError):
            EvalPolicy(**bad)  # type: ignore[arg-type]


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_peers_evaluate_on_the_same_bounded_subset_and_accuracy_matches_the_full_set_helper(tmp_path) -> None:  # noqa: ANN001
    from peer.data import load_dataset
    from peer.runtime.evaluation import accuracy

    common = {"dataset": "fashion-mnist", "dataset_arg": ["limit=500"], "data_cache": str(tmp_path),
              "steps_per_second": 0, "data_seed": 2}
    a = build_trainer(PeerConfig(seed=1, eval_samples=700, **common))
    b = build_trainer(PeerConfig(seed=2, eval_samples=700, **common))
    assert len(a.test_y) == 700 and a.test_total == 10000 and torch.equal(a.test_y, b.test_y)
    full = build_trainer(PeerConfig(seed=1, eval_samples=0, **common))
    assert len(full.test_y) == 10000
    data = load_dataset("fashion-mnist", cache_dir=str(tmp_path))
    assert full.evaluate() == pytest.approx(accuracy(full.model, data.test_x, data.test_y))
