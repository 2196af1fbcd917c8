"""The drift correction (peer.runtime.drift_correction): a control variate learned from merges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peer.runtime.config import PeerConfig
from peer.runtime.drift_correction import DriftCorrection, across
from peer.runtime.sgd import MomentumSGD
from tests.trainers import build_trainer

LR, MU = 0.05, 0.9


def test_across_drops_the_part_along_the_layer_about_its_mean() -> None:
    rng = np.random.default_rng(0)
    w = torch.from_numpy(rng.standard_normal((4, 3)).astype(np.float64))
    radial = w - w.mean()
    other = torch.from_numpy(rng.standard_normal((4, 3)))
    sideways = other - (other * radial).sum() / (radial * radial).sum() * radial
    got = across(2.5 * radial + sideways, w)
    assert torch.allclose(got, sideways)  # a rescale about the mean (what VC does) is gone, the rest stays
    assert abs(float((got * radial).sum())) < 1e-9
    bias = torch.tensor([1.0, -2.0, 3.0])
    assert torch.equal(across(bias, bias), bias)  # rank 1: the whole jump


# Rank 1, so a merge's whole jump counts (``across`` keeps it all): this is the integral at work.
TARGETS = (torch.tensor([1.0, -1.0, 2.0, 0.5]), torch.tensor([-1.0, 1.0, 0.0, -0.5]))


def _two_peers(gain: float, steps: int = 400) -> tuple[float, torch.Tensor]:
    """Two peers on quadratics with different minima (each shard's pull), heavy-ball SGD, a
    pairwise average after every step. Returns how far apart their last steps took them before
    the merge (what a peer's own model carries of its shard), and where the merge put them."""
    params = [torch.zeros(4, requires_grad=True) for _ in TARGETS]
    opts = [MomentumSGD([p], lr=LR, momentum=MU) for p in params]
    fixes = [DriftCorrection(o, gain) if gain > 0 else None for o in opts]
    spread = 0.0
    for _ in range(steps):
        for p, o, fix, t in zip(params, opts, fixes, TARGETS):
            p.grad = (p.detach() - t).clone()  # the gradient of |p - t|^2 / 2
            if fix is not None:
                fix.correct()
            o.step()
        before = [p.detach().clone() for p in params]
        spread = float((before[0] - before[1]).norm())
        with torch.no_grad():
            for p in params:
                p.copy_((before[0] + before[1]) / 2)
        for p, fix, b in zip(params, fixes, before):
            if fix is not None:
                fix.learn([("w", p)], {"w": b}, LR)
    return spread, params[0].detach()


def test_settled_peers_no_longer_drift_apart_between_merges() -> None:
    """Without the correction each step takes each peer towards its own minimum and the merge
    pulls it back, for good: a steady gap. With it the control variates learn the two pulls,
    the steps stop parting the peers, and the swarm still sits at the minimum of the sum."""
    (plain, plain_at), (fixed, fixed_at) = _two_peers(0.0), _two_peers(0.05)
    centre = (TARGETS[0] + TARGETS[1]) / 2
    assert torch.allclose(plain_at, centre, atol=1e-3) and torch.allclose(fixed_at, centre, atol=1e-3)
    assert plain > 0.1
    assert fixed < plain / 100


def test_the_trainer_feeds_both_merge_paths_and_checkpoints_the_variate() -> None:
    """merge_in_place hands the merge views of the weights themselves, so what they were must be
    copied before it writes; merge_with alike. Both paths teach the correction the same, and a
    restored trainer continues bit-identically."""
    digests = []
    for in_place in (False, True):
        t = build_trainer(PeerConfig(steps_per_second=0, drift_correction=0.05))
        t.train_steps(3)
        rng = np.random.default_rng(1)
        shifts = {k: rng.standard_normal(v.shape).astype(v.dtype) * 0.01 for k, v in t.state().items()}

        def shift(current: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            for k, v in current.items():
                v += shifts[k]  # in place: merge_in_place's way; merge_with takes the returned arrays
            return current

        if in_place:
            t.merge_in_place(shift)
        else:
            t.merge_with(lambda current: shift({k: v.copy() for k, v in current.items()}))
        named = dict(t.model.named_parameters())
        for name, p in named.items():
            learned = t.optimizer.state[p]["drift_correction"]
            expected = across(torch.from_numpy(shifts[name]), p.detach()) * 0.05 * (1 - 0.9) / t.base_lr
            assert torch.allclose(learned, expected, atol=1e-6)
            assert learned.abs().sum() > 0
        saved = t.checkpoint_state()
        twin = build_trainer(PeerConfig(steps_per_second=0, drift_correction=0.05))
        twin.restore(saved)
        t.train_steps(2)
        twin.train_steps(2)
        assert t.digest() == twin.digest()
        digests.append(t.digest())
    assert digests[0] == digests[1]
    off = build_trainer(PeerConfig(steps_per_second=0))
    off.train_steps(3)
    off.merge_in_place(lambda current: None)
    off.train_steps(2)
    assert "drift_correction" not in str(off.checkpoint_state()["optimizer"]["state"])
    assert off.digest() != digests[0]


def test_a_gain_out_of_range_is_refused() -> None:
    opt = MomentumSGD([torch.zeros(2, requires_grad=True)], lr=LR, momentum=MU)
    for gain in (0.0, 1.5):
        with pytest.raises(ValueError, match="gain"):
            DriftCorrection(opt, gain)


def test_adopting_a_whole_model_teaches_nothing() -> None:
    """A bootstrap or a sampled round's aggregate replaces the model (merge_with(adopt=True)): that
    jump is another model, not this shard's drift undone, so the variate stays unlearnt."""
    t = build_trainer(PeerConfig(steps_per_second=0, drift_correction=0.05))
    t.train_steps(2)
    t.merge_with(lambda current: {k: v + 1.0 for k, v in current.items()}, adopt=True)
    assert all("drift_correction" not in t.optimizer.state[p] for p in t.model.parameters())
    t.merge_with(lambda current: {k: v + 1.0 for k, v in current.items()})
    assert all(t.optimizer.state[p]["drift_correction"].abs().sum() > 0 for p in t.model.parameters())
