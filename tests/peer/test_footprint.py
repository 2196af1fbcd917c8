"""peer.runtime.footprint: a peer's steady-state memory by component, bounded by max_links."""

from __future__ import annotations

import random

from peer.runtime.config import PeerConfig
from peer.runtime.footprint import footprint
from peer.runtime.gossip import GossipEngine
from protocol.membership import StaticMembership
from protocol.merge import make_rule
from protocol.wire import Limits
from tests.trainers import build_trainer


def engine(address: str, seed: int, max_links: int) -> GossipEngine:
    trainer = build_trainer(PeerConfig(model="cnn", seed=seed, steps_per_second=0))
    trainer.train_steps(2)  # SGD with momentum: one buffer per parameter after a step
    return GossipEngine(peer_id=f"p{seed}", address=address, trainer=trainer,
                        membership=StaticMembership(address), merge_rule=make_rule("vc"), codec="topk_int8",
                        limits=Limits(), rng=random.Random(seed), interval=1.0, timeout=5.0, max_links=max_links)


def route(*engines: GossipEngine):
    by_address = {e.address: e for e in engines}

    async def exchange(address: str, packet: bytes, timeout: object) -> bytes:
        return await by_address[address].handle_inbound(packet, "in-process")
    return exchange


async def test_components_are_counted_per_link_and_bounded_by_max_links() -> None:
    hub = engine("hub:1", 1, max_links=2)
    others = [engine(f"p{i}:1", 10 + i, max_links=2) for i in range(3)]
    exchange = route(hub, *others)
    before = footprint(hub)
    model = before.model
    params = sum(p.numel() * p.element_size() for p in hub.trainer.model.parameters())
    assert model >= params > 0
    assert before.optimizer == params  # one momentum buffer per parameter
    assert before.sender == {} and before.receiver == {}

    for other in others:
        hub.membership.add_seed(other.address)
        assert await hub.exchange_with(hub.membership.get(other.address), exchange)
    after = footprint(hub)
    # Only the two most recent links keep a replica and a copy, each one model.
    assert set(after.sender) == {"p1:1", "p2:1"} == set(after.receiver)
    assert all(n == model for n in [*after.sender.values(), *after.receiver.values()])
    assert after.total == model + after.optimizer + 4 * model
    assert after.bound == model + after.optimizer + 2 * 2 * model
    assert after.total <= after.bound
    # The partner's side: one link each way.
    assert footprint(others[0]).receiver == {"hub:1": model}


async def test_models_waiting_for_a_batch_merge_are_counted_until_the_merge() -> None:
    hub = engine("hub:1", 1, max_links=2)
    hub.fanout = 2  # Epidemic Learning: received models wait for the round's one merge
    others = [engine(f"p{i}:1", 10 + i, max_links=2) for i in range(2)]
    exchange = route(hub, *others)
    for other in others:
        hub.membership.add_seed(other.address)
        assert await hub.exchange_with(hub.membership.get(other.address), exchange)  # taken, and buffered
    waiting = footprint(hub)
    assert waiting.pending == 2 * waiting.model  # a snapshot of each sender's model
    assert waiting.total == waiting.model + waiting.optimizer + 4 * waiting.model + waiting.pending
    hub.defence.flush(hub.trainer, hub.merge_rule)
    assert footprint(hub).pending == 0
