"""`hearsay top`: a live view of a whole swarm, reached through any one peer.

The entry peer answers for itself (Status) and for every member it knows
(ListPeers: state, plus the figures each member last reported in a packet), so one
admin address is enough to watch all of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from peer.admin_client import AdminClient


@dataclass
class Row:
    peer: str
    address: str
    state: str
    steps: int
    accuracy: float
    exchanges: int
    bytes_in: int
    bytes_out: int
    ratio: float
    report_age: float
    exchange_rate: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def snapshot(client: AdminClient) -> list[Row]:
    s = client.status()
    rows = [Row(s.peer_id + " *", s.gossip_address, "self", s.steps, s.accuracy, s.exchanges, s.bytes_received,
                s.bytes_sent, _ratio(client), 0.0)]
    for p in client.list_peers().peers:
        r = p.report
        rows.append(Row(p.peer_id or "?", p.address, p.state, r.steps, r.accuracy, r.exchanges, r.bytes_received,
                        r.bytes_sent, r.compression_ratio, r.age_seconds))
    return rows


def _ratio(client: AdminClient) -> float:
    return client.metrics().samples.get("hearsay_compression_ratio", 0.0)


def with_rates(rows: list[Row], previous: dict[str, tuple[int, float]], now: float) -> list[Row]:
    """Exchanges per second per peer since the previous poll."""
    for row in rows:
        before = previous.get(row.address)
        if before is not None and now > before[1]:
            row.exchange_rate = max(row.exchanges - before[0], 0) / (now - before[1])
        previous[row.address] = (row.exchanges, now)
    return rows


def render(rows: list[Row], entry: str) -> Table:
    table = Table(title=f"hearsay top — swarm seen from {entry} (* = this peer; others as last reported)")
    for col in ("peer", "address", "state", "steps", "accuracy", "exch/s", "exchanges", "bytes in", "bytes out",
                "ratio", "report age"):
        table.add_column(col, justify="left" if col in ("peer", "address", "state") else "right")
    for r in rows:
        table.add_row(r.peer, r.address, r.state, str(r.steps), f"{r.accuracy:.4f}" if r.accuracy >= 0 else "-",
                      f"{r.exchange_rate:.2f}", str(r.exchanges), str(r.bytes_in), str(r.bytes_out),
                      f"{r.ratio:.1f}x" if r.ratio > 0 else "-",
                      f"{r.report_age:.1f}s" if r.report_age >= 0 else "-")
    return table


def poll(client: AdminClient, previous: dict[str, tuple[int, float]]) -> list[Row]:
    return with_rates(snapshot(client), previous, time.monotonic())
