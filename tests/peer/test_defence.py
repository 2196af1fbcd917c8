"""The daemon's defence: batched merges one per sender, verdicts into reputation, the local validator."""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
import torch

from peer.runtime.config import PeerConfig
from peer.runtime.defence import Defence
from peer.runtime.node import Node, build_trainer_and_validation
from tests.trainers import build_trainer
from peer.runtime.validation import make_validator, split_validation
from protocol.merge import RULES, BristleRule, Contribution, LossCheck, MergeReport, Validator, make_rule
from protocol.reputation import Reputation


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def shifted(state: dict[str, np.ndarray], by: float) -> dict[str, np.ndarray]:
    return {k: (v + by).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in state.items()}


@pytest.fixture(scope="module")
def trainer():  # noqa: ANN201 - a peer.runtime.trainer.Trainer
    torch.set_num_threads(1)
    return build_trainer(PeerConfig(seed=3, steps_per_second=0))


def test_a_batch_rule_merges_once_it_has_one_model_from_each_of_enough_senders(trainer) -> None:  # noqa: ANN001
    defence = Defence(Reputation(), clock=Clock())
    rule = make_rule("median")  # merge_batch 4
    state = trainer.state()
    before = trainer.digest()
    # The same sender twice: its newer model replaces the older one, it cannot fill the batch alone.
    for sender in ("a", "a", "b", "c"):
        assert defence.merge(trainer, rule, Contribution(shifted(state, 0.01), sender=sender)) is None
    assert defence.pending() == 3 and trainer.digest() == before
    report = defence.merge(trainer, rule, Contribution(shifted(state, 0.01), sender="d"))
    assert report is not None and [v.sender for v in report.verdicts] == ["a", "b", "c", "d"]
    assert defence.pending() == 0 and trainer.digest() != before


def test_outlier_verdicts_ban_the_sender_and_the_ban_lifts_with_time(trainer) -> None:  # noqa: ANN001
    clock = Clock()
    defence = Defence(Reputation(), clock=clock)
    rule = BristleRule()
    far = shifted(trainer.state(), 1e3)
    for _ in range(3):
        report = defence.merge(trainer, rule, Contribution(far, sender="evil"))
        assert report is not None and report.verdicts[0].kind == "outlier"
    score, banned, reason = defence.standing("evil")
    assert banned and score < -0.25 and reason.startswith("banned") and "3 outlier" in reason
    assert defence.is_banned("evil") and not defence.is_banned("friend")
    assert defence.standing("friend") == (1.0, False, "")
    clock.now += 10 * 120.0  # ten half-lives: the deficit shrinks 1024-fold, past readmit_above
    assert not defence.is_banned("evil")


def test_without_reputation_nobody_is_banned(trainer) -> None:  # noqa: ANN001
    defence = Defence(None)
    for _ in range(5):
        defence.merge(trainer, BristleRule(), Contribution(shifted(trainer.state(), 1e3), sender="evil"))
    assert not defence.is_banned("evil") and defence.standing("evil") == (1.0, False, "")


def test_the_validation_split_is_seeded_disjoint_and_never_empties_a_side() -> None:
    shard = np.arange(100, 150)
    train, held = split_validation(shard, 0.2, seed=7)
    assert len(held) == 10 and len(train) == 40
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(shard)
    assert np.array_equal(split_validation(shard, 0.2, seed=7)[1], held)
    assert len(split_validation(np.arange(2), 0.9, seed=0)[0]) == 1  # at least one sample left to train on
    assert len(split_validation(shard, 0.0, seed=0)[1]) == 0
    with pytest.raises(ValueError):
        split_validation(shard, 1.0, seed=0)


