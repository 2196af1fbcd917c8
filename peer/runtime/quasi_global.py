"""Quasi-global momentum: SGD momentum that follows the swarm, not the shard (``merge_momentum=quasi-global``).

Why. On skewed shards (Dirichlet 0.1: one or two classes a peer) the heavy-ball buffer adds
up this shard's gradient, which points at its own classes, and keeps pushing the weights that
way after every merge. The swarm's average model then learns at FedAvg's pace, but each peer's
own model sits off that average by about ten steps of its shard's pull, and scores 6-12 points
below it (bench/RESULTS.md, "Issue 11, session 13"). Lin et al. 2021 ("Quasi-Global Momentum:
Accelerating Decentralized Deep Learning on Heterogeneous Data", QG-DSGDm) make the buffer an
average of the model's own displacement, gossip included, so it points where the swarm goes.

Here, in asynchronous form, for a buffer ``m`` in units of the gradient:

    at a step:   m <- mu*m + (1 - mu)*d     d: the displacement since the last step, per unit of rate:
                                            that step's direction v, minus share*J/base_lr for
                                            every merge since that moved the weights by J
                 v  = g + mu*m;  x <- x - lr*v    (what MomentumSGD does, given the buffer m)

Two departures from the paper, both measured there (same section):
- ``share`` (``MERGE_SHARE``) damps a merge's displacement. The paper gossips a little every step;
  here a merge moves half-way to a partner at once, and a momentum that follows such jumps in
  full overshoots them about tenfold: the peers' models drift apart within 20 rounds.
- ``base_lr``, not the current rate, turns a jump into gradient units. Under an annealed rate
  the loss's pull shrinks with the rate; a jump divided by a shrinking rate kept its full weight
  in the next steps, and the same drift apart came back late in a cosine schedule.

Without merges this is momentum with a longer memory (the displacement feeds back into ``m``),
whose steady state for a constant gradient ``g`` is the heavy ball's ``g / (1 - mu)``.
The buffer lives in the optimiser's state, so checkpoints carry it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from peer.runtime.sgd import MomentumSGD

# The share of a merge's displacement the buffer takes in (see above): the largest of those
# measured at which 64 peers on Fashion-MNIST Dirichlet 0.1 stay together over 60 rounds.
MERGE_SHARE = 0.3
_KEY = "quasi_global"  # the buffer's key in MomentumSGD.state[param]


class QuasiGlobalMomentum:
    """Turns a ``MomentumSGD``'s heavy-ball buffer into a quasi-global one (module docstring)."""

    def __init__(self, optimizer: MomentumSGD, share: float = MERGE_SHARE) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {share}")
        self.optimizer = optimizer
        self.share = share

    def _buffer(self, p: torch.Tensor) -> torch.Tensor:
        state = self.optimizer.state[p]
        if _KEY not in state:
            state[_KEY] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state[_KEY]

    @torch.no_grad()
    def before_step(self) -> None:
        """Fold the last step's direction into the buffer and hand it to the optimiser's step
        (call right before ``optimizer.step()``, gradients in place)."""
        for group in self.optimizer.param_groups:
            mu = float(group["momentum"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self._buffer(p)
                state = self.optimizer.state[p]
                last = state.get("momentum_buffer")  # after a step: that step's v
                if last is None:
                    state["momentum_buffer"] = m.clone()
                else:
                    m.mul_(mu).add_(last, alpha=1.0 - mu)
                    last.copy_(m)

    @torch.no_grad()
    def after_merge(self, named: Iterable[tuple[str, torch.Tensor]], before: Mapping[str, torch.Tensor],
                    base_lr: float) -> None:
        """Take in the displacement a merge just made: ``named`` parameters now, ``before`` them.

        The jump joins the last step's direction, which the next step folds into the buffer, so
        it is weighed exactly as that step's own displacement is: ``(prev - x) / lr`` of the paper.
        """
        if base_lr <= 0.0 or self.share == 0.0:
            return
        mu = float(self.optimizer.param_groups[0]["momentum"])
        for name, p in named:
            if name not in before:
                continue
            jump = p - before[name]
            last = self.optimizer.state[p].get("momentum_buffer")
            if last is not None:
                last.add_(jump, alpha=-self.share / base_lr)
            else:  # no step yet: straight into the buffer the first step starts from
                self._buffer(p).add_(jump, alpha=-(1.0 - mu) * self.share / base_lr)
