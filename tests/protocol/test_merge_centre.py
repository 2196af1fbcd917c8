"""The recent centre and bristle's direction test (protocol/merge/centre.py), and reputation's
weight for far outliers (protocol/reputation.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from protocol.merge import BristleRule, Contribution, Verdict, merge_received_report
from protocol.merge.centre import RecentCentre
from protocol.reputation import Reputation, ReputationConfig


def vec(*xs: float) -> dict[str, np.ndarray]:
    return {"w": np.array(xs, dtype=np.float32), "steps": np.array(7, dtype=np.int64)}


def at(dx: float, dy: float) -> dict[str, np.ndarray]:
    """A model ``(dx, dy)`` from ``LOCAL`` (whose norm sets bristle's warm-up bound: 1.5 × 5)."""
    return vec(3 + dx, 4 + dy)


LOCAL = at(0, 0)


def test_the_centre_is_the_coordinate_median_of_one_model_per_sender_and_forgets_the_oldest() -> None:
    c = RecentCentre(window=3, warmup=2)
    c.add("a", vec(0, 0))
    assert c.centre() is None  # one model is no centre
    c.add("b", vec(10, 2))
    c.add("a", vec(1, 1))  # a's newer model replaces its older one: one sender, one slot
    assert len(c) == 2
    c.add("c", vec(4, 100))
    centre = c.centre()
    assert centre is not None and "steps" not in centre  # counters are not models' coordinates
    np.testing.assert_allclose(centre["w"], [4, 2])
    c.add("d", vec(-50, -50))  # the window holds 3 senders: b, the oldest now, goes
    np.testing.assert_allclose(c.centre()["w"], [1, 1])


def test_the_model_kept_is_a_copy() -> None:
    c = RecentCentre(window=2, warmup=1)
    m = vec(1, 2)
    c.add("a", m)
    m["w"][:] = 99
    np.testing.assert_allclose(c.centre()["w"], [1, 2])


def test_direction_is_the_cosine_of_the_update_with_the_way_to_the_centre() -> None:
    c = RecentCentre()
    local, centre = vec(0, 0), {"w": np.array([1.0, 0.0])}
    assert c.direction(local, centre, vec(2, 0)) == pytest.approx(1.0)
    assert c.direction(local, centre, vec(-1, 1)) == pytest.approx(-math.sqrt(0.5))
    assert c.direction(local, centre, vec(0, 0)) is None  # no update: nothing to judge
    assert c.direction(local, None, vec(1, 0)) is None


def test_bristle_refuses_an_update_that_points_away_from_the_recent_centre() -> None:
    """Three senders have pulled us towards +x; a close model that pulls the other way is an
    outlier with the direction test, and is taken without it."""
    def run(centre_window: int) -> list[Verdict]:
        rule = BristleRule(warmup=3, centre_window=centre_window)
        local = LOCAL
        for i, x in enumerate((at(1.0, 0.1), at(1.1, -0.1), at(0.9, 0.0))):
            rule.merge_report(Contribution(local), [Contribution(x, sender=f"honest{i}")])
        return list(merge_received_report(rule, local, 1, [Contribution(at(-0.5, 0.2), sender="attacker"),
                                                             Contribution(at(0.8, 0.3), sender="friend")]).verdicts)

    with_test = run(8)
    assert [v.kind for v in with_test] == ["outlier", "ok"]
    assert "points away from the recent centre" in with_test[0].reason
    assert [v.kind for v in run(0)] == ["ok", "ok"]  # distance alone cannot tell: both are as close


def test_refused_updates_do_not_enter_the_centre() -> None:
    rule = BristleRule(warmup=3, centre_window=8)
    local = LOCAL
    for i, x in enumerate((at(1.0, 0.1), at(1.1, -0.1), at(0.9, 0.0))):
        rule.merge_report(Contribution(local), [Contribution(x, sender=f"honest{i}")])
    for _ in range(5):
        report = rule.merge_report(Contribution(local), [Contribution(at(-0.5, 0.2), sender="attacker")])
        assert [v.kind for v in report.verdicts] == ["outlier"]
    assert rule.centre is not None and len(rule.centre) == 3
    np.testing.assert_allclose(rule.centre.centre()["w"], [4.0, 4.0])


def test_a_far_outlier_bans_at_once_and_a_near_one_counts_little() -> None:
    rep = Reputation(ReputationConfig())
    rep.observe([Verdict("near", "outlier", distance=2.0, bound=1.0)], now=0.0)
    assert not rep.is_banned("near", 0.0)
    rep.observe([Verdict("far", "outlier", distance=10.0, bound=1.0)], now=0.0)
    assert rep.is_banned("far", 0.0)
    rep.observe([Verdict("nan", "outlier", distance=math.nan, bound=1.0)], now=0.0)
    assert rep.is_banned("nan", 0.0)
    off = Reputation(ReputationConfig(far_factor=math.inf))
    off.observe([Verdict("far", "outlier", distance=10.0, bound=1.0)], now=0.0)
    assert not off.is_banned("far", 0.0)


def test_a_large_model_is_judged_on_a_sample_of_coordinates_with_the_same_answer() -> None:
    """200,000 coordinates, 4,096 kept: memory per model is the sample's; the cosine estimate agrees."""
    rng = np.random.default_rng(5)
    local = {"a": rng.standard_normal(150_000).astype(np.float32), "b": rng.standard_normal((250, 200)).astype(np.float32)}
    way = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in local.items()}
    full, sampled = RecentCentre(window=3, warmup=3), RecentCentre(window=3, warmup=3, max_coords=4096)
    for i in range(3):
        m = {k: v + way[k] + 0.3 * rng.standard_normal(v.shape).astype(np.float32) for k, v in local.items()}
        full.add(f"s{i}", m)
        sampled.add(f"s{i}", m)
    assert sum(v.size for v in sampled.centre().values()) <= 4096 + 2
    for sign in (1.0, -1.0):
        other = {k: v + sign * 0.5 * way[k] + rng.standard_normal(v.shape).astype(np.float32) for k, v in local.items()}
        exact = full.direction(local, full.centre(), other)
        estimate = sampled.direction(local, sampled.centre(), other)
        assert exact is not None and estimate is not None
        assert abs(exact) > 0.2 and estimate == pytest.approx(exact, abs=0.05)


