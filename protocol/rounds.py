"""Sampled rounds without a server (MoDeST-style): who trains and who aggregates in round r.

Every peer computes the same sample from its membership view and the round number, with
no coordinator: peers are ranked by a hash of (round, peer id), separately for the two
roles, and the first live ones in each ranking are taken. A dead or unreachable
aggregator is therefore replaced by the next live peer in hash order, and two peers
with the same view of who is live agree on the sample. Round numbers travel with the
models (an aggregate of round r starts round r + 1's training).

An aggregate replaces the receiver's model whole, so who may send one, of which round,
and how far it may move the model are decided here (``RoundBook.admit`` and
``RoundBook.admit_move``, issue 14): see "which aggregates a peer adopts" below.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from protocol.merge import clip_toward, delta_norm, weighted_average
from protocol.merge.history import NormHistory
from protocol.stake import StakeConfig

# A trainer's claims are its own to make: the sample count in its header, and its model.
# The aggregate bounds both, as the gossip merge does (protocol/stake.py, the ``clip`` rule):
# a claimed count is capped at ``CAP_FACTOR`` x the median claim of the round (the
# aggregator's own shard counted in), and a model whose update (its distance from the
# model the round started from) is beyond ``CLIP_MULTIPLIER`` x the lower median of the
# update norms seen (this round's and the last ``NORM_WINDOW``) is left out, or clipped
# to that bound when no model is within it. Whatever one trainer sends, the aggregate then
# moves from the round's start by at most that bound.
CAP_FACTOR = StakeConfig().cap_factor
CLIP_MULTIPLIER = 2.0
NORM_WINDOW = 32


def ranking(round_number: int, peer_ids: Sequence[str], role: str) -> list[str]:
    """``peer_ids`` ordered by SHA-256 of (role, round, id): a fresh, agreed shuffle per round and role."""
    def key(peer_id: str) -> bytes:
        return hashlib.sha256(f"{role}\x00{round_number}\x00{peer_id}".encode()).digest()
    return sorted(set(peer_ids), key=key)


@dataclass(frozen=True)
class RoundSample:
    round_number: int
    trainers: tuple[str, ...]
    aggregators: tuple[str, ...]


def sample_round(round_number: int, peer_ids: Sequence[str], trainers: int, aggregators: int,
                 is_live: Callable[[str], bool] = lambda _: True) -> RoundSample:
    """The first ``trainers`` live peers of the trainer ranking and the first ``aggregators``
    live peers of the aggregator ranking (fewer when fewer are live; a peer may hold both roles)."""
    if trainers < 1 or aggregators < 1:
        raise ValueError("a round needs at least one trainer and one aggregator")

    def first_live(role: str, k: int) -> tuple[str, ...]:
        return tuple([p for p in ranking(round_number, peer_ids, role) if is_live(p)][:k])

    return RoundSample(round_number, first_live("train", trainers), first_live("aggregate", aggregators))


# --- what a peer's model is, and what a received one is to it -------------------------------
# Every packet of a peer in sampled mode says what its model is (``RoundLabel``, carried in
# the packet's telemetry map): the aggregate of round r, a model being trained in round r
# (never used: a snapshot taken mid-training), or the model trained in round r.
AGGREGATE, TRAINING, TRAINED = "agg", "busy", "trained"
KINDS = (AGGREGATE, TRAINING, TRAINED)
_KIND_KEY, _ROUND_KEY = "rk", "rn"


@dataclass(frozen=True)
class RoundLabel:
    kind: str
    round_number: int

    def telemetry(self) -> dict[str, str | int]:
        return {_KIND_KEY: self.kind, _ROUND_KEY: self.round_number}

    @staticmethod
    def from_telemetry(telemetry: Mapping[str, object]) -> RoundLabel | None:
        """The label a packet carries; None for a packet without one (a peer in gossip mode)
        or with a malformed one (another peer's claims are never trusted to be well formed)."""
        kind, number = telemetry.get(_KIND_KEY), telemetry.get(_ROUND_KEY)
        if kind not in KINDS or not isinstance(number, int) or isinstance(number, bool) or number < 0:
            return None
        return RoundLabel(str(kind), number)


class Take(enum.Enum):
    ADOPT = "adopt"        # a newer aggregate: start from it
    COLLECT = "collect"    # a trained model of a round we have not seen aggregated: average it
    IGNORE = "ignore"


def judge(label: RoundLabel | None, adopted: int, inbound: bool) -> Take:
    """What a peer holding the aggregate of round ``adopted`` does with a received model.

    A newer aggregate is adopted whichever way it came. A trained model is collected only
    when its sender sent it to us (``inbound``): the sender chose us as an aggregator of its
    round, in its view, so a replacement aggregator takes what a dead one would have; a
    trained model in the *reply* to our own packet is the partner's own business. Models of
    rounds already aggregated, and snapshots taken mid-training, are ignored.
    """
    if label is None or label.kind == TRAINING:
        return Take.IGNORE
    if label.kind == AGGREGATE:
        return Take.ADOPT if label.round_number > adopted else Take.IGNORE
    return Take.COLLECT if inbound and label.round_number > adopted else Take.IGNORE


@dataclass
class Collection:
    """What an aggregator has received for one round: the senders' models and sample counts."""

    round_number: int
    opened_at: float
    arrived: dict[str, tuple[Mapping[str, np.ndarray], int]] = field(default_factory=dict)

    def add(self, sender: str, model: Mapping[str, np.ndarray], samples: int) -> None:
        self.arrived[sender] = (model, samples)  # a resend replaces the sender's earlier model

    def ready(self, expected: Iterable[str], now: float, deadline: float) -> bool:
        """Complete (every expected live trainer sent), or past the deadline with at least one
        model: a dead or slow trainer delays a round by at most ``deadline``, never stalls it."""
        if not self.arrived:
            return False
        return set(expected) <= set(self.arrived) or now - self.opened_at >= deadline

    def weights(self, own_samples: int = 0) -> dict[str, int]:
        """Each sender's claimed count, capped at ``CAP_FACTOR`` x the median of the round's
        claims and ``own_samples`` (when positive): one huge claim cannot move the median."""
        claims = {s: max(int(n), 1) for s, (_, n) in self.arrived.items()}
        pool = [*claims.values(), *([own_samples] if own_samples > 0 else [])]
        cap = max(int(CAP_FACTOR * float(np.median(pool))), 1)
        return {s: min(n, cap) for s, n in claims.items()}

    def aggregate(self, reference: Mapping[str, np.ndarray] | None = None, own_samples: int = 0,
                  history: NormHistory | None = None) -> dict[str, np.ndarray]:
        """FedAvg over capped sample counts (``weights``), in sender order (so the result does
        not depend on the order they arrived in). With ``reference`` (the model the round
        started from), models farther than ``clip_bound`` from it are left out (all clipped to
        it when none is nearer), so the aggregate lies within that bound of ``reference``
        whatever any trainer sent."""
        senders = sorted(self.arrived)
        weights = self.weights(own_samples)
        models = [self.arrived[s][0] for s in senders]
        kept = [weights[s] for s in senders]
        if reference is not None:
            norms = [delta_norm(reference, m) for m in models]
            bound = clip_bound(norms, history)
            if history is not None:
                history.add(norms)
            # Beyond the bound is an outlier (as ``bristle`` has it): left out while any model is
            # within it, else clipped to it (a lone trainer is bounded by the history's norms).
            near = [i for i, n in enumerate(norms) if n <= bound]
            if near:
                models, kept = [models[i] for i in near], [kept[i] for i in near]
            else:
                models = [clip_toward(reference, m, bound)[0] for m in models]
        return weighted_average(models, kept)


def clip_bound(norms: Sequence[float], history: NormHistory | None = None) -> float:
    """``CLIP_MULTIPLIER`` x the lower median of the finite update norms of this round and
    ``history``: a minority of hostile trainers cannot raise it (with one honest and one
    hostile model, the lower median is the honest one's norm)."""
    seen = sorted(n for n in [*norms, *(history.values() if history is not None else ())] if math.isfinite(n))
    if not seen:
        return 0.0
    return CLIP_MULTIPLIER * seen[(len(seen) - 1) // 2]


# --- which aggregates a peer adopts (issue 14) -------------------------------------------------
# A label is a claim: a stranger could label any model "the aggregate of round 2^62", and
# a peer adopting it would lose its model and ignore every real round below that number.
# Round numbers are claims of the senders (authenticated by the connection, never by the
# header alone), so a peer adopts the aggregate of round r from sender s only when:
#  1. pace: r <= max(adopted, confirmed) + MAX_AHEAD, where ``confirmed`` is the highest
#     round that CONFIRMATIONS distinct peers of the view claimed to have reached (the labels
#     of their packets): one sender's claim never moves it, so a forged 2^62 is refused,
#     and so is a round an attacker ground until the hash made it the aggregator: it may
#     choose among MAX_AHEAD rounds only, not among all of them;
#  2. origin: s is one of round r's first ``aggregators`` + AGGREGATOR_SLACK peers in hash
#     order over the receiver's own view (the slack: a replacement for a dead aggregator
#     the receiver still holds live), or r <= confirmed (a relay of a round other peers
#     vouch for: how a peer not sampled catches up through a pull);
#     A trained model sent to us is collected by rules 1 and 2 too (``admit_trained``): the
#     round we close becomes our aggregate, so a trained model of round 2^62, or of a round
#     we are no aggregator of, would otherwise be the same takeover.
#  3. model: it lies within ADOPT_MULTIPLIER x (r - adopted) x the lower median of the
#     per-round moves this peer has seen (update norms: its own trained models' and those it
#     aggregated; its adopted aggregates' moves per round) of the aggregate it holds; none
#     seen yet (a new peer): not checked. The multiplier is wide because update norms grow
#     about 1.7x a round early in training (an honest aggregate is never refused). Beyond it,
#     the peer adopts it only when two distinct senders sent far aggregates within the
#     bound of each other (then its own model is the odd one out, e.g. after a partition).
# A late joiner or a partitioned peer catches up by the same rules: the labels of the packets
# it receives (pushes, pulls, trained models sent to it) raise ``confirmed`` within a round
# or two, and the next aggregate it is sent is within pace. What remains: CONFIRMATIONS
# colluding identities (without TLS or a keyring, strangers on one host can speak for each
# other, peer/transport/identity.py), and a sampled aggregator's own aggregate, bounded by 3.
MAX_AHEAD = 4
AGGREGATOR_SLACK = 1
CONFIRMATIONS = 2
ADOPT_MULTIPLIER = 4 * CLIP_MULTIPLIER
# Refusal reasons, counted with the engine's other refusals (Status, metrics).
ROUND_AHEAD, NOT_AGGREGATOR, AGGREGATE_FAR = "round_ahead", "not_aggregator", "aggregate_far"


def eligible_aggregators(round_number: int, peer_ids: Sequence[str], aggregators: int) -> tuple[str, ...]:
    """Who may send round ``round_number``'s aggregate in this view: its first ``aggregators``
    in hash order and AGGREGATOR_SLACK more."""
    return tuple(ranking(round_number, peer_ids, "aggregate")[:aggregators + AGGREGATOR_SLACK])


def reached(label: RoundLabel) -> int:
    """The newest aggregate a label says its sender holds (a trainer of round r started from r - 1's)."""
    return label.round_number if label.kind == AGGREGATE else max(label.round_number - 1, 0)


class RoundBook:
    """One peer's rounds: the round of the aggregate it holds, and the rounds it is collecting."""

    def __init__(self) -> None:
        self.adopted = 0  # 0: the initial model (every peer of a cluster starts from one model)
        self.collecting: dict[int, Collection] = {}
        self.aggregated = 0  # rounds this peer closed as an aggregator
        self.norms = NormHistory(NORM_WINDOW, warmup=1)  # update norms: of rounds aggregated here, and our own
        self.moves = NormHistory(NORM_WINDOW, warmup=1)  # per-round moves of the aggregates adopted here
        self.claims: dict[str, int] = {}  # sender -> the round its latest packet said it reached
        # The last aggregate refused by rule 3 since the last adoption: (round, sender, model).
        self._far: tuple[int, str, Mapping[str, np.ndarray]] | None = None

    def note_claim(self, sender: str, label: RoundLabel, members: Iterable[str]) -> None:
        """``sender`` (as the connection proved it) sent a packet labelled ``label``. Claims of
        peers that left ``members`` are dropped, so the table is no larger than the view."""
        self.claims[sender] = reached(label)
        if len(self.claims) > CONFIRMATIONS:
            keep = set(members) | {sender}
            for gone in [s for s in self.claims if s not in keep]:
                del self.claims[gone]

    def confirmed(self) -> int:
        """The highest round CONFIRMATIONS distinct senders claimed to have reached."""
        top = sorted(self.claims.values(), reverse=True)
        return top[CONFIRMATIONS - 1] if len(top) >= CONFIRMATIONS else 0

    def admit(self, round_number: int, sender: str, eligible: Sequence[str]) -> str | None:
        """Rules 1 and 2 for an aggregate of ``round_number`` (newer than ``adopted``) from
        ``sender``: None to take it, else the refusal's reason."""
        confirmed = self.confirmed()
        if round_number > max(self.adopted, confirmed) + MAX_AHEAD:
            return ROUND_AHEAD
        if sender not in eligible and round_number > confirmed:
            return NOT_AGGREGATOR
        return None

    def admit_trained(self, round_number: int, me: str, eligible: Sequence[str]) -> str | None:
        """Rules 1 and 2 for a trained model of ``round_number`` sent to us (``me``): a round
        closed here becomes our aggregate, so a far round (pace), or a round we are not an
        aggregator of in our own view (origin: the trainer's choice is its claim), is refused."""
        if round_number > max(self.adopted, self.confirmed()) + MAX_AHEAD:
            return ROUND_AHEAD
        return None if me in eligible else NOT_AGGREGATOR

    def move_bound(self, round_number: int, since: int | None = None) -> float:
        """Rule 3's bound on how far round ``round_number``'s aggregate may be from round
        ``since``'s (default: the one we hold); inf while no move was seen."""
        seen = sorted(n for n in [*self.norms.values(), *self.moves.values()] if math.isfinite(n))
        if not seen:
            return math.inf
        gap = abs(round_number - (self.adopted if since is None else since))
        return ADOPT_MULTIPLIER * max(gap, 1) * seen[(len(seen) - 1) // 2]

    def admit_move(self, round_number: int, sender: str, model: Mapping[str, np.ndarray],
                   reference: Mapping[str, np.ndarray] | None) -> str | None:
        """Rule 3 for an aggregate ``model`` of ``round_number`` from ``sender``, against the
        aggregate we hold (``reference``; None: nothing to judge against): None to take it, else
        the refusal's reason. Beyond the bound, it is taken only when the last one refused came
        from another sender and lies within the bound of it: two senders agree on a model far
        from ours, so ours is the odd one out (a partition, a peer poisoned earlier). A far
        aggregate from one sender, however often sent, never is."""
        if reference is None or delta_norm(reference, model) <= self.move_bound(round_number):
            return None
        far, self._far = self._far, (round_number, sender, model)
        if far is not None and far[1] != sender and \
                delta_norm(far[2], model) <= self.move_bound(round_number, since=far[0]):
            return None
        return AGGREGATE_FAR

    def collect(self, round_number: int, sender: str, model: Mapping[str, np.ndarray], samples: int,
                now: float) -> None:
        if round_number <= self.adopted:
            return
        self.collecting.setdefault(round_number, Collection(round_number, now)).add(sender, model, samples)

    def adopt(self, round_number: int, distance: float | None = None) -> None:
        """We hold the aggregate of ``round_number``: rounds up to it need no aggregating here.
        ``distance``: how far it is from the aggregate held before (a per-round move for rule 3)."""
        if distance is not None and math.isfinite(distance) and round_number > self.adopted:
            self.moves.add([distance / (round_number - self.adopted)])
        self.adopted = max(self.adopted, round_number)
        self._far = None
        for r in [r for r in self.collecting if r <= self.adopted]:
            del self.collecting[r]

    def due(self, expected: Callable[[int], Iterable[str]], now: float, deadline: float) -> list[Collection]:
        """Collections ready to close, newest first (closing the newest makes the older moot)."""
        return sorted((c for r, c in self.collecting.items() if c.ready(expected(r), now, deadline)),
                      key=lambda c: -c.round_number)
