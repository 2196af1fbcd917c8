"""What every merge rule shares: the inputs (``Contribution``), the outputs (``MergeReport``
with a ``Verdict`` per received model), the interfaces a rule implements, and the registry
that builds rules by name.

A rule is a ``MergeRule``: it has a ``name`` and merges. A rule that judges what it is
sent is a ``RobustRule``: it also reports a verdict per received model (``merge_report``)
and says how many received models it wants per merge (``buffer``). The callers ask the
interface, never a concrete class: ``merge_batch`` and ``merge_report`` below work for any
rule, and a rule with a loss check declares it through ``protocol.merge.loss_check.LossCheckedRule``.

Every rule module registers its rules here (``@register``) when it is imported; the
package ``protocol.merge`` imports them all, so ``RULES`` is complete once any part of
the package is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar, runtime_checkable

import numpy as np

Tensors = Mapping[str, np.ndarray]

# A received model's weight is multiplied by DEFAULT_DECAY ** age: half weight after
# ~34 of the receiver's local steps. Fresh models (age 0, the daemon's synchronous
# push-pull) are not discounted at all.
DEFAULT_DECAY = 0.98
# Paper's value: the local model and the received ones count half each.
DEFAULT_BETA = 0.5


@dataclass(frozen=True)
class Contribution:
    """One model taking part in a merge, with what its weight may depend on."""

    tensors: Tensors
    # Training samples behind the model (its shard size).
    samples: int = 1
    # How many of the receiver's local steps old the model is (0 = fresh).
    age: int = 0
    # Who sent it (the daemon: the sender's address); robust rules name it in their verdicts.
    sender: str = ""
    # Extra multiplicative weight (robust rules use it to prefer close models); 1 = neutral.
    weight: float = 1.0
    # How much of our model the sender has earned the right to move, in (0, 1]: a peer on
    # first contact starts low (protocol/stake.py). It scales the received models' share as
    # a whole, so even one model alone (whose normalised weight would be 1) moves us less.
    stake: float = 1.0


def is_mergeable(x: np.ndarray) -> bool:
    """Floating tensors are averaged; integer counters and flags keep the local value."""
    return np.dtype(x.dtype).kind == "f"


class MergeRule(Protocol):
    """Combine ``local`` with ``received`` into a new model with the same tensors."""

    name: str

    def merge(self, local: Contribution, received: Sequence[Contribution]) -> dict[str, np.ndarray]:
        ...


Validator = Callable[[Tensors], float]


def _check_unit(what: str, value: float, *, open_low: bool = False) -> None:
    low_ok = value > 0 if open_low else value >= 0
    if not (math.isfinite(value) and low_ok and value <= 1):
        raise ValueError(f"{what} must be in {'(0' if open_low else '[0'}, 1], got {value}")



VerdictKind = Literal["ok", "clipped", "outlier"]


@dataclass(frozen=True)
class Verdict:
    """What a robust rule made of one received model."""

    sender: str
    kind: VerdictKind           # ok: used as sent; clipped: scaled down; outlier: left out or far off
    distance: float             # ‖x_k − x_local‖ (median/trimmed: distance to the robust centre)
    bound: float                # what ``distance`` was compared with (inf: nothing)
    reason: str = ""
    # Farther than any honest model can be, for rules that know (bristle: beyond its warm-up
    # bound, 1.5 norms of our model); False: an outlier an honest model can be (protocol.reputation
    # counts it lightly); None: protocol.reputation judges by distance / bound.
    far: bool | None = None
    # True: evidence from the sender's first judged models on, so protocol.reputation asks whether
    # the sender stands out without waiting ``stand_out_after`` (bristle's direction test: it needs
    # a centre of three other senders' taken models, so it is silent in a run's first seconds,
    # where honest distances outrun the bound and the wait is for).
    early: bool = False


@dataclass(frozen=True)
class MergeReport:
    """A merge's result and one verdict per received model, in the order received."""

    tensors: dict[str, np.ndarray]
    verdicts: tuple[Verdict, ...]


@runtime_checkable
class RobustRule(MergeRule, Protocol):
    """A rule that judges every received model: ``merge_report`` returns the merge with one
    ``Verdict`` per received model (``protocol.reputation`` scores them), and ``buffer`` is how
    many received models it wants per merge (1: merge each as it arrives; the median wants
    several, which the caller collects: ``protocol.merge.batch.PendingModels``)."""

    buffer: int

    def merge_report(self, local: Contribution, received: Sequence[Contribution]) -> MergeReport:
        ...


