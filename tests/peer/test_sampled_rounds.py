"""Sampled rounds (peer/runtime/sampled_rounds.py) in one process: four daemons' engines,
each with its real trainer on a digits shard, exchanging their real packets through each
other's ``handle_inbound`` (no gRPC: the integration test runs that). Rounds advance,
the aggregate reaches every peer, accuracy rises, a dead aggregator's rounds are
taken by the next live peer in hash order, a hostile trainer's huge claimed count and
model move the aggregate at most the stated bound, a forged or ground aggregate takes no
peer over, and a late joiner still catches up with the swarm's round."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence

import numpy as np

from peer.runtime.config import PeerConfig
from peer.runtime.gossip import GossipEngine
from peer.runtime.sampled_rounds import SampledRounds
from peer.sim.attacks import AttackerEngine, PoisoningTrainer
from peer.transport.errors import PartnerGone
from protocol.deadlines import Budget
from protocol.membership import StaticMembership
from protocol.merge import delta_norm, make_rule
from protocol.rounds import (AGGREGATE, AGGREGATE_FAR, CLIP_MULTIPLIER, MAX_AHEAD, NOT_AGGREGATOR, ROUND_AHEAD,
                             TRAINED, TRAINING, RoundLabel, eligible_aggregators, ranking)
from protocol.wire import Buffer, Limits
from tests.trainers import build_trainer

PEERS = 4


class Swarm:
    """Engines that reach each other in-process; a peer in ``dead`` answers nothing."""

    def __init__(self, peers: int, trainers: int, deadline: float = 1.0, hostile: int | None = None) -> None:
        self.addresses = [f"127.0.0.1:{7000 + i}" for i in range(peers)]
        self.dead: set[str] = set()
        self.engines: dict[str, GossipEngine] = {}
        self.rounds: dict[str, SampledRounds] = {}
        for i, address in enumerate(self.addresses):
            trainer = build_trainer(PeerConfig(shard_index=i, shard_count=peers, seed=i, steps_per_second=0))
            engine_class = GossipEngine
            if i == hostile:  # sends its trained models scaled by -1000, claiming 2^64 - 1 samples
                trainer = PoisoningTrainer(trainer, self._poison(address))
                engine_class = AttackerEngine
            engine = engine_class(peer_id=f"peer-{i}", address=address, trainer=trainer,
                                  membership=StaticMembership(address), merge_rule=make_rule("vc"), codec="fp32",
                                  limits=Limits(), rng=random.Random(i), interval=0.2, timeout=5.0)
            for other in self.addresses:
                if other != address:
                    engine.membership.add_seed(other)
            self.engines[address] = engine
            self.rounds[address] = SampledRounds(engine, trainers=trainers, aggregators=1, steps=10,
                                                 deadline=deadline, rng=random.Random(i))
            if isinstance(engine, AttackerEngine):
                engine.claim_samples = 2**64 - 1
        self.stopping = {a: asyncio.Event() for a in self.addresses}

    def _poison(self, address: str):  # the model a hostile trainer sends
        def poison(_victim: str) -> dict[str, np.ndarray]:
            rounds = self.rounds[address]
            real = rounds.trainer._trainer.state()  # the attacker's own trainer
            if rounds.label.kind != TRAINED:  # only its trained models: aggregates it sends are honest
                return real
            return {k: (-1000 * v).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in real.items()}
        return poison

    def exchange_from(self, caller: str):  # noqa: ANN201 - an Exchange
        async def exchange(address: str, packet: Buffer | Sequence[Buffer], budget: Budget) -> Buffer:
            if address in self.dead or caller in self.dead:
                raise PartnerGone(f"{address} is down")
            reply = await self.engines[address].handle_inbound(packet, caller)
            return bytearray().join(reply)
        return exchange

    def start(self, addresses: Sequence[str] | None = None) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self.rounds[a].run(self.exchange_from(a), self.stopping[a]))
                for a in addresses or self.addresses]

    def kill(self, address: str) -> None:
        self.dead.add(address)
        self.stopping[address].set()

    def held(self, addresses: Sequence[str] | None = None) -> list[int]:
        return [self.rounds[a].round_number for a in addresses or self.addresses]

    async def wait(self, condition, timeout: float, what: str) -> None:  # noqa: ANN001
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}: {self.held()}"
            await asyncio.sleep(0.05)  # polling a condition with a deadline

    async def stop(self, tasks: list[asyncio.Task[None]]) -> None:
        for event in self.stopping.values():
            event.set()
        await asyncio.gather(*tasks)
        self.stopping = {a: asyncio.Event() for a in self.addresses}  # start may run them again

    def refused(self, address: str, reason: str) -> int:
        return self.engines[address].stats.rejected_by_reason.get(reason, 0)


class Stranger:
    """An engine outside the swarm that labels its packets as it likes, sending them through
    the swarm's engines' own exchange path (in-process, its address is what the connection proves)."""

    def __init__(self, swarm: Swarm, index: int) -> None:
        self.address = f"127.0.0.1:{7100 + index}"
        trainer = build_trainer(PeerConfig(shard_index=0, shard_count=PEERS, seed=100 + index, steps_per_second=0))
        # Its model: far from anything the swarm learns (an untrained model scaled by -50).
        trainer.merge_with(lambda current: {k: (-50 * v).astype(v.dtype) if v.dtype.kind == "f" else v
                                            for k, v in current.items()})
        self.engine = GossipEngine(peer_id=f"stranger-{index}", address=self.address, trainer=trainer,
                                   membership=StaticMembership(self.address), merge_rule=make_rule("vc"),
                                   codec="fp32", limits=Limits(), rng=random.Random(100 + index), interval=0.2,
                                   timeout=5.0)
        self.label = RoundLabel(AGGREGATE, 0)
        self.engine.extra_telemetry = lambda: self.label.telemetry()
        self.swarm = swarm

    async def send(self, victim: str, label: RoundLabel) -> None:
        """One packet labelled ``label`` to ``victim``, pushed as an aggregator pushes an aggregate."""
        self.label = label
        self.engine.membership.add_seed(victim)
        member = self.engine.membership.get(victim)
        assert await self.engine.exchange_with(member, self.swarm.exchange_from(self.address), one_way=True)


async def stopped_swarm(rounds: int) -> tuple[Swarm, int]:
    """A swarm of PEERS that ran until every peer held round ``rounds``, then stopped: its
    peers' models and rounds stay put while a test sends them packets. Returns the newest round."""
    swarm = Swarm(PEERS, trainers=0)
    tasks = swarm.start()
    await swarm.wait(lambda: min(swarm.held()) >= rounds, 60, f"every peer to hold round {rounds}")
    await swarm.stop(tasks)
    return swarm, max(swarm.held())