def test_a_near_distance_outlier_counts_a_tenth_and_an_outlier_within_the_bound_counts_whole() -> None:
    """Honest partners early in a run land a few bounds out: nine such refusals in a row leave a
    peer in good standing; three refusals by the loss check of large rises (the model within the
    distance bound) still ban, as do three near ones when they count whole, and one the rule
    calls far (bristle: beyond 1.5 norms), however close to its bound."""
    rep = Reputation(ReputationConfig())
    for t in range(9):
        rep.observe([Verdict("honest", "outlier", distance=5.0, bound=1.0, far=False)], now=float(t))
    assert not rep.is_banned("honest", 9.0) and rep.score("honest", 9.0) > 0.5
    for t in range(3):
        rep.observe([Verdict("flipper", "outlier", distance=0.5, bound=1.0, reason="validation loss")], now=float(t))
    assert rep.is_banned("flipper", 3.0)
    rep.observe([Verdict("far", "outlier", distance=1.2, bound=1.0, far=True)], now=0.0)
    assert rep.is_banned("far", 0.0)
    whole = Reputation(ReputationConfig(near_weight=1.0))
    for t in range(3):
        whole.observe([Verdict("honest", "outlier", distance=2.5, bound=1.0)], now=float(t))
    assert whole.is_banned("honest", 3.0)
    with pytest.raises(ValueError):
        ReputationConfig(near_weight=2.0).check()


def test_bristle_calls_far_only_a_model_beyond_its_warm_up_bound() -> None:
    """After distances of 0.1, the bound is 0.25 (5 % of a norm of 5); a model 1.2 away is an
    outlier almost 5x out but not far (an honest partner that trained alone a while), one at 3 norms
    (sign-flipped) is far."""
    rule = BristleRule(warmup=3, centre_window=0)
    for i in range(3):
        rule.merge_report(Contribution(LOCAL), [Contribution(at(0.1, 0.0), sender=f"s{i}")])
    flipped = {"w": (-2.0 * LOCAL["w"]).astype(np.float32), "steps": LOCAL["steps"]}
    report = rule.merge_report(Contribution(LOCAL), [Contribution(at(0.72, 0.96), sender="alone"),
                                                     Contribution(flipped, sender="flipper")])
    assert [(v.kind, v.far) for v in report.verdicts] == [("outlier", False), ("outlier", True)]