def test_the_loss_check_scores_a_seeded_subsample_of_at_most_its_limit() -> None:
    """Two passes per merge over a whole large shard would cost as much as training: the
    validator sees ``limit`` samples, the same ones on every call and every peer."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(2000, 4), torch.randint(0, 3, (2000,))
    weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    capped = make_validator(model, x, y, limit=100)
    keep = np.sort(np.random.default_rng(0).choice(2000, size=100, replace=False))
    with torch.no_grad():
        expected = float(torch.nn.functional.cross_entropy(model(x[keep]), y[keep]))
        whole = float(torch.nn.functional.cross_entropy(model(x), y))
    assert capped(weights) == pytest.approx(expected, rel=1e-6) and capped(weights) != pytest.approx(whole, rel=1e-4)
    assert make_validator(model, x, y, limit=5000)(weights) == pytest.approx(whole, rel=1e-6)


def test_the_daemon_holds_out_its_validation_split_and_gives_bristle_a_loss_check() -> None:
    config = PeerConfig(seed=3, steps_per_second=0, merge="bristle", validation_split=0.25)
    trainer, (_x, y) = build_trainer_and_validation(config)
    assert trainer.samples + len(y) == 1437 and len(y) == round(0.25 * 1437)
    node = Node(config)
    rule = node._make_rule("bristle")
    assert isinstance(rule, BristleRule) and rule.validator is not None
    loss = rule.validator(node.trainer.state())
    assert math.isfinite(loss) and loss > 0
    assert node._make_rule("vc").name == "vc"
    off = Node(PeerConfig(seed=3, steps_per_second=0, merge="bristle", loss_check=False))
    rule_off = off._make_rule("bristle")
    assert isinstance(rule_off, BristleRule) and rule_off.validator is None


class CheckedMean:
    """A loss-checked rule of no class ``peer.runtime.node`` knows: only the ``LossCheckedRule`` protocol
    can tell the daemon to give it the validator."""

    name = "checked-mean"
    buffer = 1

    def __init__(self) -> None:
        self.validator: Validator | None = None
        self.loss_check: LossCheck | None = None

    def merge(self, local: Contribution, received: Sequence[Contribution]) -> dict[str, np.ndarray]:
        return make_rule("mean").merge(local, received)

    def merge_report(self, local: Contribution, received: Sequence[Contribution]) -> MergeReport:
        return MergeReport(self.merge(local, received), ())


def test_the_daemon_gives_its_validator_to_rules_with_a_loss_check_only(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setitem(RULES, CheckedMean.name, CheckedMean)
    node = Node(PeerConfig(seed=3, steps_per_second=0, validation_split=0.25))
    checked = node._make_rule(CheckedMean.name)
    assert isinstance(checked, CheckedMean) and checked.validator is not None
    assert math.isfinite(checked.validator(node.trainer.state()))
    for name in ("clip", "median", "vc"):  # robust or not, without a loss check: nothing to give
        assert not hasattr(node._make_rule(name), "validator")
    off = Node(PeerConfig(seed=3, steps_per_second=0, loss_check=False))
    assert off._make_rule(CheckedMean.name).validator is None


def test_training_goes_on_while_the_loss_check_judges_a_received_model() -> None:
    """The loss check evaluates two models per merge (about nine CNN steps' worth): the daemon
    judges on a snapshot, outside the trainer's lock, and merges the verdict into the model as
    training left it. Held under the lock, a step waited for the whole judgement."""
    torch.set_num_threads(1)
    trainer = build_trainer(PeerConfig(seed=3, steps_per_second=0))
    judging, release = threading.Event(), threading.Event()
    base = make_validator(copy.deepcopy(trainer.model), trainer.train_x[:64], trainer.train_y[:64])

    def slow_validator(tensors: Mapping[str, np.ndarray]) -> float:
        judging.set()
        assert release.wait(30), "the test never released the validator"
        return base(tensors)

    rule = BristleRule(validator=slow_validator, centre_window=0)
    defence = Defence(None)
    received = shifted(trainer.state(), 0.001)
    merged: list[MergeReport | None] = []
    merger = threading.Thread(target=lambda: merged.append(
        defence.merge(trainer, rule, Contribution(received, sender="b"))))
    merger.start()
    try:
        assert judging.wait(30), "the merge never called the validator"
        steps = trainer.stats().steps
        stepper = threading.Thread(target=trainer.step)
        stepper.start()
        stepper.join(10)
        stepped = not stepper.is_alive() and trainer.stats().steps == steps + 1
        stepped_state = trainer.state()
    finally:
        release.set()
        merger.join(30)
    assert stepped, "a training step waited for the loss check"
    report = merged[0]
    assert report is not None and [v.kind for v in report.verdicts] == ["ok"]
    # The verdict lands on the model as the step left it: the merge moved it some way s (the
    # sender's stake and the inner mean decide how far) straight towards the received model.
    after, names = trainer.state(), [k for k, v in stepped_state.items() if v.dtype.kind == "f"]
    moved = np.concatenate([(after[k] - stepped_state[k]).ravel() for k in names]).astype(np.float64)
    towards = np.concatenate([(received[k] - stepped_state[k]).ravel() for k in names]).astype(np.float64)
    share = float(moved @ towards / (towards @ towards))
    assert 0.0 < share <= 1.0
    np.testing.assert_allclose(moved, share * towards, atol=1e-6)
