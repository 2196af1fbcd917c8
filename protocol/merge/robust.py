"""Robust merge rules, for swarms with hostile peers: ``clip``, ``clip-vc``, ``median``,
``trimmed``, ``bristle``, ``bristle-vc`` (what each stops and what it does not: below).
``median`` and ``trimmed`` want several received models per merge (``merge_batch(rule)``);
the recommended robust default is ``RECOMMENDED_ROBUST``. Each rule here is a ``RobustRule``
(``protocol.merge.base``: it reports verdicts and says its batch size); ``bristle`` and
``bristle-vc`` are ``LossCheckedRule`` too (``protocol.merge.loss_check``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from protocol.merge.averaging import toward, weighted_average
from protocol.merge.base import (
    DEFAULT_BETA,
    DEFAULT_DECAY,
    Contribution,
    Judgement,
    MergeReport,
    MergeRule,
    Tensors,
    Validator,
    Verdict,
    _check_unit,
    is_mergeable,
    register,
)
from protocol.merge.centre import RecentCentre
from protocol.merge.history import NormHistory
from protocol.merge.loss_check import LossCheck
from protocol.merge.variance import (
    DEFAULT_EPS,
    VarianceCorrectedRule,
    is_variance_corrected,
    rescale_to_variance,
    vc_mixing_weights,
)

# --- robust merging ----------------------------------------------------------------------------
#
# A swarm has no server to throw out a bad peer, so each peer defends its own model. The
# robust rules below look at the *received* models relative to the local one (the only
# model a peer can trust) and limit what any one neighbour can do to it:
#
# - ``clip`` / ``clip-vc``: centred clipping. Each received delta ``x_k − x_local`` is
#   scaled down to a norm bound ``τ = multiplier · median(recent delta norms)`` (a
#   running median over this peer's last ``window`` observations; until ``warmup``
#   norms are seen, ``τ = warmup_ratio · ‖x_local‖``, which two independently
#   initialised models of equal norm, ≈ √2 · ‖x‖ apart, pass). One merge can then move
#   the local model by at most ``(1 − β) · τ``, whatever was sent. Then the inner rule
#   (β-mean, or variance-corrected) merges the clipped models.
# - ``median`` / ``trimmed``: coordinate-wise median / trimmed mean over the local model
#   and ``buffer`` received ones. These need several models at once: the caller buffers
#   (``merge_batch``) — with one received model a median is just the mean of two.
# - ``bristle`` / ``bristle-vc``: distance-based prioritiser (after Bristle, Chen et al.
#   2021). A received model farther than ``outlier_factor · median(recent distances)``
#   is an outlier and left out; the rest are weighted by closeness
#   ``1 / (1 + (d / median)²)``; an optional ``validator`` (a callable: the loss of a
#   model on the peer's held-out local validation split — protocol/ stays free of
#   training code) adds a loss check (``LossCheck``): the merge a received model would
#   cause, ``x_local + (1 − β)(x_k − x_local)``, may not raise the validation loss by
#   more than is usual for this peer (running median + k · MAD of the rises it has
#   seen). Distance cannot see a model that is close but trained to do harm (label
#   flipping) or pushed uphill on the loss (small shift); the loss check sees both.
#
# Every robust rule ignores the sample count a sender claims (a header field an attacker
# sets at will: with sample weighting one packet claiming 10⁹ samples would replace our
# model) and reports a ``Verdict`` per received model (``merge_report``), which
# ``protocol.reputation`` turns into per-peer scores.
#
# State: ``clip`` and ``bristle`` keep a bounded window of observed norms, and the loss
# check one of observed loss rises (small state machines, no clock); build one rule object
# per peer.


def delta_norm(local: Tensors, other: Tensors) -> float:
    """``‖other − local‖₂`` over every floating tensor (float64 accumulation)."""
    total = 0.0
    for name, x0 in local.items():
        if is_mergeable(x0):
            d = np.asarray(other[name], dtype=np.float64) - np.asarray(x0, dtype=np.float64)
            total += float(np.dot(d.ravel(), d.ravel()))
    return math.sqrt(total)


def model_norm(x: Tensors) -> float:
    """``‖x‖₂`` over every floating tensor."""
    return math.sqrt(sum(float(np.sum(np.asarray(v, dtype=np.float64) ** 2)) for v in x.values() if is_mergeable(v)))


def clip_toward(local: Tensors, other: Tensors, bound: float) -> tuple[dict[str, np.ndarray], float, bool]:
    """``local + (other − local) · min(1, bound / ‖other − local‖)``; also the norm and whether it clipped.

    Non-floating tensors are taken from ``local``. Non-finite norms (which wire validation
    should already refuse) clip to ``local`` itself.
    """
    norm = delta_norm(local, other)
    if norm <= bound:
        return {k: np.array(v, copy=True) for k, v in other.items()}, norm, False
    scale = bound / norm if math.isfinite(norm) and norm > 0 else 0.0
    return toward(local, other, scale), norm, True


def _inner_rule(inner: str, beta: float) -> MergeRule:
    if inner == "mean":
        return BetaMeanRule(beta)
    if inner == "vc":
        return VarianceCorrectedRule(beta=beta, fixed_share=True)
    raise ValueError(f"inner rule must be 'mean' or 'vc', got {inner!r}")


class BetaMeanRule:
    """``β·x_local + (1 − β)·Σ w_k x_k`` without a variance correction (the robust rules' plain inner)."""

    name = "beta-mean"

    def __init__(self, beta: float = DEFAULT_BETA, decay: float = DEFAULT_DECAY) -> None:
        _check_unit("beta", beta)
        self.beta = beta
        self.decay = decay

    def merge(self, local: Contribution, received: Sequence[Contribution]) -> dict[str, np.ndarray]:
        w = vc_mixing_weights(local, received, self.beta, self.decay, fixed_share=True)
        return weighted_average([c.tensors for c in (local, *received)], w)


class JudgingRule:
    """The robust rules that judge every received model: ``merge`` is the tensors of their
    ``merge_report`` (verdicts and all), so both answer from one computation."""

    def merge_report(self, local: Contribution, received: Sequence[Contribution]) -> MergeReport:
        raise NotImplementedError

    def merge(self, local: Contribution, received: Sequence[Contribution]) -> dict[str, np.ndarray]:
        return self.merge_report(local, received).tensors


@register
class ClipRule(JudgingRule):
    """Centred clipping of every received delta to ``multiplier · median(recent norms)``.

    Defaults: ``multiplier`` 2.0 (honest non-IID deltas spread well within 2x of their
    median), ``window`` 32 norms, ``warmup`` 3, ``warmup_ratio`` 1.5 (× ‖x_local‖),
    ``beta`` 0.5, inner ``mean`` (``clip``) or ``vc`` (``clip-vc``). Clipping bounds an
    attacker's pull per merge; it does not remove it, so an attacker that stays just
    inside the bound ("small shift") is not stopped, only slowed.
    """

    name = "clip"
    inner = "mean"
    buffer = 1

    def __init__(self, multiplier: float = 2.0, window: int = 32, warmup: int = 3, warmup_ratio: float = 1.5,
                 beta: float = DEFAULT_BETA, inner: str | None = None) -> None:
        if not (math.isfinite(multiplier) and multiplier > 0 and math.isfinite(warmup_ratio) and warmup_ratio > 0):
            raise ValueError("multiplier and warmup_ratio must be positive and finite")
        self.multiplier = multiplier
        self.warmup_ratio = warmup_ratio
        self.history = NormHistory(window, warmup)
        self.inner = inner or type(self).inner
        self._inner = _inner_rule(self.inner, beta)

    def bound(self, local: Tensors) -> float:
        """The current clipping bound for deltas against ``local``."""
        median = self.history.median()
        return self.multiplier * median if median is not None else self.warmup_ratio * model_norm(local)

    def merge_report(self, local: Contribution, received: Sequence[Contribution]) -> MergeReport:
        bound = self.bound(local.tensors)
        clipped, verdicts, norms = [], [], []
        for c in received:
            tensors, norm, was_clipped = clip_toward(local.tensors, c.tensors, bound)
            norms.append(norm)
            clipped.append(Contribution(tensors, samples=1, age=c.age, sender=c.sender, stake=c.stake))
            verdicts.append(Verdict(c.sender, "clipped" if was_clipped else "ok", norm, bound,
                                    f"delta norm {norm:.3g} > bound {bound:.3g}" if was_clipped else ""))
        self.history.add(norms)
        return MergeReport(self._inner.merge(local, clipped), tuple(verdicts))



@register
class ClipVCRule(ClipRule):
    """Clipping, then the variance-corrected average of the clipped models."""

    name = "clip-vc"
    inner = "vc"


def _stack(models: Sequence[Tensors], name: str) -> np.ndarray:
    return np.stack([np.asarray(m[name], dtype=np.float64) for m in models])


def _robust_vc(out: dict[str, np.ndarray], local: Contribution, received: Sequence[Contribution],
               eps: float) -> None:
    """Rescale each weight layer of a robust aggregate to the *median* variance of the received
    models (the vc rule's "follow others" target, with the median in place of the mean so that
    one noisy model cannot inflate it)."""
    for name, x0 in local.tensors.items():
        if received and is_variance_corrected(name, x0):
            target = float(np.median([np.var(np.asarray(c.tensors[name], dtype=np.float64)) for c in received]))
            out[name] = rescale_to_variance(np.asarray(out[name], dtype=np.float64), target, eps).astype(x0.dtype)


def _centre_verdicts(out: Tensors, received: Sequence[Contribution], factor: float) -> tuple[Verdict, ...]:
    """Outlier verdicts for coordinate-wise rules: far from the robust centre relative to the others."""
    dists = [delta_norm(out, c.tensors) for c in received]
    scale = float(np.median(dists)) if dists else 0.0
    bound = factor * scale if scale > 0 else math.inf
    return tuple(Verdict(c.sender, "outlier" if d > bound else "ok", d, bound,
                         f"distance to the median model {d:.3g} > {bound:.3g}" if d > bound else "")
                 for c, d in zip(received, dists))


@register
class CoordinateMedianRule(JudgingRule):
    """Coordinate-wise median of the local model and the received ones.

    Robust to up to ``⌈n/2⌉ − 1`` arbitrary models among n: the caller must buffer
    ``buffer`` (default 4) received models and merge them at once (``merge_batch``),
    so one merge takes the median of 5 and tolerates 2 hostile models. Ignores sample
    counts and ages. ``vc`` (default False) rescales weight layers as ``_robust_vc``.
    Its verdicts flag models farther than ``outlier_factor`` (3.0) × the median
    distance from the result.
    """

    name = "median"

    def __init__(self, buffer: int = 4, vc: bool = False, eps: float = DEFAULT_EPS,
                 outlier_factor: float = 3.0) -> None:
        if buffer < 1:
            raise ValueError(f"buffer must be at least 1, got {buffer}")
        self.buffer = buffer
        self.vc = vc
        self.eps = eps
        self.outlier_factor = outlier_factor

    def _aggregate(self, stack: np.ndarray) -> np.ndarray:
        return np.median(stack, axis=0)

    def merge_report(self, local: Contribution, received: Sequence[Contribution]) -> MergeReport:
        models = [local.tensors, *(c.tensors for c in received)]
        out: dict[str, np.ndarray] = {}
        for name, x0 in local.tensors.items():
            if not is_mergeable(x0):
                out[name] = np.array(x0, copy=True)
                continue
            out[name] = self._aggregate(_stack(models, name)).astype(x0.dtype, copy=False)
        if self.vc:
            _robust_vc(out, local, received, self.eps)
        return MergeReport(out, _centre_verdicts(out, received, self.outlier_factor))



def trimmed_count(n: int, trim: float) -> int:
    """How many values a trimmed mean over ``n`` drops at *each* end: ``⌊trim·n⌋``, at most ``(n−1)//2``."""
    return min(int(math.floor(trim * n + 1e-9)), (n - 1) // 2)


@register
class TrimmedMeanRule(CoordinateMedianRule):
    """Coordinate-wise trimmed mean: per coordinate, drop the ``t`` largest and ``t`` smallest
    of the n models (local included) and average the rest, ``t = trimmed_count(n, trim)``.

    With the default ``trim`` 0.2 and ``buffer`` 4 (n = 5), ``t = 1``: any one model, however
    extreme, changes nothing beyond what the other four allow. Closer to the mean than the
    median is (less noise when nobody attacks), weaker when several attackers collude.
    """

    name = "trimmed"

    def __init__(self, trim: float = 0.2, buffer: int = 4, vc: bool = False, eps: float = DEFAULT_EPS,
                 outlier_factor: float = 3.0) -> None:
        if not (0 <= trim < 0.5):
            raise ValueError(f"trim must be in [0, 0.5), got {trim}")
        super().__init__(buffer=buffer, vc=vc, eps=eps, outlier_factor=outlier_factor)
        self.trim = trim

    def _aggregate(self, stack: np.ndarray) -> np.ndarray:
        n = stack.shape[0]
        t = trimmed_count(n, self.trim)
        if t == 0:
            return stack.mean(axis=0)
        return np.sort(stack, axis=0)[t:n - t].mean(axis=0)


@register
class BristleRule(JudgingRule):
    """Distance-based prioritiser: leave out far models, prefer close ones, optionally validate.

    Defaults: ``outlier_factor`` 2.0 × the running median of observed distances (same
    ``window`` / ``warmup`` / ``warmup_ratio`` as ``clip``); closeness weight
    ``1 / (1 + (d / median)²)`` among the accepted; ``validator`` None (set it, or pass
    one, to add the ``LossCheck`` with ``loss_k`` / ``loss_floor``); ``beta`` 0.5; inner
    ``mean`` (``bristle``) or ``vc`` (``bristle-vc``). Without a validator a model that is
    close but trained to do harm (label flipping, a small uphill shift) passes.
    ``loss_warmup_margin``: the loss check's limit until it has seen its warm-up rises,
    2 nats (0.5 banned honest partners trained on other classes, whose merge raised our
    loss by +0.8 to +1.0 at first, between real peers on Dirichlet 0.3 shards; a sign-flipped
    model raises it by far more; ``math.inf``: nothing refused meanwhile, which let 19
    sign-flipped models in, measured in bench/RESULTS.md, issue 14 session 5); ``loss_trust_k``: where its trust
    ends (``LossCheck.trust_k``); ``newcomers_in_history`` False keeps refused models of
    senders with no model taken yet (stake < 1) out of both histories (measured in
    bench/RESULTS.md, issue 14 session 5: it ratchets the bounds down, so it is off).
    ``centre_window`` (8; 0: off) and ``direction_floor`` (-0.1): the direction test
    (``protocol.merge.centre``): a model that passed distance and loss but whose update points
    away from the median of the last models taken from that many distinct senders (cosine
    below the floor) is an outlier; refused models never enter that median.
    ``floor_ratio`` (0.05): the distance bound is never below this fraction of the local
    model's norm. From a shared start the first distances are near zero and grow faster than a
    running median follows: 4 peers at the daemon's pace (10 steps/s, a merge every 0.5 s)
    refused about a third of the honest models in the first seconds, and the refusals kept
    them apart (bench/RESULTS.md, issue 14 session 9). Honest distances measured there stay
    under 5.7 % of the norm; a sign-flipped or noised model lies at about 3 norms.
    The bound never exceeds the warm-up bound (``warmup_ratio`` × the local model's norm):
    with only a handful of distances seen, three far ones (refused attackers') made the median
    itself 3 norms, and the next sign-flipped model, at 3 norms, was taken (bench/RESULTS.md,
    issue 14 session 9: rotate).
    ``loss_whole_above`` (2.0 nats): a model refused by the loss check with a smaller rise is
    reported not far (``Verdict.far`` False: protocol.reputation counts it a tenth); above,
    it counts whole. On Fashion-MNIST, Dirichlet 0.5, honest partners trained on other classes
    raised our loss by up to +1.23 against a limit of +0.05, and whole-counted refusals banned
    them until 8 real peers ended at 0.72-0.86 (0.888-0.889 with this and numpy's threads
    capped; bench/RESULTS.md, issue 14 session 10). The price: label-flip attackers, refused
    as before, are banned later (bench/byzantine.py, seed 0: 0.904 against 0.916).
    ``centre_leave_out`` (True): the direction test judges a sender against the centre of the
    *other* senders' models (its own last model does not vouch for it; in a swarm of 4 the
    centre of 3 including the judged one refused honest updates of almost no length).
    ``direction_near`` (True): a direction-test refusal is reported not far (``Verdict.far``
    False), so protocol.reputation counts it a tenth unless the sender stands out among our
    partners (a loss-shift attacker: 79 % of its models point away, honest partners' median
    2 %). Counted whole (False), it banned honest peers on skewed shards: 8 real Fashion-MNIST
    peers, Dirichlet 0.5, the seven others banned one honest peer at times; it made 655
    exchanges against 1,002-1,242 and ended lowest (0.854; bench/RESULTS.md, issue 11 session 14).
    The model is refused either way. Its verdict is ``early`` evidence: whether the sender stands
    out is asked from its third judged model, not after reputation's 15 s wait, which is for the
    distance outliers of a run's first seconds (the direction test is silent then). Without that,
    loss-shift attackers were banned later and cost 0.7 points more (0.910 against 0.917,
    bench.byzantine --quick, issue 11 session 15).
    """

    name = "bristle"
    inner = "mean"
    buffer = 1

    def __init__(self, outlier_factor: float = 2.0, window: int = 32, warmup: int = 3, warmup_ratio: float = 1.5,
                 validator: Validator | None = None, loss_k: float = 3.0, loss_floor: float = 0.05,
                 beta: float = DEFAULT_BETA, inner: str | None = None, loss_warmup_margin: float = 2.0,
                 newcomers_in_history: bool = True, loss_trust_k: float | None = None,
                 centre_window: int = 8, direction_floor: float = -0.1, floor_ratio: float = 0.05,
                 centre_leave_out: bool = True, loss_whole_above: float = 2.0,
                 direction_near: bool = True) -> None:
        if not (math.isfinite(outlier_factor) and outlier_factor > 0):
            raise ValueError(f"outlier_factor must be positive and finite, got {outlier_factor}")
        if not loss_whole_above >= 0:  # inf: no loss-check refusal counts whole
            raise ValueError(f"loss_whole_above must be non-negative, got {loss_whole_above}")
        if not (math.isfinite(floor_ratio) and floor_ratio >= 0):
            raise ValueError(f"floor_ratio must be non-negative and finite, got {floor_ratio}")
        self.outlier_factor = outlier_factor
        self.floor_ratio = floor_ratio
        self.centre_leave_out = centre_leave_out
        self.direction_near = direction_near
        self.loss_whole_above = loss_whole_above
        self.warmup_ratio = warmup_ratio
        self.history = NormHistory(window, warmup)
        self.beta = beta
        self.loss_k = loss_k
        self.loss_floor = loss_floor
        self.loss_warmup_margin = loss_warmup_margin
        self.loss_trust_k = loss_trust_k
        # False: a refused model from a sender that has not had one taken yet (stake < 1,
        # protocol/stake.py) feeds neither history; a stranger rotating identities is nothing else.
        self.newcomers_in_history = newcomers_in_history
        self.loss_check: LossCheck | None = None
        self.validator = validator
        # The direction test (protocol/merge/centre.py): an update pointing away from the median
        # of the last models taken from ``centre_window`` distinct senders (cosine below
        # ``direction_floor``) is an outlier. 0: off. At -0.1 it holds loss-shift (0.920 against
        # 0.881 without it, bench/RESULTS.md, issue 14 session 7); at 0 it refused twice as many
        # honest models under small-shift and lost 2.7 points there (0.899).
        if not -1.0 <= direction_floor < 1.0:
            raise ValueError(f"direction_floor must be in [-1, 1), got {direction_floor}")
        self.centre = RecentCentre(centre_window) if centre_window > 0 else None
        self.direction_floor = direction_floor
        self.inner = inner or type(self).inner
        self._inner = _inner_rule(self.inner, beta)

    @property
    def validator(self) -> Validator | None:
        """The local validation loss of a model; setting it (re)starts the loss check's history."""
        return self.loss_check.validator if self.loss_check is not None else None

    @validator.setter
    def validator(self, validator: Validator | None) -> None:
        # β = 1 takes nothing from received models; any positive share then only scales the rises.
        self.loss_check = None if validator is None else LossCheck(
            validator, share=(1.0 - self.beta) or 1.0, k=self.loss_k, floor=self.loss_floor,
            warmup_margin=self.loss_warmup_margin, trust_k=self.loss_trust_k)

    def bound(self, local: Tensors) -> float:
        """The distance beyond which a received model is an outlier."""
        return self._limits(model_norm(local))[0]

    def _limits(self, norm: float) -> tuple[float, float]:
        """(bound, scale of the closeness weights) against a local model of norm ``norm``."""
        median = self.history.median()
        if median is None:
            return self.warmup_ratio * norm, self.warmup_ratio * norm / self.outlier_factor
        # Never above the warm-up bound: a few far models early on (a rotating attacker's, each
        # refused) once lifted the median to 3 norms, and a sign-flipped model at 3 norms passed.
        return min(self.warmup_ratio * norm, max(self.outlier_factor * median, self.floor_ratio * norm)), median

    def merge_report(self, local: Contribution, received: Sequence[Contribution]) -> MergeReport:
        return self.combine(local, self.judge(local, received))

    @property
    def expensive(self) -> bool:
        """Judging evaluates models (the loss check): worth doing on a snapshot, outside the trainer's lock."""
        return self.loss_check is not None

    def combine(self, local: Contribution, judgement: Judgement) -> MergeReport:
        """The inner average of ``local`` and the accepted models, each taken at its trust."""
        accepted = [c if trust >= 1.0 else replace(c, tensors=toward(local.tensors, c.tensors, trust))
                    for c, trust in judgement.accepted]
        return MergeReport(self._inner.merge(local, accepted), judgement.verdicts)

    def judge(self, local: Contribution, received: Sequence[Contribution]) -> Judgement:
        """The verdict on each received model, and the models taken with their trust; records what
        was seen (distances, loss rises, the centre)."""
        norm = model_norm(local.tensors)
        bound, scale = self._limits(norm)
        ceiling = self.warmup_ratio * norm  # beyond it: farther than any honest model from a shared start
        dists = [delta_norm(local.tensors, c.tensors) for c in received]
        near = [i for i, d in enumerate(dists) if d <= bound]  # `not d > bound` would let NaN through
        rises: dict[int, float] = {}
        limit = math.inf
        if self.loss_check is not None and near:
            limit = self.loss_check.limit()  # before this merge's rises are recorded: they are judged by the past
            rises = dict(zip(near, self.loss_check.rises(local.tensors, [received[i].tensors for i in near])))
        accepted, verdicts = [], []
        unrecorded: set[int] = set()
        # One centre for every model of the merge, or (leave-out) one per sender, below.
        centre = self.centre.centre() if self.centre is not None and not self.centre_leave_out else None
        for i, (c, d) in enumerate(zip(received, dists)):
            if i not in near:
                verdicts.append(Verdict(c.sender, "outlier", d, bound, f"distance {d:.3g} > {bound:.3g}",
                                        far=not d <= ceiling))
                if not self.newcomers_in_history and c.stake < 1.0:
                    unrecorded.add(i)
                continue
            rise = rises.get(i, -math.inf)
            if not rise <= limit:  # also catches NaN
                verdicts.append(Verdict(c.sender, "outlier", d, bound,
                                        f"validation loss +{rise:.3g} > +{limit:.3g} if merged",
                                        far=False if rise <= self.loss_whole_above else None))
                if not self.newcomers_in_history and c.stake < 1.0:
                    unrecorded.add(i)
                continue
            if self.centre is not None and self.centre_leave_out:
                centre = self.centre.centre(exclude=c.sender)
            cosine = self.centre.direction(local.tensors, centre, c.tensors) if self.centre is not None else None
            if cosine is not None and cosine < self.direction_floor:
                verdicts.append(Verdict(c.sender, "outlier", d, bound,
                                        f"update points away from the recent centre (cosine {cosine:.2f} "
                                        f"< {self.direction_floor:.2f})",
                                        far=False if self.direction_near else None, early=self.direction_near))
                continue
            if self.centre is not None:
                self.centre.add(c.sender, c.tensors)
            weight = 1.0 / (1.0 + (d / scale) ** 2) if scale > 0 else 1.0
            trust = self.loss_check.trust(rise, limit) if self.loss_check is not None and i in rises else 1.0
            accepted.append((Contribution(c.tensors, samples=1, age=c.age, sender=c.sender, weight=weight,
                                          stake=c.stake), trust))
            verdicts.append(Verdict(c.sender, "ok", d, bound))
        # Every model scored feeds the history, refused ones too. Issue 14 asked that refused
        # ones never do (a stranger rotating identities lifts the bound with its refused
        # packets); measured in bench/byzantine.py, that cost honest peers 13 points without
        # any attack (0.806 against 0.938: dropping the refused tail ratchets the bound and the
        # loss limit down until honest models are refused too). Strangers' packets are bounded
        # by their stake instead (protocol/stake.py).
        self.history.add([d for i, d in enumerate(dists) if i not in unrecorded])
        if self.loss_check is not None:
            self.loss_check.record([r for i, r in rises.items() if i not in unrecorded])
        return Judgement(tuple(verdicts), tuple(accepted))



@register
class BristleVCRule(BristleRule):
    """Bristle's filter and weights, then the variance-corrected average."""

    name = "bristle-vc"
    inner = "vc"


# The rule to pick when peers may be hostile, with its loss check (a validator) and
# protocol.reputation: in bench/byzantine.py (16 peers, 4 attackers, non-IID, shared init,
# 40 rounds) it keeps honest peers within 1.1 points of no attack under sign-flip, noise,
# label-flip and small-shift; without the validator it stops neither label-flip nor small
# shift. An omniscient attacker that stays inside both the distance bound and the loss limit
# ("loss-shift": 0.881 vs 0.940) is held by the direction test (0.920; bench/RESULTS.md,
# issue 14 session 7) — not one that also knows the direction test (0.873 there). The daemon's
# default since session 9, when its bound got a floor relative to the model (``floor_ratio``),
# its direction test a centre without the judged sender (``centre_leave_out``) and reputation a
# light weight for near distance outliers (``ReputationConfig.near_weight``): before them, real
# peers from a shared start banned each other within seconds (bench/RESULTS.md, issue 14 session 9).
RECOMMENDED_ROBUST = "bristle"
