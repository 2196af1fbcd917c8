"""Bristle's clip band (protocol/merge/robust.py, ``clip_factor``) and what it costs in
reputation (protocol/reputation.py, ``near_factor``): a model beyond the distance bound by at
most 2x is clipped to the bound and merged, for free; beyond that it is left out and counted."""

from __future__ import annotations

import numpy as np

from protocol.merge import BristleRule, Contribution, Verdict, merge_received_report
from protocol.merge.robust import delta_norm
from protocol.reputation import Reputation, ReputationConfig

LOCAL = {"w": np.array([3.0, 4.0], dtype=np.float32), "steps": np.array(7, dtype=np.int64)}


def along_x(d: float) -> dict[str, np.ndarray]:
    return {"w": LOCAL["w"] + np.array([d, 0.0], dtype=np.float32), "steps": np.array(9, dtype=np.int64)}


def warmed(clip_factor: float = 2.0) -> BristleRule:
    """A rule whose history holds distances of 1.0: median 1, bound 2 (no loss check, no direction test)."""
    rule = BristleRule(warmup=3, centre_window=0, clip_factor=clip_factor)
    for i in range(3):
        rule.merge_report(Contribution(LOCAL), [Contribution(along_x(1.0), sender=f"h{i}")])
    assert rule.bound(LOCAL) == 2.0
    return rule


def test_a_model_up_to_twice_the_bound_is_clipped_to_it_and_merged() -> None:
    report = merge_received_report(warmed(), LOCAL, 1, [Contribution(along_x(3.0), sender="drifted")])
    (v,) = report.verdicts
    assert v.kind == "clipped" and v.distance == 3.0 and v.bound == 2.0 and "clipped" in v.reason
    moved = delta_norm(LOCAL, report.tensors)
    # It moved us along its direction, and no farther than a model at the bound would have.
    at_bound = delta_norm(LOCAL, merge_received_report(warmed(), LOCAL, 1, [Contribution(along_x(2.0), sender="b")]).tensors)
    assert 0 < moved and np.isclose(moved, at_bound)
    assert report.tensors["w"][1] == LOCAL["w"][1] and report.tensors["steps"] == LOCAL["steps"]


def test_beyond_twice_the_bound_a_model_is_left_out() -> None:
    report = merge_received_report(warmed(), LOCAL, 1, [Contribution(along_x(4.5), sender="far")])
    assert [v.kind for v in report.verdicts] == ["outlier"]
    np.testing.assert_array_equal(report.tensors["w"], LOCAL["w"])


def test_clip_factor_one_leaves_out_everything_beyond_the_bound() -> None:
    report = merge_received_report(warmed(clip_factor=1.0), LOCAL, 1, [Contribution(along_x(2.5), sender="drifted")])
    assert [v.kind for v in report.verdicts] == ["outlier"]
    np.testing.assert_array_equal(report.tensors["w"], LOCAL["w"])


def test_clipped_near_the_bound_costs_nothing_and_farther_it_counts() -> None:
    rep = Reputation(ReputationConfig())
    for t in range(20):  # honest drift, many times over
        rep.observe([Verdict("near", "clipped", distance=1.9, bound=1.0)], now=float(t))
    assert rep.score("near", 20.0) == 1.0 and not rep.is_banned("near", 20.0)
    for t in range(7):  # clipped from farther than near_factor: penalty_clipped each, seven ban
        rep.observe([Verdict("clipped", "clipped", distance=3.0, bound=1.0)], now=0.0)
    assert rep.is_banned("clipped", 0.0)
    rep.observe([Verdict("outlier", "outlier", distance=3.0, bound=1.0)], now=0.0)  # left out: counts once
    assert rep.score("outlier", 0.0) == 0.5
    rep.observe([Verdict("far", "outlier", distance=5.0, bound=1.0)], now=0.0)  # beyond far_factor: three
    assert rep.is_banned("far", 0.0)


def test_a_stranger_gets_no_clip_band() -> None:
    """Rotating identities, an attacker is always a first contact (stake < 1): it is judged by the bound as it is."""
    report = merge_received_report(warmed(), LOCAL, 1, [Contribution(along_x(3.0), sender="new", stake=0.5)])
    assert [v.kind for v in report.verdicts] == ["outlier"]
    np.testing.assert_array_equal(report.tensors["w"], LOCAL["w"])
