"""Prometheus metrics of one peer.

Counters that `hearsay status` also shows are read from the same objects at scrape
time (a custom collector), so the metrics port and the admin API can never disagree.
Latencies are histograms observed where the work happens.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from peer.node import Node

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _NodeCollector(Collector):
    def __init__(self, node: Node) -> None:
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
        yield CounterMetricFamily("hearsay_merges", "Received models merged into the local model.", value=g.merges)
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
        yield GaugeMetricFamily("hearsay_compression_ratio", "fp32 model bytes / packet bytes of the last packet sent.",
                                value=g.compression_ratio)
        yield CounterMetricFamily("hearsay_train_steps", "Local optimiser steps.", value=t.steps)
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
        age = node.checkpoint_age()
        yield GaugeMetricFamily("hearsay_checkpoint_age_seconds",
                                "Seconds since the last checkpoint (-1: none written).", value=age)


class NodeMetrics:
    """A registry per peer (not the global one), so several peers can live in one process."""

    def __init__(self, node: Node) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_NodeCollector(node))
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
