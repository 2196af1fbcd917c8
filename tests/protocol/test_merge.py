"""Merge rules: averaging, weights, and the variance correction's invariants (property-tested)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.merge import (
    RECOMMENDED_ROBUST,
    RULES,
    BristleRule,
    ClipRule,
    Contribution,
    CoordinateMedianRule,
    LossCheck,
    LossCheckedRule,
    MergeReport,
    NormHistory,
    RobustRule,
    TrimmedMeanRule,
    clip_toward,
    delta_norm,
    merge_batch,
    merge_received_report,
    merge_report,
    trimmed_count,
    VarianceCorrectedBlendRule,
    VarianceCorrectedRule,
    VarianceCorrectedSelfRule,
    Verdict,
    contribution_weights,
    is_variance_corrected,
    make_rule,
    received_share,
    vc_mixing_weights,
)

VC_RULES = ("vc", "vc-self", "vc-blend")
# Hypothesis: derandomised, so a failure reproduces on every run and in CI.
PROPS = settings(max_examples=60, deadline=None, derandomize=True)


def model(seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    """A small model with every kind of tensor the merge must tell apart."""
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": (scale * rng.standard_normal((4, 2, 3, 3))).astype(np.float32),
        "conv.bias": (scale * rng.standard_normal(4)).astype(np.float32),
        "bn.weight": (1 + 0.1 * rng.standard_normal(4)).astype(np.float32),
        "bn.bias": (0.1 * rng.standard_normal(4)).astype(np.float32),
        "bn.running_mean": rng.standard_normal(4).astype(np.float32),
        "bn.running_var": rng.uniform(0.5, 2.0, 4).astype(np.float32),
        "bn.num_batches_tracked": np.array(int(rng.integers(0, 100)), dtype=np.int64),
        "fc.weight": (scale * rng.standard_normal((3, 16))).astype(np.float64),
        "fc.bias": (scale * rng.standard_normal(3)).astype(np.float64),
        "temperature": np.array(rng.uniform(0.5, 2.0), dtype=np.float32),
    }


def contributions(seeds: list[int], samples: list[int], ages: list[int]) -> list[Contribution]:
    return [Contribution(model(s, scale=1 + (s % 5)), samples=n, age=a) for s, n, a in zip(seeds, samples, ages)]


# A local model and 1-4 received ones, with distinct seeds, sample counts and ages.
merges = st.integers(1, 4).flatmap(lambda k: st.tuples(
    st.lists(st.integers(0, 10_000), min_size=k + 1, max_size=k + 1, unique=True),
    st.lists(st.integers(1, 500), min_size=k + 1, max_size=k + 1),
    st.lists(st.integers(0, 60), min_size=k + 1, max_size=k + 1),
)).map(lambda t: contributions(list(t[0]), list(t[1]), [0, *t[2][1:]]))


def corrected(name: str, x: np.ndarray) -> bool:
    return is_variance_corrected(name, x)


# --- registry ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(RULES))
def test_every_registered_rule_builds_with_defaults_under_its_own_name(name: str) -> None:
    assert make_rule(name).name == name


def test_unknown_rule_is_refused_with_the_known_names() -> None:
    with pytest.raises(ValueError, match="known: bristle, bristle-vc, clip, clip-vc, mean, median, trimmed, vc, "
                                         "vc-blend, vc-self, weighted"):
        make_rule("krum")


@pytest.mark.parametrize("kwargs", [{"beta": 1.5}, {"beta": -0.1}, {"eps": -1.0}, {"decay": 0.0},
                                    {"eps": float("nan")}])
def test_vc_refuses_parameters_outside_their_range(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        VarianceCorrectedRule(**kwargs)


# --- mean and weighted --------------------------------------------------------------------------

def test_mean_is_the_plain_average_and_counters_stay_local() -> None:
    a, b = model(1), model(2)
    out = make_rule("mean").merge(Contribution(a, samples=1), [Contribution(b, samples=99)])
    np.testing.assert_allclose(out["fc.weight"], (a["fc.weight"] + b["fc.weight"]) / 2)
    np.testing.assert_allclose(out["conv.weight"], (a["conv.weight"] + b["conv.weight"]) / 2, rtol=1e-6)
    assert out["bn.num_batches_tracked"] == a["bn.num_batches_tracked"]


def test_weighted_counts_samples_and_discounts_stale_models() -> None:
    a, b = model(1), model(2)
    fresh = make_rule("weighted").merge(Contribution(a, samples=1), [Contribution(b, samples=3)])
    np.testing.assert_allclose(fresh["fc.weight"], 0.25 * a["fc.weight"] + 0.75 * b["fc.weight"])
    stale = make_rule("weighted").merge(Contribution(a, samples=1), [Contribution(b, samples=3, age=100)])
    # A model 100 steps old counts 0.98**100 ≈ 0.13 of a fresh one.
    w_b = 3 * 0.98**100 / (1 + 3 * 0.98**100)
    np.testing.assert_allclose(stale["fc.weight"], (1 - w_b) * a["fc.weight"] + w_b * b["fc.weight"])


@PROPS
@given(merges)
def test_contribution_weights_sum_to_one_and_favour_fresh_large_models(models: list[Contribution]) -> None:
    w = contribution_weights(models)
    assert w.sum() == pytest.approx(1.0) and np.all(w > 0)
    i, j = 0, len(models) - 1
    if models[i].samples >= models[j].samples and models[i].age <= models[j].age:
        assert w[i] >= w[j]


# --- variance-corrected: weights ----------------------------------------------------------------

@PROPS
@given(merges, st.floats(0.0, 1.0))
def test_vc_mixing_weights_sum_to_one_and_keep_the_local_share_for_fresh_models(models: list[Contribution],
                                                                                beta: float) -> None:
    local, received = models[0], models[1:]
    kept = 1.0 - received_share(len(received), beta)  # β for one received model
    w = vc_mixing_weights(local, received, beta)
    assert w.sum() == pytest.approx(1.0) and np.all(w >= 0)
    assert w[0] >= kept - 1e-12  # staleness only ever moves weight back to the local model
    fresh = [Contribution(c.tensors, c.samples, age=0) for c in received]
    assert vc_mixing_weights(local, fresh, beta)[0] == pytest.approx(kept)
    if len(received) == 1:
        assert kept == pytest.approx(beta)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 7])
def test_a_batch_of_k_fresh_models_weights_all_k_plus_1_equally_at_the_papers_beta(k: int) -> None:
    """Epidemic Learning's merge (de Vos et al. 2023): the local model and every one of the K
    received ones count 1/(K+1); one received model is the paper's β = 1/2 merge of two."""
    local, *received = [Contribution(model(i), samples=40) for i in range(k + 1)]
    np.testing.assert_allclose(vc_mixing_weights(local, received, 0.5), np.full(k + 1, 1 / (k + 1)))
    # Samples still set the received models' split among themselves, not the local share.
    uneven = [Contribution(c.tensors, samples=10 * (i + 1)) for i, c in enumerate(received)]
    w = vc_mixing_weights(local, uneven, 0.5)
    assert w[0] == pytest.approx(1 / (k + 1))
    np.testing.assert_allclose(w[1:] / w[1:].sum(), np.arange(1, k + 1) / np.arange(1, k + 1).sum())