def test_rounds_advance_every_peer_holds_the_aggregate_and_accuracy_rises() -> None:
    async def scenario() -> None:
        swarm = Swarm(PEERS, trainers=3)
        initial = [e.trainer.evaluate() for e in swarm.engines.values()]
        aggregates: dict[int, list[dict[str, np.ndarray]]] = {}  # round -> the aggregates made for it

        def record(round_number: int, aggregate: Mapping[str, np.ndarray]) -> None:
            aggregates.setdefault(round_number, []).append({k: np.array(v, dtype=np.float64) for k, v in aggregate.items()})

        adoptions: list[tuple[str, int, dict[str, np.ndarray]]] = []  # (peer, round, its model right after adopting)

        def watch(rounds: SampledRounds):  # noqa: ANN202 - wraps the peer's own adoption
            adopt = rounds._adopt  # noqa: SLF001

            async def adopted(round_number: int, *args) -> None:  # noqa: ANN002
                await adopt(round_number, *args)
                adoptions.append((rounds.engine.address, round_number, rounds.engine.trainer.state()))
            return adopted

        for r in swarm.rounds.values():
            r.on_aggregate = record
            r._adopt = watch(r)  # noqa: SLF001
        tasks = swarm.start()
        await swarm.wait(lambda: min(swarm.held()) >= 10, 60, "every peer to hold round 10's aggregate")
        await swarm.stop(tasks)
        rounds = list(swarm.rounds.values())
        # Every adoption, however the aggregate came (made, delivered as a keyframe or as an fp32
        # delta against the link's replica, pulled or relayed), leaves the peer holding what its
        # round's aggregator made: exactly, up to the float32 rounding of replica + delta.
        assert {peer for peer, _, _ in adoptions} == set(swarm.addresses)
        for peer, round_number, held in adoptions:
            gaps = [max(float(np.max(np.abs(held[k] - made[k]))) for k in made) for made in aggregates[round_number]]
            assert min(gaps) <= 1e-6, (peer, round_number, gaps)
        accuracy = [e.trainer.evaluate() for e in swarm.engines.values()]
        print("initial", initial, "after", accuracy, "held", swarm.held(),
              "aggregated", [r.book.aggregated for r in rounds],
              "refusals", [e.stats.rejected_by_reason for e in swarm.engines.values()])
        assert max(initial) < 0.3 and min(accuracy) > 0.8
        assert sum(r.book.aggregated for r in rounds) >= 10
        assert sum(r.book.aggregated > 0 for r in rounds) >= 2  # no fixed server

    asyncio.run(scenario())


