"""A robust centre of the models recently taken from distinct senders, and the direction test on it.

Why: the loss check (``protocol.merge.loss_check``) judges a received model on the peer's own
shard. An attacker that pushes us uphill on the classes our shard barely holds ("loss-shift":
our model moved along the loss gradient of *its* shard, by a step the check lets through) is
invisible there: measured in bench/byzantine_classes.py, its damage falls on the classes a
victim lacks (−11.3 points there, −0.4 on the classes it holds). The peers that *do* hold
those classes have already told us where they stand: their models. The coordinate-wise
median ``C`` of the last models taken from distinct senders is where the honest swarm pulls us
(a median: under half of them hostile cannot move it far), so an honest update
``x_k − x_local`` points, more or less, towards ``C``; an update that climbs the loss on the
classes the swarm has learned and we have not points away from it.

Measured in bench/byzantine.py's setting (16 peers, 4 loss-shift attackers, bristle with its
loss check, 8 senders kept; bench/RESULTS.md, issue 14 session 7): the cosine between the
update and ``C − x_local`` was below 0 for 2 % of the 751 honest models taken (5th percentile
+0.15, median +0.53) and for 79 % of the 325 attackers' (median −0.13, 95th percentile +0.11).
Bristle refuses below −0.1 (``BristleRule.direction_floor``): at 0 the honest models refused
under small-shift doubled and cost 2.7 points. What it does not stop: an attacker that knows
the test too and projects its step so that it never points away from our centre (measured:
0.873, as bad as without the test) — the test is evidence about the classes we lack only as
long as the attacker's step is the plain ascent on its own.

Memory: the test looks at a fixed, seeded sample of at most ``max_coords`` coordinates (all of
them for a model that small; a cosine over a uniform sample of coordinates estimates the
cosine over all of them), so ``window`` models cost at most ``window · max_coords`` float32
values (2 MiB with the defaults), not ``window`` copies of a 100M-parameter model.
The judged sender's own slot is left out of the centre it is judged by (``centre(exclude=)``):
its last model would otherwise vouch for it, and in a small swarm it is a third of the median.

Pure: no clock; the senders are the identities the caller vouches for (peer/transport/identity.py),
so one sender holds one slot however often it speaks.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from protocol.merge.base import Tensors, is_mergeable


MAX_COORDS = 1 << 16


class RecentCentre:
    """The last model taken from each of up to ``window`` distinct senders, and their median.

    ``warmup``: fewer models than this and there is no centre (``direction`` answers None):
    a median of one or two models is just those models. Models are kept as the sample of
    coordinates (``max_coords`` at most) chosen from the first one's layout; a model of
    another layout starts the window afresh.
    """

    def __init__(self, window: int = 8, warmup: int = 3, max_coords: int = MAX_COORDS) -> None:
        if window < 1 or warmup < 1 or warmup > window or max_coords < 1:
            raise ValueError(f"need 1 <= warmup <= window and max_coords >= 1, got window={window}, "
                             f"warmup={warmup}, max_coords={max_coords}")
        self.window = window
        self.warmup = warmup
        self.max_coords = max_coords
        self._layout: tuple[tuple[str, int], ...] = ()
        self._picks: dict[str, np.ndarray | None] = {}  # tensor -> flat indices kept (None: all)
        self._models: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._models)

    def _sample(self, model: Tensors) -> dict[str, np.ndarray]:
        """The kept coordinates of ``model``'s floating tensors, flat (float64: they are few)."""
        layout = tuple((k, int(np.size(v))) for k, v in model.items() if is_mergeable(v))
        if layout != self._layout:
            self._layout, self._models = layout, OrderedDict()
            total = sum(n for _, n in layout)
            rng = np.random.default_rng(0)  # seeded: every peer and run picks the same coordinates
            self._picks = {k: None if total <= self.max_coords else
                           np.sort(rng.choice(n, size=min(n, max(1, round(n * self.max_coords / total))),
                                              replace=False))
                           for k, n in layout}
        out = {}
        for k, idx in self._picks.items():
            flat = np.asarray(model[k]).reshape(-1)
            out[k] = (flat if idx is None else flat[idx]).astype(np.float64)
        return out

    def add(self, sender: str, model: Tensors) -> None:
        """Remember ``model`` as ``sender``'s latest taken one (its sample: a copy of its own)."""
        sample = self._sample(model)
        self._models.pop(sender, None)
        self._models[sender] = sample
        while len(self._models) > self.window:
            self._models.popitem(last=False)

    def centre(self, exclude: str | None = None) -> dict[str, np.ndarray] | None:
        """Coordinate-wise median of the kept models (but ``exclude``'s), or None while fewer than ``warmup``."""
        models = [m for sender, m in self._models.items() if sender != exclude]
        if len(models) < self.warmup:
            return None
        return {k: np.median(np.stack([m[k] for m in models]), axis=0) for k in models[0]}

    def direction(self, local: Tensors, centre: Tensors | None, other: Tensors) -> float | None:
        """Cosine between ``other − local`` and ``centre − local`` over the floating tensors;
        None without a centre or when either vector is zero (nothing to judge by)."""
        if centre is None:
            return None
        here, there = self._sample(local), self._sample(other)
        if any(np.shape(centre.get(k)) != x.shape for k, x in here.items()):  # a centre of another layout
            return None
        dot = uu = cc = 0.0
        for name, x in here.items():
            u = there[name] - x
            c = np.asarray(centre[name], dtype=np.float64) - x
            dot += float(u @ c)
            uu += float(u @ u)
            cc += float(c @ c)
        if not (uu > 0 and cc > 0) or not math.isfinite(dot):
            return None
        return dot / math.sqrt(uu * cc)
