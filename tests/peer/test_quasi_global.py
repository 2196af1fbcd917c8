"""Quasi-global momentum (peer.runtime.quasi_global): the buffer follows merges, damped."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peer.runtime.config import PeerConfig
from peer.runtime.quasi_global import MERGE_SHARE, QuasiGlobalMomentum
from peer.runtime.sgd import MomentumSGD
from tests.trainers import build_trainer

LR, MU = 0.1, 0.9


def _stepper(start: torch.Tensor) -> tuple[torch.Tensor, MomentumSGD, QuasiGlobalMomentum]:
    p = start.clone().requires_grad_(True)
    opt = MomentumSGD([p], lr=LR, momentum=MU)
    return p, opt, QuasiGlobalMomentum(opt)


def _step(p: torch.Tensor, opt: MomentumSGD, qg: QuasiGlobalMomentum, grad: torch.Tensor) -> None:
    p.grad = grad.clone()
    qg.before_step()
    opt.step()


def test_without_merges_the_buffer_settles_where_the_heavy_balls_does() -> None:
    """A constant gradient g: heavy-ball momentum moves lr*g/(1-mu) a step once settled, and so
    does the quasi-global buffer (with its longer memory, after more steps)."""
    g = torch.tensor([1.0, -2.0, 0.5])
    p, opt, qg = _stepper(torch.zeros(3))
    for _ in range(1500):  # its memory: about 0.99 a step (mu*(2 - mu))
        last = p.detach().clone()
        _step(p, opt, qg, g)
    assert torch.allclose(last - p.detach(), LR * g / (1 - MU), rtol=1e-3)


def test_a_merge_joins_the_next_steps_direction_at_its_share() -> None:
    """Two copies step alike; one merge moves both by J, but only one buffer is told. The next
    step of the told one goes lr*mu*(1-mu)*share*J/base_lr further along J: the displacement
    per unit of rate, damped by the share, as the module's formula says."""
    rng = np.random.default_rng(0)
    start, g1, g2, jump = (torch.from_numpy(rng.standard_normal(5).astype(np.float32)) for _ in range(4))
    told, untold = _stepper(start), _stepper(start)
    for p, opt, qg in (told, untold):
        _step(p, opt, qg, g1)
        before = {"w": p.detach().clone()}
        with torch.no_grad():
            p.add_(jump)
        if qg is told[2]:
            qg.after_merge([("w", p)], before, base_lr=LR)
        _step(p, opt, qg, g2)
    extra = told[0].detach() - untold[0].detach()
    assert torch.allclose(extra, LR * MU * (1 - MU) * MERGE_SHARE * jump / LR, atol=1e-6)
    assert extra.abs().sum() > 0


def test_the_trainer_feeds_both_merge_paths_and_checkpoints_the_buffer() -> None:
    """merge_in_place hands the merge views of the weights themselves, so what they were must be
    copied before it writes; merge_with alike. Both paths move the buffer the same way, and a
    restored trainer continues bit-identically."""
    digests = []
    for in_place in (False, True):
        t = build_trainer(PeerConfig(steps_per_second=0, merge_momentum="quasi-global"))
        t.train_steps(3)
        buffers = [t.optimizer.state[p]["momentum_buffer"].clone() for p in t.model.parameters()]

        def shift(current: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            for v in current.values():
                v += 0.01  # in place: merge_in_place's way; merge_with takes the returned arrays
            return current

        if in_place:
            t.merge_in_place(shift)
        else:
            t.merge_with(lambda current: shift({k: v.copy() for k, v in current.items()}))
        for p, old in zip(t.model.parameters(), buffers):
            moved = t.optimizer.state[p]["momentum_buffer"]
            assert torch.allclose(moved, old - MERGE_SHARE * 0.01 / t.base_lr, atol=1e-5)
        saved = t.checkpoint_state()
        assert all("quasi_global" in s for s in saved["optimizer"]["state"].values())
        twin = build_trainer(PeerConfig(steps_per_second=0, merge_momentum="quasi-global"))
        twin.restore(saved)
        t.train_steps(2)
        twin.train_steps(2)
        assert t.digest() == twin.digest()
        digests.append(t.digest())
    assert digests[0] == digests[1]
    keep = build_trainer(PeerConfig(steps_per_second=0))
    keep.train_steps(3)
    keep.merge_in_place(lambda current: [v.__iadd__(0.01) for v in current.values()])
    keep.train_steps(2)
    assert keep.digest() != digests[0]  # the option changes the run


def test_share_out_of_range_is_refused() -> None:
    opt = MomentumSGD([torch.zeros(2, requires_grad=True)], lr=LR, momentum=MU)
    with pytest.raises(ValueError, match="share"):
        QuasiGlobalMomentum(opt, share=1.5)