def test_a_dead_aggregator_is_replaced_by_the_next_in_hash_order() -> None:
    async def scenario() -> None:
        swarm = Swarm(PEERS, trainers=0)
        tasks = swarm.start()
        await swarm.wait(lambda: min(swarm.held()) >= 2, 60, "round 2")
        held = max(swarm.held())
        victim = ranking(held + 1, swarm.addresses, "aggregate")[0]  # the round in progress's aggregator
        swarm.kill(victim)
        survivors = [a for a in swarm.addresses if a != victim]
        before = sum(swarm.rounds[a].book.aggregated for a in survivors)
        victim_rounds = [r for r in range(held + 1, held + 40)
                         if ranking(r, swarm.addresses, "aggregate")[0] == victim][:2]
        target = max(victim_rounds[-1], held + 4)
        await swarm.wait(lambda: min(swarm.held(survivors)) >= target, 60, f"survivors past round {target}")
        await swarm.stop(tasks)
        after = sum(swarm.rounds[a].book.aggregated for a in survivors)
        assert after >= before + target - held - 1

    asyncio.run(scenario())


def test_a_trainer_claiming_huge_counts_moves_the_aggregate_at_most_the_clip_bound() -> None:
    """Issue 14: one of four trainers sends its trained model scaled by -1000 with 2^64 - 1
    samples, through the engines' own packets. Every aggregate an honest peer computes lies
    within CLIP_MULTIPLIER x the largest honest update seen of the round's start (the
    aggregator's last adopted aggregate), and the honest peers still learn. Unbounded FedAvg
    would take the hostile model whole (its weight 2^64 - 1 against ~450)."""
    async def scenario() -> None:
        swarm = Swarm(PEERS, trainers=0, hostile=PEERS - 1)
        evil = swarm.addresses[-1]
        honest = swarm.addresses[:-1]
        largest = [0.0]
        checked: list[tuple[float, float]] = []

        def check(address: str):  # the on_aggregate hook of an honest peer
            def on_aggregate(round_number: int, aggregate: Mapping[str, np.ndarray]) -> None:
                rounds = swarm.rounds[address]
                start = rounds._adopted_model  # the round's reference, before adopting
                arrived = rounds.book.collecting[round_number].arrived
                largest[0] = max([largest[0], *(delta_norm(start, m) for s, (m, _) in arrived.items() if s != evil)])
                if evil in arrived:
                    checked.append((delta_norm(start, aggregate), CLIP_MULTIPLIER * largest[0]))
            return on_aggregate

        for address in honest:
            swarm.rounds[address].on_aggregate = check(address)
        tasks = swarm.start()
        await swarm.wait(lambda: min(swarm.held(honest)) >= 8, 90, "round 8 at every honest peer")
        await swarm.stop(tasks)
        accuracy = [swarm.engines[a].trainer.evaluate() for a in honest]
        print("moved / bound per aggregate with the hostile model:", checked, "honest accuracy", accuracy)
        assert all(moved <= bound + 1e-4 for moved, bound in checked)
        assert len(checked) >= 3  # honest aggregators had the hostile model in that many rounds
        assert min(accuracy) > 0.8

    asyncio.run(scenario())


