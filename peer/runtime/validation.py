"""A peer's local validation split and the loss a robust merge rule checks models against.

The daemon (``peer.runtime.node``) and the simulator (``peer.sim.swarm``) both build their validator
here, so the loss check (``protocol.merge.LossCheck``) sees the same numbers in both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

Validator = Callable[[Mapping[str, np.ndarray]], float]


def split_validation(shard: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, validation)`` indices: a seeded ``fraction`` of ``shard`` held out.

    At least one sample is held out when ``fraction > 0`` and at least one is left to
    train on; ``fraction`` 0 holds out nothing (the validator then uses the training
    shard). Both parts keep the shard's order, so batches stay a function of the seed.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    shard = np.asarray(shard)
    if fraction == 0 or len(shard) < 2:
        return shard, shard[:0]
    held = min(max(round(fraction * len(shard)), 1), len(shard) - 1)
    chosen = np.zeros(len(shard), dtype=bool)
    chosen[np.random.default_rng(seed).choice(len(shard), size=held, replace=False)] = True
    return shard[~chosen], shard[chosen]


# The loss check scores every received model on this many samples at most (a seeded subsample
# of the validation data). It runs twice per merge: on a Fashion-MNIST shard of 7,500 images
# the pooled CNN's two passes took about as long as the training between two merges, which
# matters since bristle is the default rule (issue 14). The bench's shards (bench/byzantine.py:
# ~90 digits per peer) are far below it, so its figures are unchanged.
VALIDATION_LIMIT = 64


def make_validator(model: nn.Module, x: torch.Tensor, y: torch.Tensor, limit: int = VALIDATION_LIMIT) -> Validator:
    """Cross-entropy of a model's weights on ``(x, y)`` (a seeded subsample of ``limit`` of them
    when there are more), evaluated in ``model`` (a scratch copy of the architecture that nothing
    else uses: the loss check loads every candidate into it). Callers serialise calls (the
    daemon calls it inside ``Trainer.merge_with``)."""
    if len(x) > limit:
        keep = torch.from_numpy(np.sort(np.random.default_rng(0).choice(len(x), size=limit, replace=False)))
        x, y = x[keep], y[keep]
    device = next(model.parameters()).device
    if x.dim() == 4:  # images: channels-last runs the CPU's conv and max-pool kernels 2-3x faster, same loss
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def loss(tensors: Mapping[str, np.ndarray]) -> float:
        model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in tensors.items()})
        model.eval()
        with torch.no_grad():
            return float(nn.functional.cross_entropy(model(x), y))

    return loss
