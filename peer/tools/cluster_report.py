"""What `hearsay cluster` shows and writes: the live table, the accuracy plot, membership
events read from the peers' logs, and the final evaluation on the full test set.
"""

from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

# Peer states the table and results.json use. A peer is "starting" until it first answers;
# "unreachable" means it answered before and does not now (or never did, at the end).
STARTING, UP, UNREACHABLE, EXITED = "starting", "up", "unreachable", "exited"

# peer/runtime/membership.py logs every transition as "member <address> <old> -> <new> incarnation <n>".
_TRANSITION = re.compile(r"member (\S+) (\S+) -> (suspect|dead)\b")


def membership_events(log_path: Path) -> dict[str, int]:
    """How many times this peer saw a member turn suspect and dead. In a cluster where no
    peer was killed, every death is a false one."""
    counts = {"suspicions": 0, "deaths": 0}
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return counts
    for match in _TRANSITION.finditer(text):
        counts["suspicions" if match.group(3) == "suspect" else "deaths"] += 1
    return counts


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def table(title: str, rows: dict[str, dict[str, Any]], final: dict[str, float] | None = None) -> Table:
    """One row per peer; ``rows[pid]`` holds its last status (or only its ``state``)."""
    t = Table(title=title)
    columns = ["peer", "state", "steps", "loss", "accuracy", "peers", "exchanges", "bytes in", "bytes out"]
    if final is not None:
        columns.insert(5, "full test")
    for col in columns:
        t.add_column(col, justify="left" if col in ("peer", "state") else "right")
    for pid, r in rows.items():
        full = [f"{final[pid]:.4f}" if pid in final else "-"] if final is not None else []
        if "steps" not in r:
            t.add_row(pid, r["state"], "-", "-", "-", *full, "-", "-", "-", "-")
            continue
        acc = f"{r['accuracy']:.4f}" if r["accuracy"] >= 0 else "-"
        t.add_row(pid, r["state"], str(r["steps"]), f"{r['loss']:.3f}", acc, *full, str(r["known_peers"]),
                  str(r["exchanges"]), human_bytes(r["bytes_received"]), human_bytes(r["bytes_sent"]))
    return t


def plot_accuracy(history: list[dict[str, Any]], path: Path, target: float | None, all_up_at: float | None,
                  live_label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    end = history[-1]["t"] if history else 0.0
    if all_up_at is None or all_up_at > 0:  # start-up: peers load torch and data before they answer
        ax.axvspan(0, all_up_at if all_up_at is not None else end, color="grey", alpha=0.15,
                   label="starting" if all_up_at is not None else "starting (some peers never answered)")
    ids = sorted({pid for h in history for pid in h["accuracy"]})
    for pid in ids:
        pts = [(h["t"], h["accuracy"][pid]) for h in history if h["accuracy"].get(pid, -1) >= 0]
        if pts:
            ax.plot([t for t, _ in pts], [a for _, a in pts], label=pid, linewidth=1.5)
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.2f}")
    ax.set_xlabel("wall time since launch (s)")
    ax.set_ylabel(f"test accuracy ({live_label})")
    ax.set_ylim(0, 1)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("hearsay cluster: test accuracy per peer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass(frozen=True)
class DataOptions:
    """How the peers were told to load their data (so the full test set is the same one)."""

    dataset: str
    data_path: str
    dataset_args: tuple[str, ...]
    data_seed: int
    model: str


def evaluate_full(models: dict[str, bytes], options: DataOptions) -> tuple[dict[str, float], int, float]:
    """Accuracy of each downloaded model (``torch.save`` state dicts) on the whole test set:
    (per peer, test samples, seconds). Runs after the peers stopped, on every core."""
    import os

    import torch

    from peer.data import load_dataset, parse_dataset_args
    from peer.runtime.evaluation import accuracy, eval_layout
    from peer.models import build_model

    started = time.monotonic()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    data = load_dataset(options.dataset, seed=options.data_seed, path=options.data_path,
                        args=parse_dataset_args(options.dataset_args))
    model = eval_layout(build_model(options.model, data.input_shape, data.num_classes))
    out = {}
    for pid, blob in models.items():
        model.load_state_dict(torch.load(io.BytesIO(blob), weights_only=True))
        out[pid] = accuracy(model, data.test_x, data.test_y, torch.device("cpu"))
    return out, int(len(data.test_y)), time.monotonic() - started
