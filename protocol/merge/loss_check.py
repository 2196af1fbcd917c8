"""The loss check: would merging this model raise our validation loss more than usual?

A rule with a loss check (``LossCheckedRule``: ``bristle``, ``bristle-vc``) is given a
``validator``, the loss of a model on the peer's held-out validation split — a callable,
so protocol/ stays free of training code; the daemon (``peer.runtime.node``) and the simulator
build it from ``peer.runtime.validation``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from protocol.merge.averaging import toward
from protocol.merge.base import DEFAULT_BETA, RobustRule, Tensors, Validator, _check_unit
from protocol.merge.history import NormHistory


class LossCheck:
    """Would merging this model raise our validation loss more than usual? (Bristle's loss test.)

    For each received model ``x_k`` the check scores the merge it would cause on its own,
    ``x_local + share · (x_k − x_local)`` (``share`` = 1 − β), and takes the rise
    ``Δ = loss(candidate) − loss(x_local)`` on the peer's validation split. Scoring the
    candidate rather than ``x_k`` itself matters on non-IID data: an honest neighbour
    trained on other classes scores badly on our classes alone, while averaging with it
    costs us little (measured in bench/byzantine.py's setting, 16 peers, Dirichlet 0.5,
    rounds 10-20, 20 % held out: honest models' median rise +0.31 nats, 90th percentile +1.0; their
    candidates' −0.03 and +0.14).

    The limit is relative to what this peer has seen: ``median + max(floor, k · MAD)`` of
    the last ``window`` rises (every model scored, honest or not: a median and a MAD are
    moved little while under half the window is hostile, and recording only accepted
    rises would ratchet the limit down — measured: 13 points of accuracy lost without an
    attack in bench/byzantine.py). Until ``warmup`` rises are seen the limit is
    ``warmup_margin``. An accepted model is taken in part (``trust``) when its rise is
    above the median. Defaults: ``k`` 3, ``floor`` 0.05 nats (the spread of honest rises
    shrinks as the swarm converges; the floor keeps rounding-level rises from counting),
    ``window`` 32, ``warmup`` 5, ``warmup_margin`` 0.5 nats.
    """

    def __init__(self, validator: Validator, share: float = 1.0 - DEFAULT_BETA, k: float = 3.0,
                 floor: float = 0.05, window: int = 32, warmup: int = 5, warmup_margin: float = 0.5,
                 trust_k: float | None = None) -> None:
        if not all(math.isfinite(v) and v >= 0 for v in (k, floor)) or not warmup_margin >= 0:
            raise ValueError("k and floor must be finite and non-negative, warmup_margin non-negative (inf: "
                             "nothing refused while warming up)")
        _check_unit("share", share, open_low=True)
        self.validator = validator
        self.share = share
        self.k = k
        self.floor = floor
        self.warmup_margin = warmup_margin
        # Where trust reaches nothing: median + trust_k · max(floor, MAD), at most the limit
        # (None: at the limit). An attacker tuned to the check takes most at about half way
        # (trust × step, the rise growing with the step), so its pull scales with this point.
        if trust_k is not None and not (math.isfinite(trust_k) and trust_k >= 0):
            raise ValueError(f"trust_k must be finite and non-negative, got {trust_k}")
        self.trust_k = trust_k
        self.history = NormHistory(window, warmup)

    def limit(self) -> float:
        """The largest rise in validation loss accepted now (nats)."""
        median, mad = self.history.median(), self.history.mad()
        if median is None or mad is None:
            return self.warmup_margin
        return median + max(self.floor, self.k * mad)

    def trust(self, rise: float, limit: float) -> float:
        """How much of an accepted model to take, in [0, 1]: all of it up to the usual rise
        (the median), then linearly less, to nothing at ``limit``. A model just inside the
        limit (an attacker tuned to pass) moves us little; the typical honest one fully."""
        median, mad = self.history.median(), self.history.mad()
        if median is None or mad is None or not rise > median:
            return 1.0
        if self.trust_k is not None:
            limit = min(limit, median + self.trust_k * max(self.floor, mad))
        return float(min(1.0, max(0.0, (limit - rise) / (limit - median)))) if limit > median else 0.0

    def rises(self, local: Tensors, received: Sequence[Tensors]) -> list[float]:
        """The rise in validation loss that merging each of ``received`` alone would cause."""
        base = self.validator(local)
        return [self.validator(toward(local, x, self.share)) - base for x in received]

    def record(self, rises: Sequence[float]) -> None:
        self.history.add(rises)


@runtime_checkable
class LossCheckedRule(RobustRule, Protocol):
    """A robust rule that can judge received models by the local validation loss too.

    Setting ``validator`` turns its ``loss_check`` on (None: off, the rule judges by distance
    alone); ``loss_check`` is the check's state (its limit, the rises it has seen).
    """

    validator: Validator | None
    loss_check: LossCheck | None
