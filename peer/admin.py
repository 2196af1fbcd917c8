"""The admin gRPC service: what an operator (or `hearsay status`) can ask a peer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from hearsay.v1 import admin_pb2, admin_pb2_grpc

if TYPE_CHECKING:
    from peer.node import Node


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, node: Node) -> None:
        self._node = node

    async def Status(self, request: admin_pb2.StatusRequest,
                     context: grpc.aio.ServicerContext) -> admin_pb2.StatusResponse:
        node = self._node
        t = node.trainer.stats()
        g = node.engine.stats
        return admin_pb2.StatusResponse(
            peer_id=node.peer_id, gossip_address=node.address, steps=t.steps,
            accuracy=t.accuracy, loss=t.loss, known_peers=len(node.membership.live()),
            bytes_sent=g.bytes_sent, bytes_received=g.bytes_received, exchanges=g.exchanges,
            merges=g.merges, rejected=g.rejected, model_version=t.version,
            model_digest=node.trainer.digest(), uptime_seconds=node.uptime(),
            model=node.config.model, dataset=node.config.dataset, device=str(node.trainer.device),
            training_done=t.done, samples=node.trainer.samples)

    async def ListPeers(self, request: admin_pb2.ListPeersRequest,
                        context: grpc.aio.ServicerContext) -> admin_pb2.ListPeersResponse:
        node = self._node
        now = node.clock()
        peers = []
        for m in node.membership.members():
            link = node.engine.link(m.address)
            peers.append(admin_pb2.PeerInfo(
                peer_id=m.peer_id, address=m.address, state=m.state.value,
                last_contact_seconds_ago=(now - m.last_contact) if m.last_contact is not None else -1.0,
                exchanges=link.exchanges, merges=link.merges, bytes_sent=link.bytes_sent,
                bytes_received=link.bytes_received, source=m.source.value, failures=link.failures))
        return admin_pb2.ListPeersResponse(peers=peers)
