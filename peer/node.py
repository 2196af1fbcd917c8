"""Composition root: wires one peer together and owns its lifecycle.

start: load data and model -> start the trainer thread -> bind the gossip and admin
servers -> start the gossip loop. stop (SIGTERM/SIGINT): stop starting exchanges,
let the servers finish calls in flight for a grace period, stop the trainer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import signal
import sys
import time

import grpc
import torch

from hearsay.v1 import admin_pb2_grpc, gossip_pb2_grpc
from peer import logs
from peer.admin import AdminServicer
from peer.config import PeerConfig
from peer.data import load_dataset, partition
from peer.gossip import GossipEngine
from peer.models import build_model
from peer.trainer import Trainer, resolve_device
from peer.transport.grpc_transport import GossipClient, GossipServicer
from protocol.membership import StaticMembership
from protocol.merge import make_rule
from protocol.wire import Limits

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 2.0


def build_trainer(config: PeerConfig) -> Trainer:
    """Data shard, model and optimiser for this peer, all seeded from the config."""
    torch.set_num_threads(config.threads)
    data = load_dataset(config.dataset, seed=config.data_seed)
    shards = partition(data.train_y, config.shard_count, config.partition, config.alpha, config.data_seed)
    torch.manual_seed(config.seed)
    model = build_model(config.model, data.input_shape, data.num_classes)
    return Trainer(model, data, shards[config.shard_index], device=resolve_device(config.device),
                   seed=config.seed, batch_size=config.batch_size, lr=config.lr, momentum=config.momentum,
                   max_steps=config.max_steps, steps_per_second=config.steps_per_second,
                   eval_every=config.eval_every)


class Node:
    def __init__(self, config: PeerConfig) -> None:
        self.config = config
        self.clock = time.monotonic
        self.started_at = self.clock()
        self.trainer = build_trainer(config)
        self.peer_id = config.resolved_peer_id()
        self.address = config.gossip_address()
        self.admin_address = f"{config.admin_host}:{config.admin_port}"
        self.stopping = asyncio.Event()
        self.client = GossipClient(max_packet_bytes=self._max_packet_bytes())
        self._gossip_server: grpc.aio.Server | None = None
        self._admin_server: grpc.aio.Server | None = None
        self._gossip_task: asyncio.Task[None] | None = None
        self.membership: StaticMembership
        self.engine: GossipEngine

    def _max_packet_bytes(self) -> int:
        return int(self.config.max_packet_mb * (1 << 20))

    def uptime(self) -> float:
        return self.clock() - self.started_at

    async def start(self) -> None:
        cfg = self.config
        self._gossip_server = grpc.aio.server()
        gossip_port = self._gossip_server.add_insecure_port(f"{cfg.host}:{cfg.port}")
        if not cfg.advertise:
            self.address = f"{cfg.host}:{gossip_port}"
        if not cfg.peer_id:
            self.peer_id = PeerConfig(port=gossip_port).resolved_peer_id()
        logs.set_peer_id(self.peer_id)
        self.membership = StaticMembership(self.address)
        for seed in cfg.seeds:
            self.membership.add_seed(seed)
        self.engine = GossipEngine(
            peer_id=self.peer_id, address=self.address, trainer=self.trainer, membership=self.membership,
            merge_rule=make_rule(cfg.merge), codec=cfg.codec,
            limits=Limits(max_packet_bytes=self._max_packet_bytes()), rng=random.Random(cfg.seed),
            interval=cfg.gossip_interval, timeout=cfg.gossip_timeout, clock=self.clock)
        gossip_pb2_grpc.add_GossipServicer_to_server(
            GossipServicer(self.engine.handle_inbound, self._max_packet_bytes(), self.engine.count_rejected),
            self._gossip_server)

        self._admin_server = grpc.aio.server()
        admin_port = self._admin_server.add_insecure_port(f"{cfg.admin_host}:{cfg.admin_port}")
        self.admin_address = f"{cfg.admin_host}:{admin_port}"
        admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(self), self._admin_server)

        await self._gossip_server.start()
        await self._admin_server.start()
        self.trainer.start()
        self._gossip_task = asyncio.create_task(self.engine.run(self.client.exchange, self.stopping))
        log.info("peer %s up: gossip %s, admin %s, %d training samples, model %s on %s",
                 self.peer_id, self.address, self.admin_address, self.trainer.samples, cfg.model,
                 self.trainer.device)
        # One machine-readable line on stdout: launchers learn the bound ports from it.
        print(json.dumps({"event": "ready", "peer_id": self.peer_id, "gossip": self.address,
                          "admin": self.admin_address}), flush=True)

    async def stop(self) -> None:
        self.stopping.set()
        if self._gossip_task is not None:
            await self._gossip_task
        for server in (self._gossip_server, self._admin_server):
            if server is not None:
                await server.stop(SHUTDOWN_GRACE_SECONDS)
        await self.client.close()
        await asyncio.to_thread(self.trainer.stop)
        log.info("peer %s stopped after %d steps", self.peer_id, self.trainer.stats().steps)

    async def serve(self) -> None:
        """Run until SIGTERM or SIGINT, then shut down cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        await self.start()
        await self.stopping.wait()
        await self.stop()


def run(config: PeerConfig) -> int:
    """Entry point of `hearsay run`: one peer under uvloop."""
    import uvloop

    async def main() -> None:
        node = Node(config)
        await node.serve()

    try:
        uvloop.run(main())
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()
    return 0
