"""Merge rules: averaging, weights, and the variance correction's invariants (property-tested)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.merge import (
    RULES,
    Contribution,
    VarianceCorrectedBlendRule,
    VarianceCorrectedRule,
    VarianceCorrectedSelfRule,
    contribution_weights,
    is_variance_corrected,
    make_rule,
    merge_received,
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
    with pytest.raises(ValueError, match="known: mean, vc, vc-blend, vc-self, weighted"):
        make_rule("median")


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
def test_vc_mixing_weights_sum_to_one_and_keep_beta_for_fresh_models(models: list[Contribution],
                                                                       beta: float) -> None:
    local, received = models[0], models[1:]
    w = vc_mixing_weights(local, received, beta)
    assert w.sum() == pytest.approx(1.0) and np.all(w >= 0)
    assert w[0] >= beta - 1e-12  # staleness only ever moves weight back to the local model
    fresh = [Contribution(c.tensors, c.samples, age=0) for c in received]
    assert vc_mixing_weights(local, fresh, beta)[0] == pytest.approx(beta)


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
def test_merge_received_is_the_rule_applied_to_a_fresh_local_contribution(name: str) -> None:
    local, other = model(4), Contribution(model(5), samples=30, age=2)
    rule = make_rule(name)
    got = merge_received(rule, local, 12, [other])
    want = rule.merge(Contribution(local, samples=12), [other])
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