@pytest.mark.parametrize("beta", [0.0, 0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_beta_is_the_local_share_against_one_model_and_each_received_model_keeps_its_weight(
        beta: float, k: int) -> None:
    """Against K models the local model counts as β/(1 − β) received models (K = 1: exactly β)."""
    local, *received = [Contribution(model(i), samples=40) for i in range(k + 1)]
    w = vc_mixing_weights(local, received, beta)
    assert w.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(w[1:], np.full(k, w[1]))
    assert w[0] * (1 - beta) == pytest.approx(w[1] * beta)  # the ratio of a merge of two
    if k == 1:
        assert w[0] == pytest.approx(beta)


def test_stale_models_and_strangers_move_a_batch_less_than_fresh_established_senders() -> None:
    local, *received = [Contribution(model(i), samples=40) for i in range(3)]
    fresh = vc_mixing_weights(local, received, 0.5)[0]
    stale = vc_mixing_weights(local, [received[0], Contribution(received[1].tensors, samples=40, age=20)], 0.5)[0]
    stranger = vc_mixing_weights(local, [received[0], Contribution(received[1].tensors, samples=40, stake=0.5)],
                                 0.5)[0]
    assert fresh == pytest.approx(1 / 3) and stale > fresh and stranger > fresh


def test_a_batch_merge_is_rescaled_to_the_received_models_variance() -> None:
    """The variance correction applies to the batch average (DESIGN.md): W̄ over the K + 1
    models, then each weight layer rescaled to the received models' mean variance."""
    local, *received = [Contribution(model(i, scale=1 + i), samples=40) for i in range(4)]
    out = VarianceCorrectedRule(eps=0.0).merge(local, received)
    for name in ("conv.weight", "fc.weight"):
        stack = [np.asarray(c.tensors[name], dtype=np.float64) for c in (local, *received)]
        average = sum(stack) / 4
        assert np.asarray(out[name], dtype=np.float64).mean() == pytest.approx(average.mean(), abs=1e-6)
        target = float(np.mean([np.var(x) for x in stack[1:]]))
        assert np.var(np.asarray(out[name], dtype=np.float64)) == pytest.approx(target, rel=1e-5)
        # The rescale is around the mean: the result is the average's deviations, scaled.
        got = np.asarray(out[name], dtype=np.float64) - average.mean()
        np.testing.assert_allclose(got, (average - average.mean()) * math.sqrt(target / np.var(average)),
                                   rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["fc.bias"], sum(np.asarray(c.tensors["fc.bias"]) for c in (local, *received)) / 4)


@PROPS
@given(merges, st.sampled_from(VC_RULES))
def test_vc_uses_its_mixing_weights_for_tensors_it_does_not_rescale(models: list[Contribution],
                                                                    rule_name: str) -> None:
    local, received = models[0], models[1:]
    rule = make_rule(rule_name)
    out = rule.merge(local, received)
    w = vc_mixing_weights(local, received, 0.5)
    for name in ("conv.bias", "fc.bias", "bn.weight", "temperature"):
        expected = sum(wi * np.asarray(c.tensors[name], dtype=np.float64) for wi, c in zip(w, models))
        np.testing.assert_allclose(out[name], expected, rtol=1e-5, atol=1e-6)


# --- variance-corrected: invariants -------------------------------------------------------------

@PROPS
@given(st.integers(0, 10_000), st.integers(1, 4), st.sampled_from(sorted(RULES)))
def test_merging_identical_models_is_the_identity(seed: int, copies: int, rule_name: str) -> None:
    m = model(seed)
    out = make_rule(rule_name).merge(Contribution(m, samples=7), [Contribution(m, samples=3 + i, age=i)
                                                                  for i in range(copies)])
    for name, x in m.items():
        assert out[name].dtype == x.dtype and out[name].shape == x.shape
        np.testing.assert_allclose(out[name], x, rtol=1e-6, atol=1e-7, err_msg=name)


def expected_target(rule: VarianceCorrectedRule, models: list[Contribution], name: str) -> float:
    """The target variance, recomputed from the definition in DESIGN.md."""
    received = models[1:]
    weights = np.array([c.samples * 0.98 ** c.age for c in received], dtype=np.float64)
    weights /= weights.sum()
    others = sum(wk * np.var(np.asarray(c.tensors[name], dtype=np.float64)) for wk, c in zip(weights, received))
    own = np.var(np.asarray(models[0].tensors[name], dtype=np.float64))
    return {"others": others, "self": own, "blend": rule.beta * own + (1 - rule.beta) * others}[rule.target]


@PROPS
@given(merges, st.sampled_from([VarianceCorrectedRule, VarianceCorrectedSelfRule, VarianceCorrectedBlendRule]),
       st.floats(0.1, 0.9))
def test_each_corrected_layer_has_the_target_variance_and_keeps_its_mean(
        models: list[Contribution], rule_type: type[VarianceCorrectedRule], beta: float) -> None:
    rule = rule_type(beta=beta, eps=0.0)
    out = rule.merge(models[0], models[1:])
    w = vc_mixing_weights(models[0], models[1:], beta)
    for name in ("conv.weight", "fc.weight"):
        got = np.asarray(out[name], dtype=np.float64)
        assert np.var(got) == pytest.approx(expected_target(rule, models, name), rel=1e-4)
        plain_mean = sum(wi * np.asarray(c.tensors[name], dtype=np.float64).mean() for wi, c in zip(w, models))
        assert got.mean() == pytest.approx(plain_mean, rel=1e-4, abs=1e-5)


def test_averaging_independent_layers_shrinks_variance_and_vc_restores_it() -> None:
    """The vanishing-variance effect itself: plain averaging halves it, vc does not."""
    a, b = model(1), model(2)
    plain = make_rule("mean").merge(Contribution(a), [Contribution(b)])
    fixed = make_rule("vc").merge(Contribution(a), [Contribution(b)])
    assert np.var(plain["fc.weight"]) < 0.7 * np.var(b["fc.weight"])
    assert np.var(fixed["fc.weight"]) == pytest.approx(np.var(b["fc.weight"]), rel=1e-6)


@PROPS
@given(merges, st.sampled_from(sorted(RULES)), st.randoms(use_true_random=False))
def test_order_of_received_models_does_not_matter(models: list[Contribution], rule_name: str, rnd) -> None:  # noqa: ANN001
    local, received = models[0], list(models[1:])
    shuffled = list(received)
    rnd.shuffle(shuffled)
    a = make_rule(rule_name).merge(local, received)
    b = make_rule(rule_name).merge(local, shuffled)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-9, err_msg=name)


@PROPS
@given(merges, st.sampled_from(VC_RULES))
def test_batchnorm_statistics_and_counters_are_not_variance_corrected(models: list[Contribution],
                                                                      rule_name: str) -> None:
    out = make_rule(rule_name).merge(models[0], models[1:])
    w = vc_mixing_weights(models[0], models[1:], 0.5)
    for name in ("bn.running_mean", "bn.running_var"):
        plain = sum(wi * np.asarray(c.tensors[name], dtype=np.float64) for wi, c in zip(w, models))
        np.testing.assert_allclose(out[name], plain, rtol=1e-6, atol=1e-7)
    assert out["bn.num_batches_tracked"] == models[0].tensors["bn.num_batches_tracked"]
    assert out["bn.num_batches_tracked"].dtype == np.int64


def test_which_tensors_are_corrected() -> None:
    m = model(0)
    assert [n for n, x in m.items() if corrected(n, x)] == ["conv.weight", "fc.weight"]
    with_biases = [n for n, x in m.items() if is_variance_corrected(n, x, include_biases=True)]
    assert with_biases == ["conv.weight", "conv.bias", "bn.bias", "fc.weight", "fc.bias"]


def test_include_biases_rescales_biases_to_the_target() -> None:
    a, b = model(1), model(2)
    out = VarianceCorrectedRule(include_biases=True, eps=0.0).merge(Contribution(a), [Contribution(b)])
    assert np.var(out["fc.bias"]) == pytest.approx(np.var(b["fc.bias"]), rel=1e-6)


def test_a_merge_with_nothing_received_keeps_the_local_model() -> None:
    m = model(3)
    out = make_rule("vc").merge(Contribution(m), [])
    for name, x in m.items():
        np.testing.assert_array_equal(out[name], x)


def test_inputs_are_not_modified() -> None:
    a, b = model(1), model(2)
    a_copy, b_copy = {k: v.copy() for k, v in a.items()}, {k: v.copy() for k, v in b.items()}
    for name in RULES:
        make_rule(name).merge(Contribution(a), [Contribution(b)])
    for orig, copy in ((a, a_copy), (b, b_copy)):
        for k in orig:
            np.testing.assert_array_equal(orig[k], copy[k])


@pytest.mark.parametrize("name", sorted(RULES))
def test_merge_received_report_is_the_rule_applied_to_a_fresh_local_contribution(name: str) -> None:
    local, other = model(4), Contribution(model(5), samples=30, age=2)
    rule = make_rule(name)
    got = merge_received_report(rule, local, 12, [other]).tensors
    want = rule.merge(Contribution(local, samples=12), [other])
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


# --- robust rules ---------------------------------------------------------------------------------

ROBUST = ("clip", "clip-vc", "median", "trimmed", "bristle", "bristle-vc")


def shifted(m: dict[str, np.ndarray], by: float) -> dict[str, np.ndarray]:
    return {k: (v + by).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in m.items()}


def test_robust_rules_are_registered_and_the_recommended_one_is_among_them() -> None:
    assert set(ROBUST) <= set(RULES)
    assert RECOMMENDED_ROBUST in ROBUST
    assert merge_batch(make_rule("median")) == merge_batch(make_rule("trimmed")) == 4
    assert merge_batch(make_rule("vc")) == merge_batch(make_rule("clip")) == 1


@PROPS
@given(st.integers(0, 10_000), st.integers(1, 4), st.floats(0.01, 1e4))
def test_clipping_bounds_the_delta_norm_and_keeps_small_deltas(seed: int, k: int, scale: float) -> None:
    local, far = model(seed), model(seed + 1, scale=scale)
    for bound in (0.5, 5.0):
        out, norm, clipped = clip_toward(local, far, bound)
        assert norm == pytest.approx(delta_norm(local, far))
        assert delta_norm(local, out) <= bound * (1 + 1e-5) + 1e-6
        assert clipped == (norm > bound)
        if not clipped:
            for name in far:
                np.testing.assert_array_equal(out[name], far[name])
    # Through the rule: one merge moves the local model by at most (1 - β)·bound.
    rule = ClipRule()
    bound = rule.bound(local)
    merged = rule.merge(Contribution(local), [Contribution(far) for _ in range(k)])
    assert delta_norm(local, merged) <= 0.5 * bound * (1 + 1e-5) + 1e-6


def test_clip_bound_follows_the_running_median_of_observed_norms() -> None:
    local = model(0)
    rule = ClipRule(multiplier=2.0, warmup=3)
    for by in (0.01, 0.02, 0.03):
        rule.merge(Contribution(local), [Contribution(shifted(local, by))])
    median = float(np.median([delta_norm(local, shifted(local, by)) for by in (0.01, 0.02, 0.03)]))
    assert rule.bound(local) == pytest.approx(2.0 * median)
    # A huge delta is clipped to that bound and reported as clipped, with its sender.
    report = merge_received_report(rule, local, 1, [Contribution(shifted(local, 100.0), sender="evil")])
    (v,) = report.verdicts
    assert (v.sender, v.kind) == ("evil", "clipped") and v.distance > v.bound == pytest.approx(2.0 * median)


def test_norm_history_is_bounded_and_needs_its_warmup() -> None:
    h = NormHistory(window=4, warmup=2)
    h.add([5.0])
    assert h.median() is None
    h.add([1.0, 2.0, 3.0, 4.0, float("nan")])
    assert len(h) == 4 and h.median() == pytest.approx(2.5)


@PROPS
@given(st.integers(0, 10_000), st.integers(1, 6), st.sampled_from(["median", "trimmed"]))
def test_median_and_trimmed_mean_of_identical_models_are_the_identity(seed: int, k: int, name: str) -> None:
    m = model(seed)
    out = make_rule(name).merge(Contribution(m), [Contribution(m) for _ in range(k)])
    for key, x in m.items():  # exact for the median; the trimmed mean's float64 division may round by 1 ulp
        assert out[key].dtype == x.dtype
        np.testing.assert_allclose(out[key], x, rtol=1e-12, atol=0)


@PROPS
@given(st.integers(0, 10_000), st.integers(1, 2), st.floats(-1e6, 1e6).filter(lambda x: abs(x) > 1.0))
def test_trimmed_mean_ignores_up_to_t_outliers(seed: int, outliers: int, magnitude: float) -> None:
    honest = [model(seed + i) for i in range(5)]
    bad = [shifted(honest[0], magnitude * (i + 1)) for i in range(outliers)]
    n = 5 + outliers
    rule = TrimmedMeanRule(trim=outliers / n + 1e-9, buffer=n - 1)
    assert trimmed_count(n, rule.trim) == outliers
    out = rule.merge(Contribution(honest[0]), [Contribution(m) for m in honest[1:] + bad])
    for name in ("fc.weight", "conv.weight", "bn.running_var"):
        stack = np.stack([np.asarray(m[name], dtype=np.float64) for m in honest])
        # Each coordinate stays within the honest models' range, however far the outliers are.
        got = np.asarray(out[name], dtype=np.float64)
        assert np.all(got >= stack.min(axis=0) - 1e-5) and np.all(got <= stack.max(axis=0) + 1e-5)


@PROPS
@given(st.integers(0, 10_000), st.floats(1.0, 1e6))
def test_median_of_five_ignores_two_colluding_outliers(seed: int, magnitude: float) -> None:
    honest = [model(seed + i) for i in range(3)]
    evil = shifted(honest[0], magnitude)
    out = CoordinateMedianRule().merge(Contribution(honest[0]), [Contribution(m) for m in honest[1:]] +
                                       [Contribution(evil, sender="a"), Contribution(evil, sender="b")])
    stack = np.stack([np.asarray(m["fc.weight"], dtype=np.float64) for m in honest])
    assert np.all(out["fc.weight"] <= stack.max(axis=0) + 1e-9)


def test_median_flags_the_far_model_as_an_outlier() -> None:
    honest = [model(i) for i in range(4)]
    report = merge_received_report(make_rule("median"), honest[0], 1,
                                   [Contribution(m, sender=f"h{i}") for i, m in enumerate(honest[1:])] +
                                   [Contribution(shifted(honest[0], 1e3), sender="evil")])
    assert [v.sender for v in report.verdicts if v.kind == "outlier"] == ["evil"]


def test_bristle_leaves_out_far_models_and_keeps_close_ones() -> None:
    local = model(0)
    rule = BristleRule(warmup=3)
    for by in (0.01, 0.02, 0.03):
        rule.merge(Contribution(local), [Contribution(shifted(local, by))])
    report = merge_received_report(rule, local, 1, [Contribution(shifted(local, 1e3), sender="evil")])
    assert [v.kind for v in report.verdicts] == ["outlier"]
    for name, x in local.items():  # nothing accepted: the local model stays
        np.testing.assert_allclose(report.tensors[name], x, rtol=1e-6, atol=1e-7)
    close = merge_received_report(rule, local, 1, [Contribution(shifted(local, 0.02), sender="friend")])
    assert [v.kind for v in close.verdicts] == ["ok"]
    np.testing.assert_allclose(close.tensors["fc.weight"], local["fc.weight"] + 0.01)


def bowl(centre: dict[str, np.ndarray]) -> Callable[[Mapping[str, np.ndarray]], float]:
    """A validation loss that is a pure function of the weights: squared distance of fc.weight to ``centre``'s."""
    target = np.asarray(centre["fc.weight"], dtype=np.float64)
    return lambda m: float(np.sum((np.asarray(m["fc.weight"], dtype=np.float64) - target) ** 2))


def test_bristle_loss_check_refuses_a_close_model_whose_merge_raises_the_validation_loss() -> None:
    local = model(0)
    rule = BristleRule(validator=bowl(local))  # the local model sits at the bottom of the bowl
    # Merged half-way, a shift of 0.5 on fc.weight's 48 entries raises the loss by 48 · 0.25² = 3.0 nats,
    # far over the warm-up margin (0.5), though it is as close as a model moved by 0.05 (rise 0.03).
    report = rule.merge_report(Contribution(local), [Contribution(shifted(local, 0.5), sender="liar"),
                                                     Contribution(shifted(local, 0.05), sender="friend")])
    assert [(v.sender, v.kind) for v in report.verdicts] == [("liar", "outlier"), ("friend", "ok")]
    assert "validation loss" in report.verdicts[0].reason and report.verdicts[1].reason == ""
    assert rule.loss_check is not None and len(rule.loss_check.history) == 2  # both rises are on the books


def test_loss_check_limit_is_the_median_rise_plus_a_floored_multiple_of_the_spread() -> None:
    check = LossCheck(lambda m: 0.0, k=3.0, floor=0.05, warmup=5, warmup_margin=0.5)
    assert check.limit() == 0.5  # warm-up
    check.record([0.10, 0.12, 0.08, 0.11, 0.09])  # median 0.10, MAD 0.01: 3·MAD is under the floor
    assert check.limit() == pytest.approx(0.15)
    check.record([0.0, 0.3, -0.2, 0.4, -0.1])  # wider spread: median 0.095, MAD 0.06 -> 0.095 + 0.18
    assert check.limit() == pytest.approx(0.275)


@given(st.lists(st.floats(-1.0, 1.0), min_size=5, max_size=20), st.data())
@PROPS
def test_fewer_than_half_hostile_rises_cannot_lift_the_limit_past_the_honest_spread(
        honest: list[float], data: st.DataObject) -> None:
    hostile = data.draw(st.lists(st.floats(-1e6, 1e6), max_size=len(honest) - 1))
    check = LossCheck(lambda m: 0.0, k=3.0, floor=0.05, window=64, warmup=1)
    check.record(honest + hostile)
    lo, hi = min(honest), max(honest)
    assert lo <= check.limit() <= hi + max(0.05, 3.0 * (hi - lo)) + 1e-9


def test_loss_check_trust_is_full_up_to_the_median_and_none_at_the_limit() -> None:
    check = LossCheck(lambda m: 0.0, warmup=1)
    check.record([0.1, 0.1, 0.1])
    limit = check.limit()  # 0.1 + floor 0.05
    assert check.trust(0.0, limit) == 1.0 and check.trust(0.1, limit) == 1.0
    assert check.trust(0.125, limit) == pytest.approx(0.5)
    assert check.trust(limit, limit) == 0.0


def test_loss_check_trust_k_ends_trust_at_median_plus_k_mad_within_the_limit() -> None:
    check = LossCheck(lambda m: 0.0, warmup=1, trust_k=1.0)
    check.record([0.0, 0.2, 0.4])  # median 0.2, MAD 0.2 -> limit 0.2 + 3 · 0.2 = 0.8, trust ends at 0.4
    limit = check.limit()
    assert limit == pytest.approx(0.8)
    assert check.trust(0.2, limit) == 1.0
    assert check.trust(0.3, limit) == pytest.approx(0.5)
    assert check.trust(0.5, limit) == 0.0  # accepted (below the limit), but nothing of it taken
    plain = LossCheck(lambda m: 0.0, warmup=1)
    plain.record([0.0, 0.2, 0.4])
    assert plain.trust(0.5, limit) == pytest.approx(0.5)  # without trust_k: trust ends at the limit


def test_an_accepted_model_above_the_usual_rise_is_taken_in_part() -> None:
    local = model(0)
    rule = BristleRule(validator=bowl(local))
    assert rule.loss_check is not None
    rule.loss_check.record([0.0] * 5)  # rises so far: all 0 -> limit = the floor, 0.05
    # fc.weight + 0.05 merged half-way: rise 48 · 0.025² = 0.03 -> trust (0.05 − 0.03) / 0.05 = 0.4
    report = rule.merge_report(Contribution(local), [Contribution(shifted(local, 0.05), sender="x")])
    assert report.verdicts[0].kind == "ok"
    np.testing.assert_allclose(report.tensors["fc.weight"], local["fc.weight"] + 0.5 * 0.4 * 0.05, rtol=1e-6)


def test_norm_history_mad_is_the_median_absolute_deviation() -> None:
    h = NormHistory(window=8, warmup=3)
    assert h.mad() is None
    h.add([1.0, 2.0, 4.0, 10.0])  # median 3.0, deviations 2, 1, 1, 7 -> 1.5
    assert h.mad() == pytest.approx(1.5)


@pytest.mark.parametrize("name", ROBUST)
def test_robust_rules_ignore_claimed_sample_counts(name: str) -> None:
    local, other = model(0), shifted(model(0), 0.01)
    few = make_rule(name).merge(Contribution(local, samples=10), [Contribution(other, samples=1)] * 4)
    many = make_rule(name).merge(Contribution(local, samples=10), [Contribution(other, samples=10**9)] * 4)
    for key in few:
        np.testing.assert_array_equal(few[key], many[key])


@pytest.mark.parametrize("name", sorted(RULES))
def test_rules_declare_their_abilities_through_the_protocols(name: str) -> None:
    """Callers ask ``RobustRule`` / ``LossCheckedRule``, never a concrete class: a robust rule
    is exactly one that judges (verdicts, a batch size), a loss-checked one one that takes a validator."""
    rule = make_rule(name)
    assert isinstance(rule, RobustRule) == (name in ROBUST)
    assert isinstance(rule, LossCheckedRule) == name.startswith("bristle")
    assert merge_batch(rule) == (rule.buffer if isinstance(rule, RobustRule) else 1)


class Judging:
    """A robust rule of no class the package knows: the protocol alone must make it one."""

    name = "judging"
    buffer = 3

    def merge(self, local: Contribution, received: Sequence[Contribution]) -> dict[str, np.ndarray]:
        return {k: np.array(v, copy=True) for k, v in local.tensors.items()}

    def merge_report(self, local: Contribution, received: Sequence[Contribution]) -> MergeReport:
        return MergeReport(self.merge(local, received),
                           tuple(Verdict(c.sender, "outlier", 1.0, 0.0) for c in received))


def test_any_rule_with_verdicts_and_a_buffer_is_robust_and_is_asked_for_both() -> None:
    rule = Judging()
    assert isinstance(rule, RobustRule) and not isinstance(rule, LossCheckedRule)
    assert merge_batch(rule) == 3
    report = merge_report(rule, Contribution(model(0)), [Contribution(model(1), sender="x")])
    assert [(v.sender, v.kind) for v in report.verdicts] == [("x", "outlier")]


def test_plain_rules_report_every_model_as_ok() -> None:
    report = merge_received_report(make_rule("vc"), model(0), 1, [Contribution(model(1), sender="x")])
    assert [(v.sender, v.kind) for v in report.verdicts] == [("x", "ok")]


# --- merging in place (issue 12: no merged copy of the model beside it) ---------------------------

def _big_model(seed: int) -> dict[str, np.ndarray]:
    """``model(seed)`` plus a layer of several merge chunks, where writing a chunk early would
    corrupt the chunks still to be read if the merge were not chunk-safe."""
    from protocol.merge import MERGE_CHUNK

    m = model(seed, scale=1 + seed % 3)
    m["big.weight"] = np.random.default_rng(seed + 99).standard_normal((3, MERGE_CHUNK - 7)).astype(np.float32)
    return m


@pytest.mark.parametrize("name", sorted(RULES))
def test_a_merge_in_place_gives_the_bits_of_the_merge_beside_it(name: str) -> None:
    local = _big_model(1)
    received = [Contribution(_big_model(s), samples=10 * s, sender=f"p{s}") for s in (2, 3, 4)]
    rule = make_rule(name)
    if merge_batch(rule) > len(received):
        received = received + [Contribution(_big_model(s), samples=5, sender=f"p{s}") for s in range(5, 10)]
    expected = merge_received_report(make_rule(name), {k: v.copy() for k, v in local.items()}, 7, received)
    live = {k: v.copy() for k, v in local.items()}
    arrays = dict(live)  # the report must be written into these very arrays
    # One tensor the merge cannot address flat (a transposed view): written through a copy.
    live["fc.weight"] = np.asfortranarray(live["fc.weight"])
    arrays["fc.weight"] = live["fc.weight"]
    report = merge_received_report(make_rule(name), live, 7, received, in_place=True)
    assert [v.kind for v in report.verdicts] == [v.kind for v in expected.verdicts]
    for k, x in expected.tensors.items():
        assert report.tensors[k] is arrays[k]
        assert arrays[k].dtype == x.dtype and arrays[k].tobytes(order="C") == np.ascontiguousarray(x).tobytes(), k