def test_a_forged_aggregate_of_a_far_round_from_a_stranger_takes_no_peer_over() -> None:
    """Issue 14: a stranger labels its (far) model "the aggregate of round 2^62", then of a
    round within the pace that it is no aggregator of, and two strangers vouch for a round so
    one can relay a far model as its aggregate. Each is refused and counted under its rule's
    reason, the victim's round and model are untouched, and the rounds go on. Before the
    rules, the first packet alone replaced the model and stalled the victim at round 2^62."""
    async def scenario() -> None:
        swarm, newest = await stopped_swarm(4)
        # A victim that holds the newest round: one behind could hold an honest aggregate of the
        # next round, sent before the stop, and rightly adopt it at its step below (seen under load).
        victim = next(a for a in swarm.addresses if swarm.rounds[a].round_number == newest)
        rounds = swarm.rounds[victim]
        held, digest = rounds.round_number, rounds.engine.trainer.digest()
        first, second = Stranger(swarm, 1), Stranger(swarm, 2)

        def not_aggregator(candidates: range) -> int:
            view = [*rounds.peers(), first.address]
            return next(r for r in candidates if first.address not in eligible_aggregators(r, view, 1))

        await first.send(victim, RoundLabel(AGGREGATE, not_aggregator(range(2**62, 2**62 + 100))))
        assert swarm.refused(victim, ROUND_AHEAD) == 1
        # As a trained model: a round the victim closed would be its aggregate, so the same rule.
        await first.send(victim, RoundLabel(TRAINED, 2**62))
        assert swarm.refused(victim, ROUND_AHEAD) == 2
        base = max(held, rounds.book.confirmed())
        await first.send(victim, RoundLabel(AGGREGATE, not_aggregator(range(base + 1, base + MAX_AHEAD + 1))))
        assert swarm.refused(victim, NOT_AGGREGATOR) == 1
        # Two strangers vouch for round held + 1, so a relay of it passes pace and origin; its
        # model is beyond the move bound of the aggregate the victim holds.
        await second.send(victim, RoundLabel(TRAINING, held + 2))  # "training round held + 2": held + 1 reached
        await first.send(victim, RoundLabel(AGGREGATE, held + 1))
        await rounds.step(swarm.exchange_from(victim), asyncio.Event())  # the loop's pass: it adopts or refuses
        assert swarm.refused(victim, AGGREGATE_FAR) == 1
        assert rounds.round_number == held and rounds.engine.trainer.digest() == digest  # untouched
        # The honest rounds go on past it, and the victim learns.
        tasks = swarm.start()
        await swarm.wait(lambda: min(swarm.held()) >= held + 4, 60, f"every peer to hold round {held + 4}")
        await swarm.stop(tasks)
        print("victim held", held, "then", rounds.round_number, "refusals", swarm.engines[victim].stats.rejected_by_reason)
        assert held + 4 <= rounds.round_number < held + 100
        assert swarm.engines[victim].trainer.evaluate() > 0.5
        assert digest != rounds.engine.trainer.digest()  # it moved on, from the honest aggregates

    asyncio.run(scenario())


def test_a_round_ground_until_the_attacker_is_its_aggregator_is_refused() -> None:
    """A member of the swarm searches the round numbers for one whose hash makes it the first
    aggregator in the victim's own view, far ahead of the swarm: beyond the pace, refused."""
    async def scenario() -> None:
        swarm, newest = await stopped_swarm(3)
        victim, insider = swarm.addresses[0], swarm.addresses[-1]
        rounds = swarm.rounds[victim]
        held, digest = rounds.round_number, rounds.engine.trainer.digest()
        view = rounds.peers()
        ground = next(r for r in range(newest + 1000, newest + 100000) if ranking(r, view, "aggregate")[0] == insider)
        engine = swarm.engines[insider]
        engine.extra_telemetry = lambda: RoundLabel(AGGREGATE, ground).telemetry()
        assert await engine.exchange_with(engine.membership.get(victim), swarm.exchange_from(insider), one_way=True)
        await rounds.step(swarm.exchange_from(victim), asyncio.Event())
        assert swarm.refused(victim, ROUND_AHEAD) == 1
        assert rounds.round_number == held and rounds.engine.trainer.digest() == digest

    asyncio.run(scenario())


def test_a_late_joiner_catches_up_with_the_swarms_round() -> None:
    """A peer that starts once the others are past round 8 holds the aggregate they held when
    it came, within a few rounds: the labels of what it is sent vouch for the swarm's round."""
    async def scenario() -> None:
        swarm = Swarm(PEERS, trainers=0)
        late = swarm.addresses[-1]
        early = swarm.addresses[:-1]
        swarm.dead.add(late)  # not up yet: it answers nothing
        tasks = swarm.start(early)
        await swarm.wait(lambda: min(swarm.held(early)) >= 8, 60, "the first peers to hold round 8")
        swarm.dead.discard(late)
        target = max(swarm.held(early))
        tasks += swarm.start([late])
        await swarm.wait(lambda: swarm.rounds[late].round_number >= target, 60, f"the late peer to hold {target}")
        await swarm.wait(lambda: min(swarm.held()) >= target + 2, 60, "every peer two rounds on")
        await swarm.stop(tasks)
        print("late joiner: refusals", swarm.engines[late].stats.rejected_by_reason, "held", swarm.held())

    asyncio.run(scenario())


def test_cluster_passes_the_mode_to_every_peer() -> None:
    from peer.runtime.config import load
    from peer.tools.cli import build_parser
    from peer.tools.cluster import ClusterSpec, peer_args

    cluster = build_parser().parse_args(["cluster", "-n", "2", "--mode", "sampled"])
    assert cluster.mode == "sampled"
    run = build_parser().parse_args(["run", *peer_args(ClusterSpec(peers=2, mode="sampled"), 1, ["127.0.0.1:1"]),
                                     "--round-trainers", "2", "--round-deadline", "0.5"])
    config = load(run, environ={})
    assert (config.mode, config.round_trainers, config.round_deadline) == ("sampled", 2, 0.5)
