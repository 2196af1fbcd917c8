"""The admin gRPC service: what an operator (or the `hearsay` CLI) can ask of or tell a peer."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import torch
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection
from hearsay.v1 import admin_pb2, admin_pb2_grpc

from peer.runtime.footprint import footprint
from peer.runtime.gossip_stats import LinkStats
from protocol.deadlines import LinkEstimate
from protocol.wire import FRAME_BYTES

if TYPE_CHECKING:
    from peer.ops.metrics import NodeMetrics
    from peer.ops.view import NodeView


# What server reflection on the admin port lists: exactly the services that port serves.
# Gossip and Membership live on the gossip port; listing them here would send grpcurl
# users to calls that can only answer Unimplemented.
ADMIN_PORT_SERVICES: tuple[str, ...] = (
    admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)


def _report(entry: tuple[dict, float] | None, now: float) -> admin_pb2.PeerReport:
    if entry is None:
        return admin_pb2.PeerReport(accuracy=-1.0, age_seconds=-1.0)
    tm, at = entry

    def num(key: str, kind: type, default: float = 0) -> float:
        value = tm.get(key, default)
        return kind(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else kind(default)

    return admin_pb2.PeerReport(
        steps=max(int(num("steps", int)), 0), accuracy=num("acc", float, -1.0),
        exchanges=max(int(num("exch", int)), 0), bytes_sent=max(int(num("out", int)), 0),
        bytes_received=max(int(num("in", int)), 0), compression_ratio=num("ratio", float),
        age_seconds=now - at)


def _rate(estimate: LinkEstimate | None) -> float:
    return estimate.rate if estimate is not None and estimate.rate is not None else -1.0


LIST_PEERS_MAX = 4096  # ~150 bytes a row: well inside the 4 MiB default message limit


def round_fields(node: NodeView) -> dict[str, int | str]:
    """Status's sampled-round fields (zero and empty in gossip mode)."""
    rounds = node.rounds
    if rounds is None:
        return {}
    return {"round": rounds.round_number, "round_role": rounds.role(), "rounds_aggregated": rounds.book.aggregated}


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, node: NodeView, metrics: NodeMetrics) -> None:
        self._node = node
        self._metrics = metrics

    async def Status(self, request: admin_pb2.StatusRequest,
                     context: grpc.aio.ServicerContext) -> admin_pb2.StatusResponse:
        node = self._node
        t = node.trainer.stats()
        g = node.engine.stats
        knobs = node.knobs()
        resumed_from, resumed_step, resumed_digest = node.resumed or ("", 0, "")
        memory = footprint(node.engine)
        return admin_pb2.StatusResponse(
            peer_id=node.peer_id, gossip_address=node.address, steps=t.steps,
            accuracy=t.accuracy, loss=t.loss, known_peers=len(node.membership.live()),
            bytes_sent=g.bytes_sent, bytes_received=g.bytes_received, exchanges=g.exchanges,
            merges=g.merges, rejected=g.rejected, model_version=t.version,
            model_digest=node.trainer.digest(), uptime_seconds=node.uptime(),
            model=node.config.model, dataset=node.config.dataset, device=str(node.trainer.device),
            training_done=t.done, samples=node.trainer.samples,
            gossip_interval=node.engine.interval, codec=knobs["codec"], merge=knobs["merge"],
            log_level=knobs["log_level"],
            last_checkpoint=str(node.last_checkpoint.path) if node.last_checkpoint else "",
            last_checkpoint_step=node.last_checkpoint_step, checkpoint_age_seconds=node.checkpoint_age(),
            resumed_from=resumed_from, resumed_step=resumed_step, resumed_digest=resumed_digest,
            leaving=node.leaving, bootstrapped_from=node.bootstrapped_from, fanout=node.engine.fanout,
            memory_model_bytes=memory.model, memory_optimizer_bytes=memory.optimizer,
            memory_sender_bytes=memory.sender_total, memory_receiver_bytes=memory.receiver_total,
            sender_links=len(memory.sender), receiver_links=len(memory.receiver), max_links=memory.max_links,
            memory_bound_bytes=memory.bound, mode=node.config.mode, lr=node.trainer.lr,
            lr_schedule=node.config.lr_schedule, answered_early=g.answered_early,
            early_reply_bytes=g.early_reply_bytes, **round_fields(node))

    async def ListPeers(self, request: admin_pb2.ListPeersRequest,
                        context: grpc.aio.ServicerContext) -> admin_pb2.ListPeersResponse:
        node = self._node
        now = node.clock()
        seeds = set(node.config.seeds)  # SWIM learns a seed through gossip; the operator named it
        peers = []
        # A bounded reply (issue 14: a forged swarm once outgrew the client's 4 MiB
        # limit): live members first, then the rest, LIST_PEERS_MAX in all. Reading
        # never creates a link entry.
        members = sorted(node.membership.members(), key=lambda m: not m.live)[:LIST_PEERS_MAX]
        memory = footprint(node.engine)
        for m in members:
            link = node.engine.links.get(m.address) or LinkStats()
            score, banned, reason = node.engine.defence.standing(m.address)
            peers.append(admin_pb2.PeerInfo(
                peer_id=m.peer_id, address=m.address, state=m.state.value,
                last_contact_seconds_ago=(now - m.last_contact) if m.last_contact is not None else -1.0,
                exchanges=link.exchanges, merges=link.merges, bytes_sent=link.bytes_sent,
                bytes_received=link.bytes_received, failures=link.failures,
                source="seed" if m.address in seeds else m.source.value,
                incarnation=node.membership.incarnation_of(m.address) or 0,
                rtt_ms=link.rtt * 1000.0 if link.rtt is not None else -1.0,
                report=_report(node.engine.reports.get(m.address), now),
                reputation=score, banned=banned, reputation_reason=reason,
                sender_replica_bytes=memory.sender.get(m.address, 0),
                receiver_copy_bytes=memory.receiver.get(m.address, 0),
                rate_bytes_per_second=_rate(node.engine.estimates.get(m.address)),
                exchange_deadline_seconds=node.engine.budget(m.address, node.engine.dense_bytes).total))
        return admin_pb2.ListPeersResponse(peers=peers)

    async def GetMetrics(self, request: admin_pb2.GetMetricsRequest,
                         context: grpc.aio.ServicerContext) -> admin_pb2.GetMetricsResponse:
        metrics = self._metrics
        return admin_pb2.GetMetricsResponse(prometheus_text=metrics.text(), samples=metrics.samples())

    async def SaveCheckpoint(self, request: admin_pb2.SaveCheckpointRequest,
                             context: grpc.aio.ServicerContext) -> admin_pb2.SaveCheckpointResponse:
        node = self._node
        if node.data_dir is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "this peer has no data directory (start it with --data-dir)")
        try:
            saved = await node.save_checkpoint()
        except OSError as e:
            await context.abort(grpc.StatusCode.INTERNAL, f"checkpoint failed: {e}")
        return admin_pb2.SaveCheckpointResponse(path=str(saved.path), step=node.last_checkpoint_step,
                                                size_bytes=saved.size_bytes, sha256=saved.sha256)

    async def DownloadModel(self, request: admin_pb2.DownloadModelRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[admin_pb2.ModelChunk]:
        state = {k: torch.from_numpy(v) for k, v in self._node.trainer.state().items()}
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getbuffer()
        for start in range(0, len(data), FRAME_BYTES):
            yield admin_pb2.ModelChunk(data=bytes(data[start:start + FRAME_BYTES]),
                                       total_bytes=len(data) if start == 0 else 0)

    async def Leave(self, request: admin_pb2.LeaveRequest,
                    context: grpc.aio.ServicerContext) -> admin_pb2.LeaveResponse:
        return admin_pb2.LeaveResponse(in_flight=await self._node.leave())

    async def Set(self, request: admin_pb2.SetRequest,
                  context: grpc.aio.ServicerContext) -> admin_pb2.SetResponse:
        try:
            previous, now = self._node.set_knob(request.key, request.value)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return admin_pb2.SetResponse(key=request.key, value=now, previous=previous)
