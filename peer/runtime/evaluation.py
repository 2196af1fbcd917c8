"""Test-set evaluation that never starves a peer: a bounded, seeded subset, evaluated in
chunks on a snapshot of the model, no more often than a share of the trainer's time allows.

Measured on Fashion-MNIST (issue 15): one pass over the 10k test images took 6.3 s on
one thread against 15 ms per training step, and the default evaluated every 25 steps,
so a peer spent most of its time evaluating; worse, the evaluation held the model lock,
and the event loop's status and gossip calls that need that lock stalled behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch loads only when a model is evaluated: option checks stay fast
    import torch
    from torch import nn

    from peer.runtime.config import PeerConfig

# Inputs per forward pass: bounds evaluation's extra memory whatever the test set's size.
EVAL_CHUNK = 512


@dataclass(frozen=True)
class EvalPolicy:
    """``samples``: evaluate on this many test samples (0 = all), the same seeded subset on
    every peer; ``every``: at most once per this many steps; ``budget``: evaluation takes at
    most this share of the trainer thread's time (the next one waits until it would)."""

    samples: int = 0
    every: int = 25
    budget: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples < 0:
            raise ValueError("eval_samples must be >= 0 (0 = the whole test set)")
        if self.every < 1:
            raise ValueError("eval_every must be at least 1")
        if not 0 < self.budget <= 1:
            raise ValueError("eval_budget must be in (0, 1]")

    def subset(self, n: int) -> np.ndarray:
        """Indices of the test samples to evaluate on: all of them, or a seeded random subset,
        sorted (so memory-mapped test sets are read in order)."""
        if self.samples == 0 or self.samples >= n:
            return np.arange(n)
        return np.sort(np.random.default_rng([self.seed, 0x65_76_61_6C]).choice(n, size=self.samples, replace=False))

    def wait_after(self, took: float) -> float:
        """Seconds of training before the next evaluation, so evaluation's share stays ``budget``."""
        return took * (1.0 - self.budget) / self.budget


def policy_from_config(config: PeerConfig) -> EvalPolicy:
    """The peer's evaluation settings; ``ConfigError`` naming the option that cannot work."""
    from peer.runtime.config import ConfigError

    try:
        return EvalPolicy(samples=config.eval_samples, every=config.eval_every, budget=config.eval_budget,
                          seed=config.data_seed)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def eval_layout(model: nn.Module) -> nn.Module:
    """``model``, a copy used only for evaluation, in the memory layout whose forward pass is
    fastest on CPU: channels-last where it has 2-D convolutions. Fashion-MNIST's CNN scores
    2,000 test images in about half the CPU time so (python -m bench.eval_layout). Weights
    loaded into it later with ``load_state_dict`` keep the layout; the training model is never
    converted, because its tensors are the merges' and the codecs' contiguous buffers."""
    import torch

    params = list(model.parameters())
    if params and params[0].device.type == "cpu" and any(p.dim() == 4 for p in params):
        model.to(memory_format=torch.channels_last)
    return model


def accuracy(model: nn.Module, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray,
             device: torch.device | None = None) -> float:
    """Share of ``x`` that ``model`` (in eval mode) labels as ``y``, in chunks of EVAL_CHUNK."""
    import torch

    device = device or next(model.parameters()).device
    correct = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(y), EVAL_CHUNK):
            xb, yb = (_chunk(a, start, device) for a in (x, y))
            correct += int((model(xb).argmax(dim=1) == yb).sum())
    return correct / max(1, len(y))


def _chunk(a: torch.Tensor | np.ndarray, start: int, device: torch.device) -> torch.Tensor:
    import torch

    part = a[start:start + EVAL_CHUNK]
    if isinstance(part, np.ndarray):  # a read-only memory map: copy the chunk out of it
        return torch.from_numpy(np.array(part)).to(device)
    return part.to(device)