def test_the_centre_a_sender_is_judged_by_leaves_its_own_model_out() -> None:
    c = RecentCentre(window=4, warmup=2)
    for sender, x in (("a", vec(0, 0)), ("b", vec(2, 2)), ("c", vec(100, 100))):
        c.add(sender, x)
    np.testing.assert_allclose(c.centre()["w"], [2, 2])
    np.testing.assert_allclose(c.centre(exclude="c")["w"], [1, 1])  # a and b only
    np.testing.assert_allclose(c.centre(exclude="nobody")["w"], [2, 2])
    assert RecentCentre(window=4, warmup=3).centre() is None


def test_a_sender_cannot_vouch_for_itself_in_the_direction_test() -> None:
    """Three senders; the judged one's own last model is what makes the centre point its way."""
    rule = BristleRule(warmup=3, centre_window=8, centre_leave_out=True)
    rule.centre = RecentCentre(window=8, warmup=2)
    for sender, x in (("a", at(1.0, 0.0)), ("b", at(1.0, 0.2)), ("self", at(-1.0, 0.0))):
        rule.centre.add(sender, x)
    here = rule.centre.centre(exclude="self")
    assert rule.centre.direction(LOCAL, here, at(-0.6, 0.0)) == pytest.approx(-1.0, abs=0.05)


def test_the_distance_bound_has_a_floor_relative_to_the_model() -> None:
    """From a shared start the first distances are near zero: the median-based bound (2 x 0.01)
    would refuse a model 0.2 away from a model of norm 5; the floor (5 % of 5 = 0.25) takes it."""
    def verdict(floor_ratio: float) -> str:
        rule = BristleRule(warmup=3, centre_window=0, floor_ratio=floor_ratio)
        for i in range(3):
            rule.merge_report(Contribution(LOCAL), [Contribution(at(0.01, 0.0), sender=f"s{i}")])
        report = rule.merge_report(Contribution(LOCAL), [Contribution(at(0.2, 0.0), sender="s0")])
        return report.verdicts[0].kind

    assert BristleRule().floor_ratio == 0.05
    assert verdict(0.05) == "ok"
    assert verdict(0.0) == "outlier"
    with pytest.raises(ValueError):
        BristleRule(floor_ratio=-1.0)


def test_the_distance_bound_never_exceeds_the_warm_up_bound() -> None:
    """Three far models (refused, but their distances are recorded) make the median 10 norms;
    the bound stays at the warm-up bound (1.5 norms), so a sign-flipped model (3 norms) is refused."""
    rule = BristleRule(warmup=3, centre_window=0)
    for i in range(3):
        report = rule.merge_report(Contribution(LOCAL), [Contribution(at(30.0, 40.0), sender=f"far{i}")])
        assert [v.kind for v in report.verdicts] == ["outlier"]
    assert rule.history.median() == pytest.approx(50.0)
    assert rule.bound(LOCAL) == pytest.approx(1.5 * 5.0)
    flipped = {"w": (-2.0 * LOCAL["w"]).astype(np.float32), "steps": LOCAL["steps"]}
    report = rule.merge_report(Contribution(LOCAL), [Contribution(flipped, sender="flipper")])
    assert [v.kind for v in report.verdicts] == ["outlier"]


def test_a_loss_check_refusal_of_a_modest_rise_counts_a_tenth_and_a_huge_one_whole() -> None:
    """Honest partners trained on other classes raise our loss by up to about a nat (Fashion-MNIST,
    Dirichlet 0.5); counted whole, their refusals banned them. A rise over ``loss_whole_above``
    (2 nats) still counts whole. The validator here: the loss is 20 × the model's x coordinate."""
    def rule() -> BristleRule:
        r = BristleRule(warmup=3, centre_window=0, validator=lambda m: 20.0 * float(m["w"][0]),
                        loss_warmup_margin=0.5)
        for i in range(6):  # the loss check's history: rises of 0.0, its limit then the 0.05 floor
            r.merge_report(Contribution(LOCAL), [Contribution(at(0.0, 0.01 * (i % 2)), sender=f"s{i}")])
        return r

    modest, huge = rule(), rule()
    # Merged at half, a model 0.1 further along x raises the loss by +1; one 0.24 along, by +2.4
    # (both within the distance bound, 5 % of our model's norm: 0.25).
    report = modest.merge_report(Contribution(LOCAL), [Contribution(at(0.1, 0.0), sender="other-classes")])
    [v] = report.verdicts
    assert v.kind == "outlier" and "validation loss" in v.reason and v.far is False
    [w] = huge.merge_report(Contribution(LOCAL), [Contribution(at(0.24, 0.0), sender="flipper")]).verdicts
    assert w.kind == "outlier" and "validation loss" in w.reason and w.far is None
    rep = Reputation(ReputationConfig())
    for t in range(9):
        rep.observe([v], now=float(t))
    for t in range(3):
        rep.observe([w], now=float(t))
    assert not rep.is_banned("other-classes", 9.0) and rep.is_banned("flipper", 3.0)


