"""`hearsay cluster`: N real peer processes on loopback, watched through their admin API.

Ends after ``duration`` seconds or as soon as every peer reaches ``target_accuracy``;
writes ``results.json`` (per peer: id, accuracy, steps, exchanges, bytes) and
``accuracy.png`` (test accuracy over time, one line per peer) into ``out``.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from peer.certs import CA_CERT_FILE, make_certs
from peer.procs import PeerProcess, launch_peers

POLL_SECONDS = 1.0


@dataclass
class ClusterSpec:
    peers: int = 4
    duration: float = 120.0
    target_accuracy: float | None = None
    out: str = "results"
    model: str = "mlp"
    partition: str = "iid"
    alpha: float = 0.5
    merge: str = "vc"
    gossip_interval: float = 1.0
    seed: int = 0
    extra_args: list[str] = field(default_factory=list)
    # Stop this many seconds after every peer has finished training (needs --max-steps in
    # extra_args); duration stays the upper bound. Benchmarks use it for equal compute.
    settle_after_training: float | None = None
    # Mutual TLS between the peers: a CA and one certificate per peer in <out>/tls.
    tls: bool = False


def tls_args(directory: Path, name: str) -> list[str]:
    """The `hearsay run` flags of peer ``name`` whose files `hearsay certs` wrote to ``directory``."""
    return ["--tls-ca", str(directory / CA_CERT_FILE), "--tls-cert", str(directory / f"{name}.pem"),
            "--tls-key", str(directory / f"{name}.key"), "--require-tls"]


def peer_args(spec: ClusterSpec, i: int, seeds: list[str]) -> list[str]:
    tls = tls_args(Path(spec.out) / "tls", f"peer-{i}") if spec.tls else []
    return ["--seeds", ",".join(seeds), "--shard-index", str(i), "--shard-count", str(spec.peers),
            "--partition", spec.partition, "--alpha", str(spec.alpha), "--model", spec.model,
            "--merge", spec.merge, "--gossip-interval", str(spec.gossip_interval),
            "--seed", str(spec.seed + i), "--data-seed", str(spec.seed), *tls, *spec.extra_args]


def _snapshot(p: PeerProcess) -> dict[str, Any] | None:
    s = p.try_status(2.0)
    if s is None:
        return None
    return {"id": s.peer_id, "accuracy": s.accuracy, "loss": s.loss, "steps": s.steps,
            "exchanges": s.exchanges, "merges": s.merges, "rejected": s.rejected,
            "known_peers": s.known_peers, "bytes_sent": s.bytes_sent, "bytes_received": s.bytes_received,
            "samples": s.samples, "training_done": s.training_done}


def _table(rows: dict[str, dict[str, Any] | None], elapsed: float, spec: ClusterSpec) -> Table:
    target = f", target {spec.target_accuracy:.2f}" if spec.target_accuracy is not None else ""
    table = Table(title=f"hearsay cluster: {spec.peers} peers, {elapsed:5.1f} / {spec.duration:.0f} s{target}")
    for col in ("peer", "steps", "loss", "accuracy", "peers", "exchanges", "bytes in", "bytes out"):
        table.add_column(col, justify="left" if col == "peer" else "right")
    for pid, r in rows.items():
        if r is None:
            table.add_row(pid, "-", "-", "starting" if elapsed < 30 else "unreachable", "-", "-", "-", "-")
            continue
        acc = f"{r['accuracy']:.4f}" if r["accuracy"] >= 0 else "-"
        table.add_row(pid, str(r["steps"]), f"{r['loss']:.3f}", acc, str(r["known_peers"]), str(r["exchanges"]),
                      _human(r["bytes_received"]), _human(r["bytes_sent"]))
    return table


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def plot_accuracy(history: list[dict[str, Any]], path: Path, target: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ids = sorted({pid for h in history for pid in h["accuracy"]})
    for pid in ids:
        pts = [(h["t"], h["accuracy"][pid]) for h in history if h["accuracy"].get(pid, -1) >= 0]
        if pts:
            ax.plot([t for t, _ in pts], [a for _, a in pts], label=pid, linewidth=1.5)
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.2f}")
    ax.set_xlabel("wall time since launch (s)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_xlim(left=0)  # start-up time is part of the story: peers answer only once torch is loaded
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("hearsay cluster: test accuracy per peer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_cluster(spec: ClusterSpec, console: Console | None = None) -> int:
    # Off a terminal (CI logs, pipes) rich would wrap the table at 80 columns.
    console = console or Console(width=None if sys.stdout.isatty() else 110)
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    if spec.tls:  # peer ids are peer-<i> (procs.launch_peers); a CA already in <out>/tls is reused
        issued = make_certs(out / "tls", [f"peer-{i}" for i in range(spec.peers)], ips=["127.0.0.1"])
        console.print(f"mutual TLS: CA {issued.ca_cert}, {len(issued.peers)} peer certificates")
    started = time.monotonic()
    peers = launch_peers(spec.peers, out / "logs", lambda i, seeds: peer_args(spec, i, seeds))
    history: list[dict[str, Any]] = []
    reached_at: dict[str, float] = {}
    rows: dict[str, dict[str, Any] | None] = {p.peer_id: None for p in peers}
    failed: list[str] = []
    outcome = "duration"
    last_print = 0.0
    trained_at: float | None = None
    try:
        with Live(console=console, auto_refresh=False, transient=False) if console.is_terminal else _NoLive() as live:
            while True:
                elapsed = time.monotonic() - started
                for p in peers:
                    rows[p.peer_id] = _snapshot(p) if p.alive() else None
                    if not p.alive() and p.peer_id not in failed:
                        failed.append(p.peer_id)
                        console.print(f"[red]peer {p.peer_id} exited[/red] (code {p.proc.returncode if p.proc else '?'})"
                                      f"; log: {p.log_path}\n{p.log_tail(8)}")
                acc = {pid: r["accuracy"] for pid, r in rows.items() if r is not None}
                history.append({"t": round(elapsed, 2), "accuracy": acc,
                                "steps": {pid: r["steps"] for pid, r in rows.items() if r is not None}})
                for pid, a in acc.items():
                    if spec.target_accuracy is not None and a >= spec.target_accuracy and pid not in reached_at:
                        reached_at[pid] = elapsed
                if console.is_terminal:
                    live.update(_table(rows, elapsed, spec), refresh=True)
                elif elapsed - last_print >= 10 or not history[:-1]:
                    console.print(_table(rows, elapsed, spec))
                    last_print = elapsed
                if failed and len(failed) == len(peers):
                    outcome = "all peers exited"
                    break
                if spec.target_accuracy is not None and len(reached_at) == len(peers):
                    outcome = "target reached"
                    break
                if spec.settle_after_training is not None:
                    if trained_at is None and all(r is not None and r["training_done"] for r in rows.values()):
                        trained_at = elapsed
                    if trained_at is not None and elapsed - trained_at >= spec.settle_after_training:
                        outcome = "trained and settled"
                        break
                if elapsed >= spec.duration:
                    break
                time.sleep(max(0.0, POLL_SECONDS - (time.monotonic() - started - elapsed)))
        final = {p.peer_id: _snapshot(p) for p in peers}
    except KeyboardInterrupt:
        outcome = "interrupted"
        final = {p.peer_id: _snapshot(p) for p in peers}
    finally:
        for p in peers:
            p.signal(signal.SIGTERM)
        for p in peers:
            p.stop(timeout=15)
    elapsed = time.monotonic() - started
    console.print(_table({k: v or rows.get(k) for k, v in final.items()}, elapsed, spec))

    results = {
        "spec": asdict(spec), "outcome": outcome, "wall_seconds": round(elapsed, 2),
        "target_accuracy": spec.target_accuracy,
        "all_reached_target": spec.target_accuracy is not None and len(reached_at) == len(peers),
        "peers": [dict((final.get(p.peer_id) or rows.get(p.peer_id) or {"id": p.peer_id}),
                       id=p.peer_id, time_to_target_s=(round(reached_at[p.peer_id], 2)
                                                       if p.peer_id in reached_at else None),
                       log=str(p.log_path))
                  for p in peers],
        "history": history,
    }
    results_path = out / "results.json"
    results_path.write_text(json.dumps(results, indent=2))
    plot_path = out / "accuracy.png"
    plot_accuracy(history, plot_path, spec.target_accuracy)
    console.print(f"{outcome} after {elapsed:.1f} s")
    console.print(f"results: {results_path.resolve()}")
    console.print(f"plot:    {plot_path.resolve()}")
    if failed:
        console.print(f"[red]{len(failed)} peer(s) exited early: {', '.join(failed)}[/red]")
        return 1
    if spec.target_accuracy is not None and len(reached_at) < len(peers):
        console.print(f"[yellow]not every peer reached {spec.target_accuracy:.2f}[/yellow]")
        return 1
    return 0


class _NoLive:
    """Stands in for rich's Live when stdout is not a terminal (CI logs get periodic tables)."""

    def __enter__(self) -> _NoLive:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, *_: object, **__: object) -> None:
        return None
