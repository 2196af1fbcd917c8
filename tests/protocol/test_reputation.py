"""Per-peer reputation: penalties, decay, bans with hysteresis, bounded memory."""

from __future__ import annotations

import math

import pytest

from protocol.merge import Verdict
from protocol.reputation import Reputation, ReputationConfig


def test_a_stranger_has_full_score_and_is_not_banned() -> None:
    rep = Reputation()
    assert rep.score("x", 0.0) == 1.0 and not rep.is_banned("x", 0.0) and rep.reason("x", 0.0) == ""


def test_three_outliers_in_a_row_ban_a_peer_with_a_reason() -> None:
    rep = Reputation()
    for t in range(2):
        rep.record("evil", "outlier", float(t), "distance 9 > 2")
    assert not rep.is_banned("evil", 2.0)
    rep.record("evil", "outlier", 2.0, "distance 9 > 2")
    assert rep.is_banned("evil", 2.0)
    reason = rep.reason("evil", 2.0)
    assert reason.startswith("banned:") and "3 outlier" in reason and "distance 9 > 2" in reason
    assert rep.eligible(["good", "evil"], 2.0) == ["good"]


def test_the_deficit_halves_every_half_life() -> None:
    rep = Reputation(ReputationConfig(half_life=100.0))
    rep.record("p", "outlier", 0.0)
    assert rep.score("p", 0.0) == pytest.approx(0.5)
    assert rep.score("p", 100.0) == pytest.approx(0.75)
    assert rep.score("p", 200.0) == pytest.approx(0.875)


def test_a_ban_holds_until_the_score_recovers_past_readmit() -> None:
    cfg = ReputationConfig(half_life=10.0, ban_below=-0.25, readmit_above=0.5)
    rep = Reputation(cfg)
    for _ in range(4):
        rep.record("p", "outlier", 0.0)  # score -1.0, deficit 2.0
    assert rep.is_banned("p", 0.0)
    # Deficit 2 -> 1.0 after one half-life: score 0.0, above ban_below but not readmitted yet.
    assert rep.score("p", 10.0) == pytest.approx(0.0) and rep.is_banned("p", 10.0)
    # After ~2.1 half-lives the deficit is below 0.5: readmitted.
    t = 10.0 * math.log2(2.0 / 0.49)
    assert not rep.is_banned("p", t)


def test_occasional_honest_outliers_are_forgiven_but_steady_ones_are_not() -> None:
    cfg = ReputationConfig()
    honest, attacker = Reputation(cfg), Reputation(cfg)
    for i in range(200):  # one update every 20 s
        t = 20.0 * i
        honest.record("h", "outlier" if i % 4 == 0 else "ok", t)
        attacker.record("a", "outlier" if i % 2 == 0 else "ok", t)
    assert not honest.is_banned("h", 4000.0) and honest.score("h", 4000.0) > cfg.ban_below
    assert attacker.is_banned("a", 4000.0)


def test_verdicts_feed_the_scores_and_unnamed_senders_are_skipped() -> None:
    rep = Reputation()
    rep.observe([Verdict("a", "clipped", 5.0, 2.0, "delta norm 5 > bound 2"), Verdict("", "outlier", 9.0, 2.0),
                 Verdict("b", "ok", 1.0, 2.0)], 0.0)
    assert rep.score("a", 0.0) == pytest.approx(0.8)
    assert rep.score("b", 0.0) == 1.0  # capped
    assert len(rep) == 2
    assert "clipped" in rep.reason("a", 0.0) and rep.reason("b", 0.0) == ""


