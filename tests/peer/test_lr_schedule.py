"""The learning rate over a run: the pure schedule, the trainer following it on its clock,
the options that ask for it, and `hearsay cluster` passing its duration as the horizon."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest
import torch

from peer.runtime.config import ConfigError, PeerConfig, load
from peer.runtime.lr_schedule import LrSchedule, lr_factor, lr_schedule_for, process_started_monotonic
from peer.sim.config import SimConfig
from peer.tools.cli import build_parser, cluster_spec
from peer.tools.cluster import ClusterSpec, check_spec, peer_args
from tests.trainers import build_trainer


# --- the pure schedule ------------------------------------------------------------------------
def test_constant_is_one_everywhere() -> None:
    assert {lr_factor("constant", p, 0.3) for p in (-1.0, 0.0, 0.4, 1.0, 7.0)} == {1.0}


@pytest.mark.parametrize("floor", [0.0, 0.1, 1.0])
def test_cosine_and_linear_start_at_one_end_at_the_floor_and_never_rise(floor: float) -> None:
    for kind in ("cosine", "linear"):
        values = [lr_factor(kind, i / 100, floor) for i in range(101)]
        assert values[0] == 1.0 and values[-1] == pytest.approx(floor)
        assert all(a >= b for a, b in zip(values, values[1:])), kind
        assert lr_factor(kind, 0.5, floor) == pytest.approx((1 + floor) / 2)  # both halve the way at mid-run
        assert lr_factor(kind, -0.5, floor) == 1.0 and lr_factor(kind, 3.0, floor) == pytest.approx(floor)
    # cosine is flat at both ends, linear is not
    assert lr_factor("cosine", 0.1, 0.0) == pytest.approx((1 + math.cos(0.1 * math.pi)) / 2)
    assert lr_factor("linear", 0.1, 0.0) == pytest.approx(0.9)


def test_bad_kind_or_floor_is_refused() -> None:
    with pytest.raises(ValueError, match="lr_schedule must be one of constant, cosine, linear"):
        lr_factor("step", 0.5, 0.0)
    with pytest.raises(ValueError, match="lr_floor"):
        LrSchedule("cosine", end=10.0, floor=1.5)


def test_the_schedule_spans_training_from_its_first_step_to_the_end() -> None:
    s = LrSchedule("linear", end=100.0, floor=0.2)
    assert s.factor(begin=20.0, now=20.0) == 1.0  # a late start still begins at the base rate
    assert s.factor(begin=20.0, now=60.0) == pytest.approx(0.6)  # half of 20..100
    assert s.factor(begin=20.0, now=150.0) == pytest.approx(0.2)  # after the end: the floor
    assert s.factor(begin=120.0, now=120.0) == pytest.approx(0.2)  # started after the end: the floor at once


def test_the_horizon_counts_from_the_process_start() -> None:
    """A child process reads its own age; it cannot exceed the time the parent saw it live,
    and a horizon built from the config ends that many seconds after the start."""
    code = ("import time; from peer.runtime.lr_schedule import process_started_monotonic as p; "
            "print(time.monotonic() - p())")
    launched = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    lived = time.monotonic() - launched
    age = float(out)
    tick = 0.011  # /proc's start time is in clock ticks (100 Hz), rounded down
    assert 0.0 <= age <= lived + tick, (age, lived)
    started = process_started_monotonic()
    assert started <= time.monotonic()
    schedule = lr_schedule_for("cosine", 300.0, 0.1)
    assert schedule is not None and schedule.end == pytest.approx(started + 300.0, abs=tick)
    assert schedule.kind == "cosine" and schedule.floor == 0.1
    assert lr_schedule_for("constant", 300.0, 0.1) is None


# --- the trainer follows it ------------------------------------------------------------------
def _params(t) -> list[torch.Tensor]:  # noqa: ANN001
    return [p.detach().clone() for p in t.model.parameters()]


def test_the_trainer_steps_at_the_scheduled_rate_on_its_clock() -> None:
    now = [1000.0]
    t = build_trainer(PeerConfig(steps_per_second=0, lr=0.08, momentum=0.0))
    t.lr_schedule, t._clock = LrSchedule("linear", end=1010.0, floor=0.0), lambda: now[0]
    assert t.lr == 0.08
    t.step()  # the schedule begins here, at 1000
    assert t.lr == pytest.approx(0.08)
    now[0] = 1005.0
    t.step()
    assert t.lr == pytest.approx(0.04)
    # The base rate can change while a schedule runs: the schedule keeps scaling it.
    t.set_base_lr(0.2)
    assert t.base_lr == 0.2 and t.lr == pytest.approx(0.1)
    now[0] = 1010.0
    before = _params(t)
    t.step()  # at the end, floor 0: the step's rate is 0, and (no momentum) the weights stay
    assert t.lr == 0.0 and all(torch.equal(a, b) for a, b in zip(before, _params(t)))
    t.set_base_lr(0.3)
    assert t.lr == 0.0  # still the floor's fraction


def test_a_constant_trainer_takes_a_new_base_rate_at_once() -> None:
    t = build_trainer(PeerConfig(steps_per_second=0))
    t.set_base_lr(0.01)
    t.step()
    assert t.lr == 0.01 and t.optimizer.param_groups[0]["lr"] == 0.01


def test_a_set_rate_lasts_until_a_restart_from_the_checkpoint() -> None:
    """As every knob `hearsay set` changes: a restored peer takes the rate its options give."""
    t = build_trainer(PeerConfig(steps_per_second=0, lr=0.05))
    t.set_base_lr(0.2)
    t.step()
    saved = t.checkpoint_state()
    restarted = build_trainer(PeerConfig(steps_per_second=0, lr=0.05))
    restarted.restore(saved)
    assert restarted.lr == 0.05 and restarted.stats().steps == 1


def test_the_optimiser_steps_with_the_scheduled_rate() -> None:
    """Two peers alike but for the schedule take the same first step (the schedule starts at
    the base rate); the second step, at half the rate, moves the weights half as far."""
    moves = []
    for schedule in (None, LrSchedule("linear", end=2.0, floor=0.0)):
        t = build_trainer(PeerConfig(steps_per_second=0, seed=3, lr=0.05, momentum=0.0))
        t.lr_schedule, t._clock = schedule, iter([0.0, 1.0]).__next__
        t.step()
        before = _params(t)
        t.step()
        moves.append(torch.cat([(b - a).flatten() for a, b in zip(before, _params(t))]))
    assert torch.allclose(moves[1], moves[0] / 2, rtol=1e-4, atol=1e-7)


# --- options --------------------------------------------------------------------------------
def _run_config(*flags: str) -> PeerConfig:
    return load(build_parser().parse_args(["run", *flags]), environ={})


def test_schedule_options_are_checked() -> None:
    assert (PeerConfig.lr_schedule, PeerConfig.lr_horizon, PeerConfig.lr_floor) == ("constant", 0.0, 0.0)
    c = _run_config("--lr-schedule", "cosine", "--lr-horizon", "600", "--lr-floor", "0.05")
    assert (c.lr_schedule, c.lr_horizon, c.lr_floor) == ("cosine", 600.0, 0.05)
    for flags, message in ((["--lr-schedule", "cosine"], "needs lr_horizon"),
                           (["--lr-schedule", "step"], "lr_schedule"),
                           (["--lr-schedule", "linear", "--lr-horizon", "-1"], "lr_horizon"),
                           (["--lr-schedule", "linear", "--lr-horizon", "10", "--lr-floor", "1.5"], "lr_floor")):
        with pytest.raises((ConfigError, SystemExit)) as e:
            _run_config(*flags)
        if e.type is ConfigError:
            assert message in str(e.value), (flags, e.value)
    with pytest.raises(ValueError, match="lr_schedule"):
        SimConfig(lr_schedule="cosine").check()  # no horizon
    SimConfig(lr_schedule="cosine", lr_horizon=100.0).check()


# --- hearsay cluster ---------------------------------------------------------------------------
def _peer_config(spec: ClusterSpec) -> PeerConfig:
    return _run_config(*peer_args(spec, 1, ["127.0.0.1:1"]))


def test_cluster_anneals_over_its_duration_unless_the_runs_length_is_unknown() -> None:
    c = _peer_config(ClusterSpec(peers=2, duration=300.0))
    assert (c.lr_schedule, c.lr_horizon, c.lr_floor) == ("cosine", 300.0, PeerConfig.lr_floor)
    # A target or a settle time ends the run early: the duration is only a bound.
    assert _peer_config(ClusterSpec(peers=2, duration=300.0, target_accuracy=0.9)).lr_schedule == "constant"
    assert _peer_config(ClusterSpec(peers=2, settle_after_training=5.0)).lr_schedule == "constant"
    c = _peer_config(ClusterSpec(peers=2, duration=300.0, target_accuracy=0.9, lr_horizon=120.0))
    assert (c.lr_schedule, c.lr_horizon) == ("cosine", 120.0)  # unless a horizon is given
    c = _peer_config(ClusterSpec(peers=2, duration=300.0, lr_schedule="linear", lr_horizon=250.0, lr_floor=0.1))
    assert (c.lr_schedule, c.lr_horizon, c.lr_floor) == ("linear", 250.0, 0.1)
    # --peer-arg comes last: it overrides what the cluster set.
    c = _peer_config(ClusterSpec(peers=2, duration=300.0, extra_args=["--lr-schedule=constant"]))
    assert c.lr_schedule == "constant"


def test_cluster_flags_reach_the_spec_and_bad_ones_are_refused() -> None:
    spec = cluster_spec(build_parser().parse_args(["cluster", "--duration", "90", "--lr-schedule", "linear",
                                                   "--lr-horizon", "80", "--lr-floor", "0.2"]))
    assert spec.lr_args() == ["--lr-schedule", "linear", "--lr-horizon", "80.0", "--lr-floor", "0.2"]
    spec = cluster_spec(build_parser().parse_args(["cluster", "--duration", "90"]))
    assert (spec.lr_schedule, spec.lr_horizon, spec.lr_floor) == ("auto", None, None)
    assert spec.lr_args() == ["--lr-schedule", "cosine", "--lr-horizon", "90.0"]
    for spec, message in ((ClusterSpec(lr_schedule="step"), "--lr-schedule"),
                          (ClusterSpec(lr_horizon=0.0), "--lr-horizon"),
                          (ClusterSpec(lr_floor=2.0), "--lr-floor")):
        with pytest.raises(ValueError, match=message):
            check_spec(spec)
