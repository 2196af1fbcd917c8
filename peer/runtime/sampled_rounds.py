"""Server-free sampled rounds (MoDeST) in a running peer: ``mode = sampled``.

Round r's trainers and aggregators are chosen by hashing (r, address) over this peer's
live view (``protocol.rounds.sample_round``), so every peer with the same view agrees on
them with no coordinator. In round r a trainer starts from the aggregate of round r - 1,
takes ``round_steps`` local steps and sends its model to the round's aggregators; an
aggregator averages what reaches it (FedAvg's sample weights), waiting for the round's
live trainers at most ``round_deadline`` after the first model arrived, adopts the
aggregate and sends it to round r + 1's trainers. A peer not sampled keeps the latest
aggregate it saw.

Round numbers travel with the models: every packet says what its model is (a
``RoundLabel`` in its telemetry), and a newer aggregate is adopted wherever it comes from,
a pull's reply included. Pushes (a trained model to an aggregator, an aggregate to the next
round's trainers) are one-way: the answer carries no model, so a round sends what FedAvg
sends. Recovery needs no extra message: an aggregator that fails an exchange is skipped and
the next live one in hash order takes the round (it collects any trained model sent to it);
a peer that has heard nothing for ``round_deadline`` resends its trained model, or, holding
an aggregate, exchanges (both ways) with a random live peer and so learns the newest
aggregate (anti-entropy: how peers not sampled, and peers that joined late, catch up).

The decisions are pure (``protocol.rounds``); this module adds the clock, the trainer and
the packets. Models travel through ``GossipEngine``'s own exchanges (codec policy, per-link
replicas, wire framing, admission, bans): the engine hands every received model to
``take`` instead of merging it. The aggregate is FedAvg bounded as the gossip merge is
(``protocol.rounds.Collection.aggregate``): claimed sample counts are capped at twice the
round's median claim (our own shard counted in), and a trained model farther from the
aggregate the round started from than twice the lower median update norm is left out (or
clipped to it, when no model is nearer), so one trainer claiming 2^64 - 1 samples, or
sending any model, moves the aggregate by at most that bound (issue 14).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping

import numpy as np

from peer.runtime.gossip import Exchange, GossipEngine
from protocol.errors import Refusal
from protocol.merge import delta_norm
from protocol.rounds import AGGREGATE, TRAINED, TRAINING, RoundBook, RoundLabel, RoundSample, Take, \
    eligible_aggregators, judge, sample_round
from protocol.wire import PacketHeader

log = logging.getLogger(__name__)

# Before round 1, wait until the live view holds another peer and has not changed for this
# long (capped by the round deadline), so peers starting together agree on round 1's sample
# instead of each running rounds alone with a view of one.
SETTLE_SECONDS = 2.0
SETTLE_LIMIT_FACTOR = 10  # ... but never longer than this many settle periods in all (a peer alone)
# A partner busy exchanging with us is asked again after a short random pause.
BUSY_RETRY_SECONDS = (0.02, 0.1)
# Aggregates received and not yet adopted, newest kept: one refused (rule 3) falls back to the next.
PENDING_LIMIT = 4


class RoundRefusal(Refusal):
    """An aggregate this peer will not adopt (``protocol.rounds``' rules); ``reason`` says which rule."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _copy(model: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A received model is a view of our copy of the sender's model, which the next update
    on that link changes in place: a model kept for later must be a copy of its own."""
    return {k: np.array(v, copy=True) for k, v in model.items()}


class SampledRounds:
    """Drives one peer's rounds; ``run`` replaces the trainer thread and the gossip loop."""

    def __init__(self, engine: GossipEngine, *, trainers: int, aggregators: int, steps: int, deadline: float,
                 rng: random.Random) -> None:
        self.engine = engine
        self.trainer = engine.trainer
        self.trainers = trainers  # 0: every live peer
        self.aggregators = aggregators
        self.steps = steps
        self.deadline = deadline
        self.rng = rng
        self.clock = engine.clock
        self.book = RoundBook()
        self.label = RoundLabel(AGGREGATE, 0)  # what our model is: every packet we send says so
        # (round, sender) -> an aggregate received and admitted by pace and origin, not yet adopted
        self._pending: dict[tuple[int, str], dict[str, np.ndarray]] = {}
        # The aggregate we adopted last (not a copy: the trainer loads it into its own tensors):
        # the reference the next round's trained models are judged against (set to the initial model in run).
        self._adopted_model: dict[str, np.ndarray] | None = None
        self._wake = asyncio.Event()
        self._quiet_since = self.clock()      # last adoption, delivery or pull
        self._failed: dict[int, set[str]] = {}  # per round: aggregators that failed us
        self._background: set[asyncio.Task[bool]] = set()  # pushes still running after their round moved on
        self._stopping = asyncio.Event()  # replaced by run's
        self._evaluate_next = True  # the starting accuracy, then each aggregate a peer not sampled adopts
        # Called with each round this peer aggregates and its aggregate (benchmarks score it here).
        self.on_aggregate: Callable[[int, Mapping[str, np.ndarray]], None] | None = None
        self.contributions = 0  # trained models delivered to an aggregator (metrics)
        engine.on_model = self.take
        engine.extra_telemetry = self.label_telemetry

    def label_telemetry(self) -> dict[str, str | int]:
        return self.label.telemetry()

    # --- the sample ----------------------------------------------------------------------------
    def peers(self) -> list[str]:
        """This peer and every live, unbanned member, by address (the ids the sample hashes)."""
        engine = self.engine
        others = [m.address for m in engine.membership.live() if not engine.defence.is_banned(engine.who(m.address))]
        return [engine.address, *others]

    def sample(self, round_number: int, exclude: set[str] | frozenset[str] = frozenset()) -> RoundSample:
        peers = self.peers()
        return sample_round(round_number, peers, self.trainers or len(peers), self.aggregators,
                            is_live=lambda a: a not in exclude)

    @property
    def round_number(self) -> int:
        """The round of the aggregate this peer holds (0: the initial model)."""
        return self.book.adopted

    def role(self) -> str:
        """This peer's part in the next round (``round_number + 1``) as its view now has it."""
        s = self.sample(self.book.adopted + 1)
        me = self.engine.address
        roles = [name for name, chosen in (("trainer", me in s.trainers), ("aggregator", me in s.aggregators))
                 if chosen]
        return "+".join(roles) or "idle"

    # --- received models (on the event loop, from the engine) ----------------------------------
    def _newest(self) -> int:
        return max([self.book.adopted, *(r for r, _ in self._pending)])

    def _refuse(self, reason: str, message: str) -> None:
        self.engine.count_rejected(RoundRefusal(reason, message))

    def take(self, link: str, header: PacketHeader, model: Mapping[str, np.ndarray], inbound: bool) -> bool:
        """Every received model comes here instead of the merge (``GossipEngine.on_model``).
        ``link`` is the sender as the engine authenticated it (the connection's, or the peer we
        called), never only the header's claim: round claims and aggregators key on it."""
        label = RoundLabel.from_telemetry(header.telemetry)
        peers = self.peers()
        if label is not None and link != self.engine.address:
            self.book.note_claim(link, label, peers)
        # Against the aggregate held, not the pending ones: a pending one may yet be refused (rule 3).
        what = judge(label, self.book.adopted, inbound)
        if label is not None and what is Take.ADOPT:
            eligible = eligible_aggregators(label.round_number, peers, self.aggregators)
            refused = self.book.admit(label.round_number, link, eligible)
            if refused is not None:
                self._refuse(refused, f"an aggregate of round {label.round_number} from {link} (holding "
                                      f"{self.book.adopted}, confirmed {self.book.confirmed()})")
                return True
            self._pending[(label.round_number, link)] = _copy(model)
            for old in sorted(self._pending)[:-PENDING_LIMIT]:
                del self._pending[old]
            self._wake.set()
        elif label is not None and what is Take.COLLECT:
            me = self.engine.address
            refused = self.book.admit_trained(label.round_number, me,
                                              eligible_aggregators(label.round_number, peers, self.aggregators))
            if refused is not None:
                self._refuse(refused, f"a trained model of round {label.round_number} from {link} (holding "
                                      f"{self.book.adopted}, confirmed {self.book.confirmed()})")
                return True
            self.book.collect(label.round_number, link, _copy(model), header.samples, self.clock())
            self._wake.set()
        return True  # nothing received is ever merged in this mode

    # --- the loop ------------------------------------------------------------------------------
    def halted(self) -> bool:
        """Stopping, or leaving (the node drains: start no new exchanges)."""
        return self._stopping.is_set() or self.engine.draining

    async def run(self, exchange: Exchange, stopping: asyncio.Event) -> None:
        self._stopping = stopping
        if self._adopted_model is None and self.book.adopted == 0:  # round 1 starts from the initial model
            self._adopted_model = await asyncio.to_thread(self.trainer.state)
        await self._settle(stopping)
        tick = min(self.engine.interval, self.deadline / 4)
        while not self.halted():
            await self.step(exchange, stopping)
            try:  # woken by a received model, or by the tick for deadlines
                await asyncio.wait_for(self._wake.wait(), timeout=tick)
            except TimeoutError:
                pass
            self._wake.clear()
        for task in list(self._background):
            task.cancel()

    async def _settle(self, stopping: asyncio.Event) -> None:
        settle = min(SETTLE_SECONDS, self.deadline)
        limit = self.clock() + SETTLE_LIMIT_FACTOR * settle
        view, since = sorted(self.peers()), self.clock()
        # A view of one is not settled: peers started together come up seconds apart on a busy
        # machine, and the first one up would otherwise run rounds alone until the others came.
        while not stopping.is_set() and self.clock() < limit and (self.clock() - since < settle or len(view) < 2):
            await asyncio.sleep(0.1)  # polling the view with a deadline: membership has no change event
            now_view = sorted(self.peers())
            if now_view != view:
                view, since = now_view, self.clock()
        log.info("sampled rounds: starting with %d peer(s) in view", len(view))

    async def step(self, exchange: Exchange, stopping: asyncio.Event) -> None:
        """One pass: close a round that is due, adopt a newer aggregate, then train, resend or pull."""
        due = self.book.due(lambda r: self.sample(r).trainers, self.clock(), self.deadline)
        if due:
            await self._close(due[0].round_number, exchange)  # the newest: closing it makes older ones moot
        await self._adopt_pending()
        r = self.book.adopted + 1
        chosen = self.engine.address in self.sample(r).trainers
        if self._evaluate_next and not chosen:  # a peer not sampled shows the aggregate it holds
            self._evaluate_next = False
            await asyncio.to_thread(self.trainer.evaluate)
        quiet = self.clock() - self._quiet_since >= self.deadline
        if self.label.kind == AGGREGATE and chosen:
            await self._train(r, stopping)
            await self._deliver(r, exchange)
        elif self.label.kind == TRAINED and self.label.round_number > self.book.adopted and quiet:
            log.info("no aggregate of round %d within %.1f s: sending our model again", r, self.deadline)
            await self._deliver(self.label.round_number, exchange)
        elif quiet:
            await self._pull(exchange)

    async def _adopt_pending(self) -> None:
        """Adopt the newest pending aggregate within rule 3's bound of ours (a refused one falls
        back to the next newest); a newer one may arrive while we adopt."""
        while self._pending:
            round_number, sender = max(self._pending)
            model = self._pending.pop((round_number, sender))
            if round_number <= self.book.adopted:
                continue
            refused = await asyncio.to_thread(self.book.admit_move, round_number, sender, model,
                                              self._adopted_model)
            if refused is not None:
                self._refuse(refused, f"the aggregate of round {round_number} from {sender} is farther from ours "
                                      f"than {self.book.move_bound(round_number):.3g}")
                continue
            await self._adopt(round_number, model, await self._distance(model))

    async def _distance(self, model: Mapping[str, np.ndarray]) -> float:
        """How far ``model`` is from the aggregate we hold (inf before run set it)."""
        if self._adopted_model is None:
            return float("inf")
        return await asyncio.to_thread(delta_norm, self._adopted_model, model)

    async def _adopt(self, round_number: int, model: dict[str, np.ndarray], distance: float | None = None) -> None:
        await asyncio.to_thread(self.trainer.merge_with, lambda _current: model, adopt=True)
        self._adopted_model = model
        self.book.adopt(round_number, distance)
        self.label = RoundLabel(AGGREGATE, round_number)
        self._quiet_since = self.clock()
        self._evaluate_next = True
        for r in [r for r in self._failed if r <= round_number]:
            del self._failed[r]
        log.debug("adopted the aggregate of round %d", round_number)

    # --- the parts -----------------------------------------------------------------------------
    async def _train(self, round_number: int, stopping: asyncio.Event) -> None:
        self.label = RoundLabel(TRAINING, round_number)  # snapshots sent meanwhile are never used
        if not self.trainer.stats().done:  # past max_steps: the aggregate goes back untrained
            started = self.clock()
            await asyncio.to_thread(self.trainer.train_steps, self.steps)
            # steps_per_second bounds the step rate as in gossip mode (the same compute budget,
            # and peers sharing a machine do not spin rounds flat out): a rate limit, not a wait.
            spare = self.steps * self.trainer.min_step_seconds - (self.clock() - started)
            if spare > 0:
                try:
                    await asyncio.wait_for(stopping.wait(), timeout=spare)
                except TimeoutError:
                    pass
            # Our own update's norm, an honest scale: for the clip of a round we close (a lone
            # trainer's model is bounded by it) and for how far an aggregate may move ours (rule 3).
            self.book.norms.add([await self._distance(await asyncio.to_thread(self.trainer.state))])
        self.label = RoundLabel(TRAINED, round_number)

    async def _close(self, round_number: int, exchange: Exchange) -> None:
        """Aggregate round ``round_number``, adopt it, and pass it to the next round's trainers."""
        collection = self.book.collecting[round_number]
        aggregate = await asyncio.to_thread(collection.aggregate, self._adopted_model, self.trainer.samples,
                                            self.book.norms)
        log.info("round %d aggregated from %d model(s)", round_number, len(collection.arrived))
        self.book.aggregated += 1
        if self.on_aggregate is not None:
            self.on_aggregate(round_number, aggregate)
        await self._adopt(round_number, aggregate, await self._distance(aggregate))
        me = self.engine.address
        targets = [a for a in self.sample(round_number + 1).trainers if a != me]
        await self._push(targets, exchange)

    async def _push(self, targets: list[str], exchange: Exchange) -> None:
        """Send our model to ``targets``, waiting at most a deadline (a push still running then
        goes on in the background; its packet was built at its start)."""
        until = self.clock() + self.deadline
        tasks = [asyncio.ensure_future(self._send(a, exchange, until)) for a in targets]
        if not tasks:
            return
        _done, running = await asyncio.wait(tasks, timeout=self.deadline)
        for task in running:
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _deliver(self, round_number: int, exchange: Exchange) -> None:
        """Our trained model to round ``round_number``'s aggregators: the first live ones in hash
        order, skipping any that failed us this round (the next one replaces it)."""
        me = self.engine.address
        failed = self._failed.setdefault(round_number, set())
        delivered: set[str] = set()
        until = self.clock() + self.deadline
        self._quiet_since = self.clock()
        while self.clock() < until and self._newest() < round_number and not self.halted():
            targets = [a for a in self.sample(round_number, exclude=failed).aggregators if a not in delivered]
            if not targets:
                break
            if me in targets:  # our own aggregator: no packet
                self.book.collect(round_number, me, await asyncio.to_thread(self.trainer.state),
                                  self.trainer.samples, self.clock())
                delivered.add(me)
                self._wake.set()
            remote = [a for a in targets if a != me]
            results = await asyncio.gather(*(self._send(a, exchange, until) for a in remote))
            for address, ok in zip(remote, results):
                (delivered if ok else failed).add(address)
                if not ok:
                    log.info("aggregator %s of round %d did not take our model: trying the next", address,
                             round_number)
        self.contributions += len(delivered)
        self._quiet_since = self.clock()

    async def _send(self, address: str, exchange: Exchange, until: float) -> bool:
        """Our model to ``address``, one-way (its answer carries no model: a trainer has no use for
        the aggregator's, nor the next round's trainer for ours, so a round sends FedAvg's bytes),
        asked again while the partner is merely busy (or could not apply our update: the next
        try is a keyframe); False when it failed or the time ran out."""
        while self.clock() < until and not self.halted():
            member = self.engine.membership.get(address)
            if member is None or not member.live:
                return False
            failures = self.engine.link(address).failures
            if await self.engine.exchange_with(member, exchange, one_way=True):
                return True
            if self.engine.link(address).failures > failures:
                return False  # unreachable or refusing: the failure detector has been told
            await asyncio.sleep(self.rng.uniform(*BUSY_RETRY_SECONDS))  # busy: a retry backoff, not a wait
        return False

    async def _pull(self, exchange: Exchange) -> None:
        """Nothing heard for a deadline: one exchange with a random live peer; whichever of us
        holds the older aggregate adopts the newer one (how peers not sampled catch up)."""
        self._quiet_since = self.clock()
        partner = self.engine.pick_partner()
        if partner is not None:
            await self.engine.exchange_with(partner, exchange)