def test_rejected_packets_count_and_unknown_events_are_refused() -> None:
    rep = Reputation()
    rep.record("p", "rejected", 0.0, "non-finite values")
    assert rep.score("p", 0.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown reputation event"):
        rep.record("p", "weird", 0.0)


def test_memory_is_bounded_and_banned_peers_are_kept() -> None:
    rep = Reputation(ReputationConfig(max_peers=3))
    for _ in range(3):
        rep.record("evil", "outlier", 0.0)
    for i in range(10):
        rep.record(f"p{i}", "ok", float(i))
    assert len(rep) == 3 and rep.is_banned("evil", 10.0)


@pytest.mark.parametrize("kwargs", [{"half_life": 0.0}, {"ban_below": 0.6}, {"penalty_outlier": -1.0},
                                    {"max_peers": 0}])
def test_bad_configs_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Reputation(ReputationConfig(**kwargs))


def _judge_round(rep: Reputation, refused: dict[str, bool], now: float) -> None:
    """One merge's verdicts: each named sender's model refused as a near outlier or taken."""
    rep.observe([Verdict(p, "outlier", distance=0.5, bound=1.0, reason="validation loss +0.4 > +0.2", far=False)
                 if bad else Verdict(p, "ok", distance=0.5, bound=1.0) for p, bad in refused.items()], now=now)


def test_near_refusals_count_whole_for_a_sender_refused_far_more_often_than_the_others() -> None:
    """A label flipper among honest partners, one merge every 5 s: its models are refused two
    times in three, the honest ones' once in nine. Once it has been judged for an eighth of a
    half-life (15 s), its refusals stand out and count whole: banned; the honest stay in good
    standing. Where every partner is refused as often (non-IID weather), nobody stands out, the
    refusals count a tenth and nobody is banned."""
    rep = Reputation()
    for t in range(9):
        _judge_round(rep, {"flipper": t % 3 != 2, "a": t == 1, "b": t == 3, "c": t == 5, "d": False}, 5.0 * t)
    assert rep.stands_out("flipper", 45.0) and not rep.stands_out("a", 45.0)
    assert rep.is_banned("flipper", 45.0)
    assert "of its models refused, partners' median" in rep.reason("flipper", 45.0)
    assert not any(rep.is_banned(p, 45.0) for p in "abcd")
    weather = Reputation()
    for t in range(12):
        _judge_round(weather, {p: (t + i) % 3 != 2 for i, p in enumerate(("e", "f", "g", "h"))}, 5.0 * t)
    assert not any(weather.stands_out(p, 60.0) or weather.is_banned(p, 60.0) for p in "efgh")
    assert all(weather.score(p, 60.0) > 0.5 for p in "efgh")


def test_a_partner_refused_in_the_first_seconds_does_not_stand_out() -> None:
    """From a shared start honest distances outrun the bound for the first seconds (4 real
    peers: one partner refused 4 times in 6 in the first 6 s, the two others never). Its share
    says nothing until it has been judged for ``stand_out_after`` half-lives: the refusals of
    those seconds count a tenth and it is not banned; the same pattern over a minute would."""
    rep = Reputation()
    for t in range(6):
        _judge_round(rep, {"drifting": t in (0, 1, 3, 4), "a": False, "b": False}, float(t))
    assert rep.refused_share("drifting", 6.0) is None and not rep.stands_out("drifting", 6.0)
    assert not rep.is_banned("drifting", 6.0) and rep.score("drifting", 6.0) > 0.5
    with pytest.raises(ValueError):
        ReputationConfig(stand_out_after=math.inf).check()


def test_refused_shares_forget_with_the_half_life_and_need_enough_models() -> None:
    rep = Reputation(ReputationConfig(half_life=10.0, stand_out_after=0.0))
    _judge_round(rep, {"p": True}, 0.0)
    _judge_round(rep, {"p": False}, 0.0)
    assert rep.refused_share("p", 0.0) is None  # two models judged: too few to say
    _judge_round(rep, {"p": False}, 0.0)
    assert rep.refused_share("p", 0.0) == pytest.approx(1 / 3)
    assert rep.refused_share("p", 10.0) is None  # half remembered: 1.5 models
    for t in (10.0, 10.0, 10.0):
        _judge_round(rep, {"p": True}, t)
    assert rep.refused_share("p", 10.0) == pytest.approx((0.5 + 3) / (1.5 + 3))
    with pytest.raises(ValueError):
        ReputationConfig(stand_out_min=0.5).check()
