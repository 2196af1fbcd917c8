"""`hearsay cluster`: N real peer processes on loopback, watched through their admin API.

Ends after ``duration`` seconds (counted from launch, start-up included) or as soon as
every peer is at or above ``target_accuracy`` in the same poll. At the end it downloads
every peer's model, stops the peers, and evaluates each model on the whole test set:
the live accuracy comes from the peers (on their bounded evaluation subset), the final
one from the full set, and results.json says which is which.

Exit code 1 when a peer exited, a peer did not answer at the end, or a target was set
and not reached by all peers together.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from peer.tools.admin_client import AdminError
from peer.tools.certs import CA_CERT_FILE, make_certs
from peer.runtime.config import LR_SCHEDULES, PeerConfig
from peer.tools.cluster_report import (EXITED, STARTING, UNREACHABLE, UP, DataOptions, evaluate_full, membership_events,
                                 plot_accuracy, table)
from peer.tools.procs import PeerProcess, launch_peers

POLL_SECONDS = 1.0
STATUS_TIMEOUT = 2.0      # a peer slower than this to answer status counts as unreachable in that poll
FINAL_TIMEOUT = 5.0       # the last status and model download, all peers at once
STOP_GRACE = 10.0         # SIGTERM to SIGKILL, all peers together


@dataclass
class ClusterSpec:
    peers: int = 4
    duration: float = 120.0
    target_accuracy: float | None = None
    out: str = "results"
    model: str = "mlp"
    partition: str = "iid"
    alpha: float = 0.5
    merge: str = PeerConfig.merge  # the daemon's default, so "default settings" mean the same here
    gossip_interval: float = PeerConfig.gossip_interval
    seed: int = 0
    mode: str = "gossip"
    extra_args: list[str] = field(default_factory=list)
    # Stop this many seconds after every peer has finished training (needs --max-steps in
    # extra_args); duration stays the upper bound. Benchmarks use it for equal compute.
    settle_after_training: float | None = None
    # Mutual TLS between the peers: a CA and one certificate per peer in <out>/tls.
    tls: bool = False
    dataset: str = "digits"
    data_path: str = ""
    dataset_args: list[str] = field(default_factory=list)
    # Split the training data into this many shards (default: one per peer); peer i trains
    # on shard i. `-n 1 --shard-count 8` is one peer alone on the first of 8 shards.
    shard_count: int | None = None
    # Evaluation settings passed to every peer (None: the peer's default).
    eval_samples: int | None = None
    eval_every: int | None = None
    eval_budget: float | None = None
    # Download every model at the end and evaluate it on the full test set.
    final_eval: bool = True
    # The peers' learning rate over the run (PeerConfig.lr_schedule). "auto": cosine when the
    # run's length is known (it ends at duration: no target_accuracy, no settle_after_training)
    # or lr_horizon is given, annealed to lr_floor at lr_horizon seconds after launch (None:
    # duration), so that every peer ends close to the swarm's consensus; constant otherwise.
    lr_schedule: str = "auto"
    lr_horizon: float | None = None
    lr_floor: float | None = None  # None: the peers' default

    def shards(self) -> int:
        return self.shard_count or self.peers

    def peer_lr_schedule(self) -> str:
        """The lr_schedule every peer gets ("auto" resolved: a horizon given asks for one)."""
        if self.lr_schedule != "auto":
            return self.lr_schedule
        ends_at_duration = self.target_accuracy is None and self.settle_after_training is None
        return "cosine" if ends_at_duration or self.lr_horizon is not None else "constant"

    def lr_args(self) -> list[str]:
        """The peers' learning-rate flags: a peer's process starts at the launch, which is where
        --duration counts from too, so the horizon (default: the duration) ends with the run."""
        schedule = self.peer_lr_schedule()
        if schedule == "constant":
            return ["--lr-schedule", "constant"]
        horizon = self.duration if self.lr_horizon is None else self.lr_horizon
        floor = [] if self.lr_floor is None else ["--lr-floor", str(self.lr_floor)]
        return ["--lr-schedule", schedule, "--lr-horizon", str(horizon), *floor]


def tls_args(directory: Path, name: str) -> list[str]:
    """The `hearsay run` flags of peer ``name`` whose files `hearsay certs` wrote to ``directory``."""
    return ["--tls-ca", str(directory / CA_CERT_FILE), "--tls-cert", str(directory / f"{name}.pem"),
            "--tls-key", str(directory / f"{name}.key"), "--require-tls"]


def peer_args(spec: ClusterSpec, i: int, seeds: list[str]) -> list[str]:
    tls = tls_args(Path(spec.out) / "tls", f"peer-{i}") if spec.tls else []
    data = ["--dataset", spec.dataset, *(["--data-path", spec.data_path] if spec.data_path else []),
            *(a for arg in spec.dataset_args for a in ("--dataset-arg", arg))]
    evaluation = [a for flag, value in (("--eval-samples", spec.eval_samples), ("--eval-every", spec.eval_every),
                                        ("--eval-budget", spec.eval_budget)) if value is not None
                  for a in (flag, str(value))]
    return [*(["--seeds", ",".join(seeds)] if seeds else []), "--shard-index", str(i),
            "--shard-count", str(spec.shards()), "--partition", spec.partition, "--alpha", str(spec.alpha),
            *data, "--model", spec.model, *evaluation, "--merge", spec.merge,
            "--gossip-interval", str(spec.gossip_interval), "--mode", spec.mode, "--seed", str(spec.seed + i),
            "--data-seed", str(spec.seed), *spec.lr_args(), *tls, *spec.extra_args]


def check_spec(spec: ClusterSpec) -> None:
    """``ValueError`` for a spec that cannot run, before any process starts."""
    if spec.peers < 1:
        raise ValueError("-n must be at least 1")
    if spec.duration <= 0:
        raise ValueError("--duration must be positive")
    if spec.lr_schedule not in ("auto", *LR_SCHEDULES):
        raise ValueError(f"--lr-schedule must be auto or one of {', '.join(LR_SCHEDULES)}")
    if spec.lr_horizon is not None and spec.lr_horizon <= 0:
        raise ValueError("--lr-horizon must be positive")
    if spec.lr_floor is not None and not 0 <= spec.lr_floor <= 1:
        raise ValueError("--lr-floor must be in [0, 1]")
    if spec.shard_count is not None and spec.shard_count < spec.peers:
        raise ValueError(f"--shard-count {spec.shard_count} is smaller than -n {spec.peers}: "
                         "every peer needs a shard of its own")
    # The model's name too (a ConfigError listing the zoo), before preflight imports torch to
    # build the model: that import cost a misspelt --model 3 CPU-s and seconds of waiting.
    PeerConfig(model=spec.model).validate()


def preflight(spec: ClusterSpec) -> None:
    """Load the data set and build the model once here, before any peer starts: a bad spec
    is one error line, and the decoded data lands in the shared cache for the peers."""
    from peer.data import dataset_from_config, partition
    from peer.runtime.evaluation import policy_from_config

    config = PeerConfig(dataset=spec.dataset, data_path=spec.data_path, dataset_arg=list(spec.dataset_args),
                        data_seed=spec.seed, model=spec.model)
    for name in ("eval_samples", "eval_every", "eval_budget"):
        if getattr(spec, name) is not None:
            setattr(config, name, getattr(spec, name))
    policy_from_config(config)
    data = dataset_from_config(config)
    partition(data.train_y, spec.shards(), spec.partition, spec.alpha, spec.seed)
    from peer.models import build_model  # torch: seconds to import, so after the cheap checks

    build_model(spec.model, data.input_shape, data.num_classes)


def _status(p: PeerProcess, timeout: float) -> dict[str, Any] | None:
    s = p.try_status(timeout)
    if s is None:
        return None
    return {"id": s.peer_id, "dataset": s.dataset, "model": s.model, "accuracy": s.accuracy, "loss": s.loss, "steps": s.steps,
            "exchanges": s.exchanges, "merges": s.merges, "rejected": s.rejected,
            "known_peers": s.known_peers, "bytes_sent": s.bytes_sent, "bytes_received": s.bytes_received,
            "samples": s.samples, "training_done": s.training_done, "lr": s.lr}


def _download(p: PeerProcess, timeout: float) -> bytes | None:
    try:
        with p.admin(timeout) as client:
            return client.download_model(timeout=timeout)
    except AdminError:
        return None


class Watch:
    """What the cluster knows of each peer: its last status, its state, when it first answered."""

    def __init__(self, peers: list[PeerProcess], pool: ThreadPoolExecutor) -> None:
        self.peers = peers
        self.pool = pool
        self.rows: dict[str, dict[str, Any]] = {p.peer_id: {"state": STARTING} for p in peers}
        self.first_answer: dict[str, float] = {}
        self.last_answer: dict[str, float] = {}

    def poll(self, elapsed: float, timeout: float) -> list[str]:
        """Ask every live peer for its status at once; returns the ids that exited since last poll."""
        answers = list(self.pool.map(lambda p: _status(p, timeout) if p.alive() else None, self.peers))
        exited = []
        for p, answer in zip(self.peers, answers):
            row = self.rows[p.peer_id]
            if answer is not None:
                self.rows[p.peer_id] = {**answer, "state": UP}
                self.first_answer.setdefault(p.peer_id, elapsed)
                self.last_answer[p.peer_id] = elapsed
            elif not p.alive():
                if row["state"] != EXITED:
                    exited.append(p.peer_id)
                row["state"] = EXITED
            else:
                row["state"] = UNREACHABLE if p.peer_id in self.first_answer else STARTING
        return exited

    def all_up(self) -> bool:
        return all(r["state"] == UP for r in self.rows.values())

    def all_at_least(self, target: float) -> bool:
        return self.all_up() and all(r["accuracy"] >= target for r in self.rows.values())


def _stop_all(peers: list[PeerProcess]) -> None:
    """SIGTERM every peer, then SIGKILL those still running STOP_GRACE s later (one shared deadline)."""
    for p in peers:
        p.signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for p in peers:
        p.stop(timeout=max(0.1, deadline - time.monotonic()))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_cluster(spec: ClusterSpec, console: Console | None = None) -> int:
    """Run the cluster; SIGINT and SIGTERM end it early, still stopping every peer and
    writing the results (a SIGINT ignored since start, as in a background job, is re-armed)."""
    if threading.current_thread() is not threading.main_thread():
        return _run_cluster(spec, console)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run_cluster(spec, console)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_cluster(spec: ClusterSpec, console: Console | None) -> int:
    check_spec(spec)
    # Off a terminal (CI logs, pipes) rich would wrap the table at 80 columns.
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    if spec.tls:  # peer ids are peer-<i> (procs.launch_peers); a CA already in <out>/tls is reused
        issued = make_certs(out / "tls", [f"peer-{i}" for i in range(spec.peers)], ips=["127.0.0.1"])
        console.print(f"mutual TLS: CA {issued.ca_cert}, {len(issued.peers)} peer certificates")
    started = time.monotonic()
    peers = launch_peers(spec.peers, out / "logs", lambda i, seeds: peer_args(spec, i, seeds))
    pool = ThreadPoolExecutor(max_workers=len(peers), thread_name_prefix="cluster-poll")
    watch = Watch(peers, pool)
    history: list[dict[str, Any]] = []
    failed: list[str] = []
    first_crossed: dict[str, float] = {}
    reached_at: float | None = None
    outcome = "duration"
    last_print = -1e9
    trained_at: float | None = None

    def title(elapsed: float) -> str:
        target = f", target {spec.target_accuracy:.2f}" if spec.target_accuracy is not None else ""
        return f"hearsay cluster: {spec.peers} peers, {elapsed:5.1f} / {spec.duration:.0f} s{target}"

    final: dict[str, dict[str, Any] | None] = {}
    models: dict[str, bytes | None] = {}
    try:
        live_view = Live(console=console, auto_refresh=False, transient=False) if console.is_terminal else None
        with live_view or _NoLive() as live:
            while True:
                elapsed = time.monotonic() - started
                remaining = spec.duration - elapsed
                polled_at = round(elapsed, 2)  # one time stamp for this poll: history and first answers agree
                for pid in watch.poll(polled_at, max(0.2, min(STATUS_TIMEOUT, remaining))):
                    p = next(q for q in peers if q.peer_id == pid)
                    failed.append(pid)
                    console.print(f"[red]peer {pid} exited[/red] (code {p.proc.returncode if p.proc else '?'})"
                                  f"; log: {p.log_path}\n{p.log_tail(8)}")
                elapsed = time.monotonic() - started
                up = {pid: r for pid, r in watch.rows.items() if r["state"] == UP}
                history.append({"t": polled_at, "accuracy": {pid: r["accuracy"] for pid, r in up.items()},
                                "steps": {pid: r["steps"] for pid, r in up.items()},
                                "state": {pid: r["state"] for pid, r in watch.rows.items()}})
                if spec.target_accuracy is not None:
                    for pid, r in up.items():
                        if r["accuracy"] >= spec.target_accuracy:
                            first_crossed.setdefault(pid, polled_at)
                if console.is_terminal:
                    live.update(table(title(elapsed), watch.rows), refresh=True)
                elif elapsed - last_print >= 10:
                    console.print(table(title(elapsed), watch.rows))
                    last_print = elapsed
                if len(failed) == len(peers):
                    outcome = "all peers exited"
                    break
                if spec.target_accuracy is not None and watch.all_at_least(spec.target_accuracy):
                    reached_at = polled_at  # the poll whose answers showed every peer at the target
                    outcome = "target reached"
                    break
                if spec.settle_after_training is not None:
                    if trained_at is None and watch.all_up() and all(r["training_done"] for r in watch.rows.values()):
                        trained_at = elapsed
                    if trained_at is not None and elapsed - trained_at >= spec.settle_after_training:
                        outcome = "trained and settled"
                        break
                if elapsed >= spec.duration:
                    break
                now = time.monotonic() - started
                time.sleep(max(0.0, min(POLL_SECONDS - (now - elapsed), spec.duration - now)))
    except KeyboardInterrupt:
        outcome = "interrupted"
    finally:
        try:
            final, models = _final_state(peers, pool, spec.final_eval)
        finally:
            stopped_at = time.monotonic() - started
            _stop_all(peers)
            pool.shutdown(wait=False)
    return _report(spec, console, peers, watch, history, failed, final, models, outcome, reached_at,
                   first_crossed, stopped_at, started)


def _final_state(peers: list[PeerProcess], pool: ThreadPoolExecutor,
                 download: bool) -> tuple[dict[str, dict[str, Any] | None], dict[str, bytes | None]]:
    """Every peer's last status and (with ``download``) model, asked of all peers at once and
    all within FINAL_TIMEOUT s, so the end of a run is not stretched by a peer that hangs."""
    deadline = time.monotonic() + FINAL_TIMEOUT

    def ask(p: PeerProcess) -> tuple[dict[str, Any] | None, bytes | None]:
        if not p.alive():
            return None, None
        status = _status(p, max(0.2, min(STATUS_TIMEOUT + 1, deadline - time.monotonic())))
        if status is None or not download:
            return status, None
        return status, _download(p, max(0.2, deadline - time.monotonic()))

    answers = list(pool.map(ask, peers))
    return ({p.peer_id: a[0] for p, a in zip(peers, answers)}, {p.peer_id: a[1] for p, a in zip(peers, answers)})


def _unreachable_reason(p: PeerProcess, watch: Watch) -> str:
    if p.proc is not None and p.proc.poll() is not None and p.peer_id in watch.rows \
            and watch.rows[p.peer_id]["state"] == EXITED:
        return f"exited with code {p.proc.returncode} before the end; see {p.log_path}"
    if p.peer_id not in watch.first_answer:
        return f"never answered its admin API (still starting?); see {p.log_path}"
    return (f"did not answer status within {FINAL_TIMEOUT:.0f} s at the end (last answer at "
            f"{watch.last_answer[p.peer_id]:.1f} s); see {p.log_path}")


def _report(spec: ClusterSpec, console: Console, peers: list[PeerProcess], watch: Watch,
            history: list[dict[str, Any]], failed: list[str], final: dict[str, dict[str, Any] | None],
            models: dict[str, bytes | None], outcome: str, reached_at: float | None,
            first_crossed: dict[str, float], stopped_at: float, started: float) -> int:
    stop_seconds = time.monotonic() - started - stopped_at
    full: dict[str, float] = {}
    test_total, eval_seconds, eval_error = 0, 0.0, ""
    blobs = {pid: b for pid, b in models.items() if b is not None}
    if blobs:
        options = DataOptions(spec.dataset, spec.data_path, tuple(spec.dataset_args), spec.seed, spec.model)
        try:
            full, test_total, eval_seconds = evaluate_full(blobs, options)
        except Exception as e:  # noqa: BLE001 - the run's results still get written
            eval_error = f"{type(e).__name__}: {e}"
            console.print(f"[red]final evaluation failed: {eval_error}[/red]")
    unreachable = {p.peer_id: _unreachable_reason(p, watch) for p in peers if final.get(p.peer_id) is None}
    rows = {}
    for p in peers:
        status = final.get(p.peer_id)
        rows[p.peer_id] = {**status, "state": UP} if status else {"state": UNREACHABLE
                                                                  if p.peer_id not in failed else EXITED}
    full_note = f"; full test = all {test_total} test samples" if full else ""
    console.print(table(f"hearsay cluster: {spec.peers} peers, final (live accuracy on the evaluation subset"
                        f"{full_note})", rows, full if spec.final_eval else None))
    live_label = ("all test samples" if spec.eval_samples == 0 else
                  f"a seeded subset of up to {spec.eval_samples or PeerConfig.eval_samples} test samples")
    peer_results = []
    for p in peers:
        status = final.get(p.peer_id)
        entry: dict[str, Any] = {"id": p.peer_id, "state": rows[p.peer_id]["state"]}
        if status is not None:
            entry.update(status)
        if p.peer_id in unreachable:
            entry["reason"] = unreachable[p.peer_id]
        entry["final_accuracy"] = round(full[p.peer_id], 4) if p.peer_id in full else None
        entry["first_crossed_target_s"] = round(first_crossed[p.peer_id], 2) if p.peer_id in first_crossed else None
        entry["started_answering_s"] = watch.first_answer.get(p.peer_id)
        entry.update(membership_events(p.log_path))
        entry["log"] = str(p.log_path)
        peer_results.append(entry)
    all_up_at = max(watch.first_answer.values()) if len(watch.first_answer) == len(peers) else None
    results = {
        "spec": asdict(spec), "peer_lr_args": spec.lr_args(), "outcome": outcome,
        "run_seconds": round(stopped_at, 2),  # launch to the stop signal: what --duration bounds
        "stop_seconds": round(stop_seconds, 2),
        "final_eval_seconds": round(eval_seconds, 2),
        "wall_seconds": round(time.monotonic() - started, 2),
        "all_up_at_s": all_up_at,
        "target_accuracy": spec.target_accuracy,
        # Every peer at or above the target in the same poll, and when that happened.
        "all_reached_target": reached_at is not None,
        "reached_target_at_s": round(reached_at, 2) if reached_at is not None else None,
        "evaluation": {
            "accuracy": f"live, as each peer last reported it: {live_label}",
            "final_accuracy": (f"all {test_total} test samples, evaluated by hearsay cluster on each peer's "
                               f"model downloaded at the end" if full else
                               ("not computed: " + (eval_error or "no model could be downloaded")
                                if spec.final_eval else "not computed (--no-final-eval)")),
        },
        "unreachable": unreachable,
        "peers": peer_results,
        "history": history,
    }
    out = Path(spec.out)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot_path = out / "accuracy.png"
    plot_accuracy(history, plot_path, spec.target_accuracy, all_up_at, live_label)
    when = f" at {reached_at:.1f} s (every peer >= {spec.target_accuracy:.2f} together)" if reached_at else ""
    console.print(f"{outcome}{when}; peers ran {stopped_at:.1f} s, stopping took {stop_seconds:.1f} s"
                  + (f", full-test evaluation {eval_seconds:.1f} s" if full else ""))
    console.print(f"results: {(out / 'results.json').resolve()}")
    console.print(f"plot:    {plot_path.resolve()}")
    code = 0
    if failed:
        console.print(f"[red]{len(failed)} peer(s) exited early: {', '.join(failed)}[/red]")
        code = 1
    for pid, reason in unreachable.items():
        console.print(f"[red]peer {pid} unreachable at the end: {reason}[/red]")
        code = 1
    if spec.target_accuracy is not None and reached_at is None:
        console.print(f"[yellow]the peers were never all at or above {spec.target_accuracy:.2f} together[/yellow]")
        code = 1
    if spec.final_eval and eval_error:
        code = 1
    return code


class _NoLive:
    """Stands in for rich's Live when stdout is not a terminal (CI logs get periodic tables)."""

    def __enter__(self) -> _NoLive:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, *_: object, **__: object) -> None:
        return None
