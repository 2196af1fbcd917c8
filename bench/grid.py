"""The full learning grid, one ``bench.learning`` process per setting, resumable, and its verdict.

The full grid (2 data sets x 16/64 peers x 3 splits x MLP/CNN, 60 rounds) is hours of CPU on
this machine, longer than one working session: one process for all of it loses everything to an
interruption. ``run`` starts one process per setting, ``--jobs`` at a time, each writing its own
JSON (and plots) into DIR; a setting whose JSON is there is done and is skipped when the run is
started again. ``report`` reads every JSON in DIR and judges issue 11's must-hold 2 per setting
(``bench.learning.must_hold_2``), listing the settings that have not been measured yet.

    python -m bench.grid run DIR [--jobs 2] [--methods fedavg sampled gossip_vc_dc_int8x5] [--datasets ...]
    python -m bench.grid report DIR [--json FILE] [--strict]

``report --strict`` exits 1 when a setting is missing or misses a half of must-hold 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.learning import TARGET_FRACTION, Setting, grid, must_hold_2, selected, split_label

# Budget fields that make two runs' numbers comparable: rows are only judged side by side when
# these agree (the codec / exchange / drift flags only change the gossip methods that use them).
COMPARABLE = ("rounds", "local_steps", "batch_size", "lr", "momentum", "init", "seed", "lr_schedule", "lr_floor")
# Relative CPU of one setting per peer, to start the cheap ones first (measured for fedavg,
# sampled and gossip_vc_dc_int8x5, session 14: digits/16/MLP about 90 CPU-s, digits/16/CNN 210,
# Fashion-MNIST/16/MLP 160, Fashion-MNIST/16/CNN 630-700, Fashion-MNIST/64/CNN 2,731).
_COST = {("digits", "mlp"): 1, ("digits", "cnn"): 3, ("fashion-mnist", "mlp"): 3, ("fashion-mnist", "cnn"): 12}
RUNNING = ".running"


def setting_name(setting: Setting) -> str:
    return f"{setting.dataset}_{setting.peers}_{setting.model}_{setting.split_arg()}"


def full_grid() -> list[Setting]:
    return grid(quick=False)[0]


def chosen(args: argparse.Namespace) -> list[Setting]:
    """The full grid's settings that pass the filters, cheapest first."""
    picked = [s for s in full_grid() if selected(s, args)]  # bench.learning's own filters
    if not picked:
        raise SystemExit("bench.grid: no setting of the full grid matches the filters")
    return sorted(picked, key=lambda s: (_COST[(s.dataset, s.model)] * s.peers, setting_name(s)))


# --- run ------------------------------------------------------------------------------------------

@dataclass
class Job:
    setting: Setting
    process: subprocess.Popen
    started: float


def command(setting: Setting, out: Path, args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "bench.learning", "--no-wallclock", "--datasets", setting.dataset,
           "--peers", str(setting.peers), "--models", setting.model, "--splits", setting.split_arg(),
           "--json", str(out)]
    if args.methods:
        cmd += ["--methods", *args.methods]
    if args.rounds:
        cmd += ["--rounds", str(args.rounds)]
    return cmd