def _skewed_and_attacker_standing(direction_near: bool) -> tuple[bool, float, float]:
    """60 s of a bristle peer with reputation: three partners pull towards +x, an honest partner
    on a skewed shard points away from them in 3 of its 10 models, an attacker in all of them.
    Returns (skewed banned at some point, when the attacker was first banned, skewed refused share)."""
    rule = BristleRule(warmup=3, centre_window=8, direction_near=direction_near)
    rep = Reputation(ReputationConfig())
    skewed_banned, attacker_banned_at = False, math.inf
    for step in range(30):
        now = 2.0 * step
        wobble = 0.05 * ((step % 3) - 1)
        models = [Contribution(at(1.0 + wobble, 0.1 * i - 0.1), sender=f"honest{i}") for i in range(3)]
        models.append(Contribution(at(-0.5, 0.2) if step % 10 in (2, 5, 8) else at(0.8, 0.3 + wobble),
                                   sender="skewed"))
        models.append(Contribution(at(-0.6, 0.1 + wobble), sender="attacker"))
        live = [m for m in models if not rep.is_banned(m.sender, now)]
        rep.observe(rule.merge_report(Contribution(LOCAL), live).verdicts, now)
        skewed_banned |= rep.is_banned("skewed", now)
        if rep.is_banned("attacker", now):
            attacker_banned_at = min(attacker_banned_at, now)
    return skewed_banned, attacker_banned_at, rep.refused_share("skewed", 60.0)


def test_a_direction_refusal_counts_a_tenth_unless_the_sender_stands_out() -> None:
    """An honest partner on a skewed shard points away from the others' centre now and then; its
    refusals count a tenth (``Verdict.far`` False) and it is never banned, while a partner refused
    every time stands out (protocol.reputation) and is, within seconds: the direction test's
    verdicts are ``early`` evidence, judged before ``stand_out_after`` (15 s). Counted whole
    (``direction_near`` False), the skewed partner's refusals ban it too."""
    skewed_banned, attacker_banned_at, share = _skewed_and_attacker_standing(direction_near=True)
    assert share is not None and 0.2 < share < 0.4
    assert not skewed_banned
    wait = ReputationConfig().stand_out_after * ReputationConfig().half_life
    assert attacker_banned_at < wait
    skewed_banned, attacker_banned_at, _ = _skewed_and_attacker_standing(direction_near=False)
    assert skewed_banned and attacker_banned_at < wait


def test_early_evidence_lets_a_sender_stand_out_before_the_wait() -> None:
    """Three partners taken, one refused every time: with ``Verdict.early`` its refusals count
    whole once it has been judged three times (``stand_out_min``); without, a tenth until
    ``stand_out_after`` (15 s) has passed since it was first judged. One model every 2 s."""
    def first_ban(early: bool) -> float:
        rep = Reputation(ReputationConfig())
        for t in range(20):
            now = 2.0 * t
            rep.observe([Verdict(f"p{i}", "ok", 0.1, 1.0) for i in range(3)]
                        + [Verdict("odd", "outlier", 0.5, 1.0, far=False, early=early)], now)
            if rep.is_banned("odd", now):
                return now
        return math.inf

    assert first_ban(early=True) < 15.0 <= first_ban(early=False) < 20.0


def test_the_reason_line_says_a_sender_stands_out_early() -> None:
    """Before the 15 s wait, a sender that stands out on early evidence is named so in its reason."""
    rep = Reputation(ReputationConfig())
    for t in range(6):
        rep.observe([Verdict(f"p{i}", "ok", 0.1, 1.0) for i in range(3)]
                    + [Verdict("odd", "outlier", 0.5, 1.0, reason="points away", far=False, early=True)], 2.0 * t)
    assert rep.is_banned("odd", 10.0)
    assert "100% of its models refused, partners' median 0% (early)" in rep.reason("odd", 10.0)
    assert rep.reason("p0", 10.0) == ""
