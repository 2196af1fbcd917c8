"""Drift correction: a control variate for this shard's pull, learned from what merges undo.

Why. On skewed shards (Dirichlet 0.1: one or two classes a peer) a peer's gradient is the
swarm's plus a bias ``b`` towards its own classes; momentum turns that into a drift of
``lr * b / (1 - mu)`` a step, and merges can only pull the model back after it has moved. The
swarm's average model then keeps FedAvg's pace while each peer's own model sits off it and
scores 8-25 points lower (bench/RESULTS.md, "Issue 11, session 13"). More exchanges barely
help: with ``r`` merges a step the drift is ``1 / (1 - 2^-r)`` steps of pull, at least one.

What. SCAFFOLD's control variates (Karimireddy et al. 2020) remove ``b`` from the gradient
before it reaches the momentum; they need a server to know the swarm's gradient. Here the
merges supply the estimate: what a merge moves the model by, between two steps, is (on
average) the drift being undone, so the correction integrates it:

    at a merge that moves the weights by J:   c <- c + gain * (1 - mu) / base_lr * J_across
    at a step:                                g <- g - c     (then SGD with momentum as usual)

At equilibrium merges stop pulling one way, which is when ``c`` equals the bias. ``J_across`` is
the jump without its component along the layer about its mean: a variance-corrected merge
rescales each layer about its mean (protocol.merge.variance), the same way on every peer,
and integrated that rescale would act as a growing anti-weight-decay. Biases and other
rank-1 tensors take the whole jump. ``base_lr``, not the annealed rate: late in a schedule
the correction then learns more slowly, never faster.

The integral ``c`` lives in the optimiser's state, so checkpoints carry it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from peer.runtime.sgd import MomentumSGD

_KEY = "drift_correction"  # the control variate's key in MomentumSGD.state[param]


def across(jump: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``jump`` without its component along ``weights`` about their mean (rank >= 2 only)."""
    if weights.dim() < 2:
        return jump
    radial = weights - weights.mean()
    norm = float((radial * radial).sum())
    if norm <= 0.0:
        return jump
    return jump - (float((jump * radial).sum()) / norm) * radial


class DriftCorrection:
    """Learns and applies a per-parameter control variate (module docstring)."""

    def __init__(self, optimizer: MomentumSGD, gain: float) -> None:
        if not 0.0 < gain <= 1.0:
            raise ValueError(f"drift correction gain must be in (0, 1], got {gain}")
        self.optimizer = optimizer
        self.gain = gain

    def _variate(self, p: torch.Tensor) -> torch.Tensor:
        state = self.optimizer.state[p]
        if _KEY not in state:
            state[_KEY] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state[_KEY]

    @torch.no_grad()
    def correct(self) -> None:
        """Subtract the control variate from every gradient (call right before ``optimizer.step()``)."""
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                c = self.optimizer.state[p].get(_KEY) if p in self.optimizer.state else None
                if p.grad is not None and c is not None:
                    p.grad.sub_(c)

    @torch.no_grad()
    def learn(self, named: Iterable[tuple[str, torch.Tensor]], before: Mapping[str, torch.Tensor],
              base_lr: float) -> None:
        """Take in a merge: ``named`` parameters now, ``before`` them; ``base_lr``: the unscheduled rate."""
        if base_lr <= 0.0:
            return
        mu = float(self.optimizer.param_groups[0]["momentum"])
        scale = self.gain * (1.0 - mu) / base_lr
        for name, p in named:
            if name in before:
                self._variate(p).add_(across(p - before[name], p), alpha=scale)