def finish(job: Job, out_dir: Path) -> bool:
    """Move a finished setting's JSON and plots out of .running; False (and its log's tail) if it failed."""
    name = setting_name(job.setting)
    running = out_dir / RUNNING
    if job.process.returncode != 0:
        tail = (running / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
        print(f"bench.grid: {name} FAILED (exit {job.process.returncode}):\n  " + "\n  ".join(tail), flush=True)
        return False
    for path in running.glob(f"{name}*"):
        path.replace(out_dir / path.name)
    return True


def run(args: argparse.Namespace) -> int:
    out_dir: Path = args.dir
    (out_dir / RUNNING).mkdir(parents=True, exist_ok=True)
    settings = chosen(args)
    pending = [s for s in settings if not (out_dir / f"{setting_name(s)}.json").exists()]
    print(f"bench.grid: {len(settings) - len(pending)} of {len(settings)} settings already in {out_dir}; "
          f"{len(pending)} to run, {args.jobs} at a time", flush=True)
    # One torch thread per process: --jobs processes share the cores without oversubscribing them.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    jobs: list[Job] = []
    failed: list[str] = []
    started = time.monotonic()

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # the finally below stops the children

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while pending or jobs:
            while pending and len(jobs) < args.jobs:
                setting = pending.pop(0)
                name = setting_name(setting)
                log = (out_dir / RUNNING / f"{name}.log").open("w")
                process = subprocess.Popen(command(setting, out_dir / RUNNING / f"{name}.json", args),
                                           stdout=log, stderr=subprocess.STDOUT, env=env)
                log.close()
                jobs.append(Job(setting, process, time.monotonic()))
                print(f"bench.grid: [{time.monotonic() - started:7.0f} s] started {name}", flush=True)
            done = next((j for j in jobs if j.process.poll() is not None), None)
            if done is None:
                # Wait on the oldest child; the timeout lets a younger one that ends first be noticed.
                try:
                    jobs[0].process.wait(timeout=2.0)
                except subprocess.TimeoutExpired:
                    pass
                continue
            jobs.remove(done)
            ok = finish(done, out_dir)
            if not ok:
                failed.append(setting_name(done.setting))
            print(f"bench.grid: [{time.monotonic() - started:7.0f} s] {'finished' if ok else 'failed'} "
                  f"{setting_name(done.setting)} in {time.monotonic() - done.started:.0f} s; "
                  f"{len(pending) + len(jobs)} left", flush=True)
    finally:  # SIGTERM, ^C or an error here: no setting runs on without its parent
        for job in jobs:
            job.process.terminate()
        signal.signal(signal.SIGTERM, previous)
    if failed:
        print(f"bench.grid: {len(failed)} setting(s) failed: {', '.join(failed)}", flush=True)
        return 1
    return 0


# --- report ---------------------------------------------------------------------------------------

def key_of(row: dict) -> tuple:
    return (row["dataset"], row["peers"], row["split"], row["alpha"], row["model"])


def collect(out_dir: Path) -> tuple[dict[tuple, dict[str, dict]], dict]:
    """Every row in DIR's JSONs, by setting then method; refuses runs whose budgets differ."""
    by_setting: dict[tuple, dict[str, dict]] = {}
    budget: dict | None = None
    files = sorted(out_dir.glob("*.json"))
    if not files:
        raise SystemExit(f"bench.grid: no results (*.json) in {out_dir}")
    for path in files:
        result = json.loads(path.read_text())
        if "configs" not in result or "budget" not in result:
            raise SystemExit(f"bench.grid: {path} is not a bench.learning result")
        this = {k: result["budget"].get(k) for k in COMPARABLE}
        if budget is None:
            budget = this
        elif this != budget:
            diff = {k: (budget[k], this[k]) for k in COMPARABLE if budget[k] != this[k]}
            raise SystemExit(f"bench.grid: {path} ran with another budget than the rest: {diff}")
        for row in result["configs"]:
            by_setting.setdefault(key_of(row), {})[row["method"]] = row
    assert budget is not None
    return by_setting, budget


def _cell(m: dict[str, dict], method: str) -> str:
    fedavg, row = m["fedavg"], m[method]
    r, b = row["rounds_to_95pct_fedavg"], fedavg["rounds_to_95pct_fedavg"]
    rounds = "never" if r is None else f"{r} ({r / max(b, 1):.2f}x)" if b is not None else str(r)
    return f"{method}: {rounds}, {row['bytes_per_round'] / fedavg['bytes_per_round']:.2f}x bytes, " \
           f"final {row['final_accuracy_mean']:.3f}"


def report(args: argparse.Namespace) -> int:
    by_setting, budget = collect(args.dir)
    order = {key_of({"dataset": s.dataset, "peers": s.peers, "split": s.split, "alpha": s.alpha, "model": s.model}): s
             for s in full_grid()}
    print(f"{len(by_setting)} of {len(order)} settings of the full grid measured in {args.dir}; "
          f"budget {budget}; the mark: {TARGET_FRACTION:.0%} of FedAvg's final accuracy\n")
    print("| data | peers | split | model | FedAvg: rounds (final) | other methods: rounds to the mark (x FedAvg's), "
          "bytes per round (x FedAvg's), final | must-hold 2 |")
    print("|---|---|---|---|---|---|---|")
    verdicts: dict[str, str] = {}
    misses: list[str] = []
    for key in sorted(by_setting, key=lambda k: list(order).index(k) if k in order else len(order)):
        m = by_setting[key]
        dataset, peers, split, alpha, model = key
        label = f"{dataset}, {peers}, {split_label(split, alpha)}, {model}"
        if "fedavg" not in m:
            verdicts[label] = "no FedAvg run: cannot be judged"
            misses.append(label)
            continue
        verdict = must_hold_2(m)
        verdicts[label] = verdict
        if "NONE" in verdict:
            misses.append(label)
        fedavg = m["fedavg"]
        others = "<br>".join(_cell(m, k) for k in m if k not in ("fedavg", "centralized"))
        print(f"| {dataset} | {peers} | {split_label(split, alpha)} | {model} "
              f"| {fedavg['rounds_to_95pct_fedavg']} ({fedavg['final_accuracy_mean']:.3f}) | {others} "
              f"| {verdict.removeprefix('must-hold 2: ')} |")
    missing = [setting_name(s) for k, s in order.items() if k not in by_setting]
    print(f"\nnot measured: {', '.join(missing) or 'none'}")
    print(f"settings missing a half of must-hold 2: {'; '.join(misses) or 'none'}")
    if args.json:
        args.json.write_text(json.dumps({"budget": budget, "configs": [r for m in by_setting.values() for r in m.values()],
                                         "must_hold_2": verdicts, "not_measured": missing}, indent=1))
    return 1 if args.strict and (missing or misses) else 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.grid", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the settings not yet in DIR, one process each")
    r.add_argument("dir", type=Path)
    r.add_argument("--jobs", type=int, default=2, help="settings at a time (one core each)")
    r.add_argument("--methods", nargs="*", default=None, help="bench.learning --methods (FedAvg always runs)")
    r.add_argument("--rounds", type=int, default=None, help="bench.learning --rounds (default: the grid's 60)")
    r.add_argument("--datasets", nargs="*", default=None)
    r.add_argument("--peers", nargs="*", type=int, default=None)
    r.add_argument("--models", nargs="*", default=None)
    r.add_argument("--splits", nargs="*", default=None, help="iid, dir0.1, dir0.5")
    q = sub.add_parser("report", help="judge must-hold 2 on every setting in DIR")
    q.add_argument("dir", type=Path)
    q.add_argument("--json", type=Path, default=None, help="write the merged rows and verdicts here")
    q.add_argument("--strict", action="store_true", help="exit 1 if a setting is missing or misses a half")
    args = p.parse_args(argv)
    if args.command == "run" and args.jobs < 1:
        p.error("--jobs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    raise SystemExit(main())