@dataclass(frozen=True)
class Judgement:
    """What a rule that judges before it merges made of each received model: the verdicts, and
    the models it takes, each with the share of its pull kept (``trust``, in [0, 1]: 1 takes it
    as sent, less moves it that far from our model towards its own)."""

    verdicts: tuple[Verdict, ...]
    accepted: tuple[tuple[Contribution, float], ...]


@runtime_checkable
class SnapshotJudge(RobustRule, Protocol):
    """A robust rule whose judging (``judge``) can run on a snapshot of our model while training
    goes on, and whose merge (``combine``) then applies the verdicts to the model as it is by then:
    ``merge_report(local, r)`` is ``combine(local, judge(local, r))``, bit for bit.

    Why: the loss check evaluates two models per merge. On the daemon's CNN and a 512-image
    validation sample that took about 100 ms, nine training steps, and with a merge every
    0.15 s the trainer, kept waiting under its lock, took a third of vc's steps (issue 14
    session 10). ``expensive`` says whether judging is worth a snapshot (a copy of the model)."""

    def judge(self, local: Contribution, received: Sequence[Contribution]) -> Judgement:
        ...

    def combine(self, local: Contribution, judgement: Judgement) -> MergeReport:
        ...

    @property
    def expensive(self) -> bool:
        ...


def merge_batch(rule: MergeRule) -> int:
    """How many received models ``rule`` wants per merge (1: merge each as it arrives)."""
    return max(int(rule.buffer), 1) if isinstance(rule, RobustRule) else 1


def merge_report(rule: MergeRule, local: Contribution, received: Sequence[Contribution]) -> MergeReport:
    """``rule``'s merge with verdicts; rules that are not robust accept everything."""
    if isinstance(rule, RobustRule):
        return rule.merge_report(local, received)
    return MergeReport(rule.merge(local, received),
                       tuple(Verdict(c.sender, "ok", math.nan, math.inf) for c in received))


def merge_received_report(rule: MergeRule, local_state: Tensors, local_samples: int,
                          received: Sequence[Contribution], *, in_place: bool = False) -> MergeReport:
    """Merge ``received`` models into ``local_state`` with ``rule``, with the rule's verdict on
    each received model (for reputation): the one merge entry point.

    ``in_place=True``: ``local_state``'s arrays are writable (the live model's own tensors)
    and receive the merged model; the report's tensors are those arrays. Rules that merge in
    place (``merges_in_place``: mean, weighted, the vc family) write each tensor a chunk at a
    time, so no model-sized output exists beside the model; the others' output is copied in.
    The bits are the same either way.

    The daemon (``peer.runtime.defence``) and the simulator (``peer.sim.swarm``) both call this, so a test
    can show they produce the same weights by construction, not by copy.
    """
    local = Contribution(local_state, samples=local_samples, age=0)
    if not in_place:
        return merge_report(rule, local, received)
    if getattr(rule, "merges_in_place", False) and not isinstance(rule, RobustRule):
        merged = rule.merge(local, received, out=local_state)  # type: ignore[call-arg]
        return MergeReport(merged, tuple(Verdict(c.sender, "ok", math.nan, math.inf) for c in received))
    return _written_into(local_state, merge_report(rule, local, received))


def _written_into(local_state: Tensors, report: MergeReport) -> MergeReport:
    """``report`` with its tensors copied into ``local_state``'s arrays (those arrays, reported)."""
    for name, x in report.tensors.items():
        into = local_state[name]
        if into is not x:
            into[...] = x
    return MergeReport(dict(local_state), report.verdicts)


def combine_received_report(rule: SnapshotJudge, local_state: Tensors, local_samples: int,
                            judgement: Judgement, *, in_place: bool = False) -> MergeReport:
    """``rule``'s merge of what it judged (``judgement``, perhaps on an older snapshot) into
    ``local_state``; ``in_place`` as ``merge_received_report``, whose result this is when the
    judgement was made on ``local_state`` itself."""
    report = rule.combine(Contribution(local_state, samples=local_samples, age=0), judgement)
    return _written_into(local_state, report) if in_place else report


# --- the registry ------------------------------------------------------------------------------

RULES: dict[str, type[MergeRule]] = {}

R = TypeVar("R", bound=type[MergeRule])


def register(rule: R) -> R:
    """Class decorator: ``make_rule(rule.name)`` builds ``rule`` with its defaults."""
    if rule.name in RULES:
        raise ValueError(f"merge rule {rule.name!r} is registered twice")
    RULES[rule.name] = rule
    return rule


def make_rule(name: str) -> MergeRule:
    """The merge rule called ``name``; ``ValueError`` listing the known ones otherwise."""
    try:
        return RULES[name]()
    except KeyError:
        raise ValueError(f"unknown merge rule {name!r}; known: {', '.join(sorted(RULES))}") from None
