"""Prometheus metrics of one peer.

Counters that `hearsay status` also shows are read from the same objects at scrape
time (a custom collector), so the metrics port and the admin API can never disagree.
Latencies are histograms observed where the work happens.

Besides the peer's own series, the registry the peer serves carries the standard
``process_*`` (CPU, memory, file descriptors), ``python_info`` and ``python_gc_*``
collectors, and ``hearsay_build_info{version, python, torch} 1``, so the usual
dashboards and alerts work on a peer as on any other Python service.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from importlib import metadata
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from peer.runtime.footprint import footprint

if TYPE_CHECKING:
    from peer.ops.view import NodeView

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def build_labels() -> dict[str, str]:
    """What ``hearsay_build_info`` says this process runs: hearsay, Python and torch versions."""
    try:
        version = metadata.version("hearsay")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        version = "unknown"
    import torch

    return {"version": version, "python": platform.python_version(), "torch": str(torch.__version__)}


class _BuildCollector(Collector):
    """The constant ``hearsay_build_info`` series (value 1; the labels carry the information)."""

    def __init__(self) -> None:
        self._labels = build_labels()

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("hearsay_build_info", "Versions this peer runs (value always 1).",
                                 labels=list(self._labels))
        info.add_metric(list(self._labels.values()), 1)
        yield info


class _NodeCollector(Collector):
    def __init__(self, node: NodeView) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        node = self._node
        g = node.engine.stats
        t = node.trainer.stats()
        c = CounterMetricFamily("hearsay_exchanges", "Completed push-pull exchanges.", labels=["role"])
        c.add_metric(["initiator"], g.exchanges_out)
        c.add_metric(["responder"], g.exchanges - g.exchanges_out)
        yield c
        c = CounterMetricFamily("hearsay_bytes", "Packet bytes that crossed the wire.", labels=["direction", "codec"])
        c.add_metric(["out", node.engine.codec.name], g.bytes_sent)
        c.add_metric(["in", node.engine.codec.name], g.bytes_received)
        yield c
        c = CounterMetricFamily("hearsay_partner_picks", "Gossip partners chosen, by whether the member had "
                                "answered us (confirmed) or was known only by hearsay.", labels=["evidence"])
        c.add_metric(["confirmed"], g.partner_picks - g.partner_picks_unconfirmed)
        c.add_metric(["unconfirmed"], g.partner_picks_unconfirmed)
        yield c
        yield CounterMetricFamily("hearsay_merges", "Received models merged into the local model.", value=g.merges)
        yield CounterMetricFamily("hearsay_answered_early", "Exchanges answered while their request was still "
                                  "arriving (callers on another machine).", value=g.answered_early)
        yield CounterMetricFamily("hearsay_early_reply_bytes", "Reply bytes sent before their request was whole.",
                                  value=g.early_reply_bytes)
        yield CounterMetricFamily("hearsay_keyframes_sent", "Packets sent as keyframes (whole model).",
                                  value=g.keyframes_sent)
        c = CounterMetricFamily("hearsay_keyframe_requests", "Frames we could not apply, by reason.",
                                labels=["reason"])
        for reason, n in sorted(g.keyframe_requests.items()):
            c.add_metric([reason], n)
        yield c
        c = CounterMetricFamily("hearsay_rejected_packets", "Packets refused by validation.", labels=["reason"])
        for reason, n in sorted(g.rejected_by_reason.items()):
            c.add_metric([reason], n)
        yield c
        yield GaugeMetricFamily("hearsay_fanout", "Exchanges started per gossip interval (above 1: Epidemic "
                                "Learning).", value=node.engine.fanout)
        info = InfoMetricFamily("hearsay_mode", "How this peer learns: gossip, or sampled rounds.")
        info.add_metric([], {"mode": node.config.mode})
        yield info
        if node.rounds is not None:
            yield GaugeMetricFamily("hearsay_round", "Round of the aggregate this peer holds (mode=sampled; 0: the "
                                    "initial model).", value=node.rounds.round_number)
            yield CounterMetricFamily("hearsay_rounds_aggregated", "Rounds this peer closed as an aggregator.",
                                      value=node.rounds.book.aggregated)
            yield CounterMetricFamily("hearsay_round_contributions", "Trained models this peer delivered to a "
                                      "round's aggregators.", value=node.rounds.contributions)
        yield GaugeMetricFamily("hearsay_compression_ratio", "fp32 model bytes / packet bytes of the last packet sent.",
                                value=g.compression_ratio)
        memory = footprint(node.engine)
        m = GaugeMetricFamily("hearsay_memory_bytes", "Steady-state memory by component: model, optimizer, the "
                              "sender replicas and the receiver copies of all links, the models waiting for a "
                              "batch merge.", labels=["component"])
        for component, n in (("model", memory.model), ("optimizer", memory.optimizer),
                             ("sender_replicas", memory.sender_total), ("receiver_copies", memory.receiver_total),
                             ("pending_merges", memory.pending)):
            m.add_metric([component], n)
        yield m
        yield GaugeMetricFamily("hearsay_memory_bound_bytes", "What the steady state can never exceed: model + "
                                "optimizer + 2 * max_links * model.", value=memory.bound)
        m = GaugeMetricFamily("hearsay_memory_links", "Links with a replica kept, by side (at most max_links each).",
                              labels=["side"])
        m.add_metric(["sender"], len(memory.sender))
        m.add_metric(["receiver"], len(memory.receiver))
        yield m
        yield CounterMetricFamily("hearsay_train_steps", "Local optimiser steps.", value=t.steps)
        yield GaugeMetricFamily("hearsay_learning_rate", "The learning rate of the next local step (lr, scaled by "
                                "lr_schedule).", value=node.trainer.lr)
        yield GaugeMetricFamily("hearsay_test_accuracy", "Test accuracy at the last evaluation.", value=t.accuracy)
        yield GaugeMetricFamily("hearsay_train_loss", "Mean training loss over the last evaluation window.",
                                value=t.loss)
        m = GaugeMetricFamily("hearsay_members", "Known members by membership state.", labels=["state"])
        counts: dict[str, int] = {"alive": 0, "suspect": 0, "dead": 0, "left": 0}
        for member in node.membership.members():
            counts[member.state.value] = counts.get(member.state.value, 0) + 1
        for state, n in counts.items():
            m.add_metric([state], n)
        yield m
        events = node.membership_events()  # SWIM's transitions (the static view's with membership=static)
        yield CounterMetricFamily("hearsay_suspicions", "Times a member turned suspect in this peer's view.",
                                  value=events.suspicions)
        yield CounterMetricFamily("hearsay_deaths", "Times a member turned dead in this peer's view.",
                                  value=events.deaths)
        yield CounterMetricFamily("hearsay_recoveries",
                                  "Times a suspect or dead member was alive again (refuted or restarted).",
                                  value=events.recoveries)
        yield CounterMetricFamily("hearsay_leaves", "Members seen leaving gracefully.", value=events.leaves)
        # No checkpoint yet: the age series is absent (not a made-up -1, which would read
        # as "fresh" to an alert on max age); hearsay_checkpoint_present says which case it is.
        written = node.last_checkpoint is not None
        yield GaugeMetricFamily("hearsay_checkpoint_present",
                                "1 once this process has written a checkpoint, else 0.", value=int(written))
        age = GaugeMetricFamily("hearsay_checkpoint_age_seconds",
                                "Seconds since this process last wrote a checkpoint (no sample until it has).")
        if written:
            age.add_metric([], node.checkpoint_age())
        yield age


class NodeMetrics:
    """A registry per peer (not the global one), so several peers can live in one process."""

    def __init__(self, node: NodeView) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_NodeCollector(node))
        self.registry.register(_BuildCollector())
        # The standard process/platform/GC collectors, on this registry rather than the
        # global one (whose defaults would register them there only).
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.merge_seconds = Histogram("hearsay_merge_seconds", "Time to merge one received model.",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.train_step_seconds = Histogram("hearsay_train_step_seconds", "Time of one local optimiser step.",
                                            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.exchange_seconds = Histogram("hearsay_exchange_seconds", "Round trip of one exchange we started.",
                                          buckets=LATENCY_BUCKETS, registry=self.registry)
        self._server = None

    def text(self) -> str:
        return generate_latest(self.registry).decode()

    def samples(self) -> dict[str, float]:
        """Every sample flattened to ``name{k=v,...}`` -> value (for GetMetrics)."""
        out: dict[str, float] = {}
        for metric in self.registry.collect():
            for s in metric.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = float(s.value)
        return out

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP exposition server; returns the bound port."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
