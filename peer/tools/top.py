"""`hearsay top`: a live view of a whole swarm, reached through any one peer.

The entry peer answers for itself (Status) and for every member it knows
(ListPeers: state, plus the figures each member last reported in a packet), so one
admin address is enough to watch all of them.

Exchange rates need two samples: the entry peer's own counter is compared across two
polls, another member's across two of its reports (the moment of a report is known
from its age). Until there are two, the rate is unknown and shown as ``n/a``, never 0.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table

from peer.tools.admin_client import AdminClient

# Two reports of a member closer together than this are the same report.
SAME_REPORT_SECONDS = 0.05
# Below this many columns the address column is left out, so the rest fits in 80.
WIDE_COLUMNS = 110


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
    is_self: bool = False
    exchange_rate: float | None = None  # None until two samples exist

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["self"] = data.pop("is_self")
        return data


def snapshot(client: AdminClient) -> list[Row]:
    s = client.status()
    rows = [Row(s.peer_id, s.gossip_address, "self", s.steps, s.accuracy, s.exchanges, s.bytes_received,
                s.bytes_sent, _ratio(client), 0.0, is_self=True)]
    for p in client.list_peers().peers:
        r = p.report
        rows.append(Row(p.peer_id or "?", p.address, p.state, r.steps, r.accuracy, r.exchanges, r.bytes_received,
                        r.bytes_sent, r.compression_ratio, r.age_seconds))
    return rows


def _ratio(client: AdminClient) -> float:
    return client.metrics().samples.get("hearsay_compression_ratio", 0.0)


# address -> (exchanges, when they were counted, the last rate measured)
Samples = dict[str, tuple[int, float, float | None]]


def with_rates(rows: list[Row], previous: Samples, now: float) -> list[Row]:
    """Exchanges per second of each peer between its last two distinct samples."""
    for row in rows:
        if not row.is_self and row.report_age < 0:  # never reported: nothing to measure
            continue
        at = now - row.report_age
        before = previous.get(row.address)
        if before is None:
            previous[row.address] = (row.exchanges, at, None)
            continue
        exchanges, then, rate = before
        if at - then > SAME_REPORT_SECONDS:
            rate = max(row.exchanges - exchanges, 0) / (at - then)
            previous[row.address] = (row.exchanges, at, rate)
        row.exchange_rate = rate
    return rows


def poll(client: AdminClient, previous: Samples) -> list[Row]:
    return with_rates(snapshot(client), previous, time.monotonic())


def _size(n: int) -> str:
    for unit in ("", "K", "M", "G"):
        if n < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n:.1f}T"


def _age(seconds: float) -> str:
    if seconds < 0:
        return "-"
    if seconds < 100:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.0f}m" if seconds < 6000 else f"{seconds / 3600:.0f}h"


def render(rows: list[Row], entry: str, width: int = 80) -> Table:
    """The rows as a table that fits ``width`` columns (the address only when there is room)."""
    wide = width >= WIDE_COLUMNS
    table = Table(title=f"swarm seen from {entry} (* = this peer)", box=box.SIMPLE_HEAD, pad_edge=False,
                  padding=0, show_edge=False)  # the box's column separator is one space
    table.add_column("peer", no_wrap=True, overflow="ellipsis", max_width=24 if wide else 20)
    if wide:
        table.add_column("address", no_wrap=True)
    for col in ("state", "steps", "acc", "exch/s", "exch", "in", "out", "ratio", "age"):
        table.add_column(col, justify="left" if col == "state" else "right", no_wrap=True)
    for r in rows:
        cells = [r.peer + (" *" if r.is_self else "")]
        if wide:
            cells.append(r.address)
        cells += [r.state, str(r.steps), f"{r.accuracy:.4f}" if r.accuracy >= 0 else "-",
                  "n/a" if r.exchange_rate is None else f"{r.exchange_rate:.2f}", str(r.exchanges),
                  _size(r.bytes_in), _size(r.bytes_out), f"{r.ratio:.1f}x" if r.ratio > 0 else "-",
                  _age(r.report_age)]
        table.add_row(*cells)
    return table


def run_top(client: AdminClient, entry: str, *, interval: float, once: bool, as_json: bool,
            out: TextIO | None = None) -> int:
    """`hearsay top`: one snapshot (``once``/``as_json``, from two samples ``interval`` apart), a
    live view on a terminal, or a new snapshot every ``interval`` when the output is not one."""
    out = out or sys.stdout
    console = Console(file=out)  # its width: the terminal's, else $COLUMNS, else 80
    samples: Samples = {}
    if once or as_json:
        poll(client, samples)
        time.sleep(interval)  # the second sample of the rates: a measurement window, not a synchronisation
        rows = poll(client, samples)
        if as_json:
            print(json.dumps([r.as_dict() for r in rows]), file=out)
        else:
            console.print(render(rows, entry, console.width))
        return 0
    if console.is_terminal:
        from rich.live import Live

        with Live(render(poll(client, samples), entry, console.width), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(render(poll(client, samples), entry, console.width), refresh=True)
    try:  # piped or redirected: append a plain snapshot each interval, flushed, so `tail -f` sees it
        while True:
            console.print(render(poll(client, samples), entry, console.width))
            out.flush()
            time.sleep(interval)
    except BrokenPipeError:  # `hearsay top | head`: the reader has gone
        return 0
