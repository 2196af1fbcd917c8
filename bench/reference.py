"""Where does the simulator lose against a plain PyTorch reference of the same algorithm?

Issue 11 measured hearsay's simulator about 3 points below a pure-PyTorch reference of
gossip with variance correction (Fashion-MNIST, 8 peers, Dirichlet 0.5, 12k images,
10 local steps, batch 32, lr 0.05, momentum 0.9). This script runs, side by side on the
same shards, model and initialisations:

- ``reference``: synchronous rounds written here in plain PyTorch (no hearsay merge,
  wire or trainer code): every peer takes ``local_steps`` SGD steps, then every peer in
  a random order starts one push-pull with a uniformly random partner (both merge the
  other's pre-merge model: β = 1/2 average, each weight matrix rescaled to the received
  model's variance), then the accuracy of every peer is measured;
- ``sim``: ``peer.sim.swarm`` (the daemon's protocol code on a virtual clock);

with switches for each suspect (momentum at a merge, evaluation timing, phase).

    python -m bench.reference [--rounds 50] [--seed 1] [--variants ref,sim,...]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from peer.data import Dataset, load_dataset
from bench import fmnist
from peer.sim.swarm import SimConfig, Simulator, make_model, peer_seed, shards_for


def _vc_merge(own: dict[str, torch.Tensor], other: dict[str, torch.Tensor], beta: float = 0.5) -> dict:
    """β-average; every floating tensor of rank >= 2 rescaled to the *received* model's variance."""
    out = {}
    for k, x in own.items():
        if not x.is_floating_point():
            out[k] = x.clone()
            continue
        avg = beta * x.double() + (1 - beta) * other[k].double()
        if x.dim() >= 2:
            mean = avg.mean()
            target = other[k].double().var(unbiased=False)
            avg = (avg - mean) * torch.sqrt((target + 1e-8) / (avg.var(unbiased=False) + 1e-8)) + mean
        out[k] = avg.to(x.dtype)
    return out


def _accuracy(model: nn.Module, data: Dataset) -> float:
    with torch.no_grad():
        model.eval()
        pred = model(torch.as_tensor(data.test_x)).argmax(1)
        return float((pred == torch.as_tensor(data.test_y)).float().mean())


def reference(cfg: SimConfig, data: Dataset, rounds: int, local_steps: int, *, momentum: str = "keep",
              every: int = 1) -> dict[str, list[float]]:
    """Mean peer accuracy of the plain reference every ``every`` rounds (and at round 0), measured
    twice per round on the same run: ``before`` the exchanges (after the local steps) and ``after``."""
    shards = shards_for(data, cfg)
    models = [make_model(cfg, data, peer_seed(cfg, i)) for i in range(cfg.peers)]
    opts = [torch.optim.SGD(m.parameters(), lr=cfg.lr, momentum=cfg.momentum) for m in models]
    gens = [torch.Generator().manual_seed(peer_seed(cfg, i)) for i in range(cfg.peers)]
    xs = [torch.as_tensor(data.train_x[s]) for s in shards]
    ys = [torch.as_tensor(data.train_y[s]) for s in shards]
    orders: list[list[int]] = [[] for _ in models]
    rng = random.Random(cfg.seed)
    loss_fn = nn.CrossEntropyLoss()
    start = float(np.mean([_accuracy(m, data) for m in models]))
    curves: dict[str, list[float]] = {"before": [start], "after": [start]}
    for r in range(1, rounds + 1):
        for i, m in enumerate(models):
            m.train()
            for _ in range(local_steps):
                b = min(cfg.batch_size, len(ys[i]))
                if len(orders[i]) < b:
                    orders[i] = torch.randperm(len(ys[i]), generator=gens[i]).tolist()
                idx, orders[i] = orders[i][:b], orders[i][b:]
                opts[i].zero_grad(set_to_none=True)
                loss_fn(m(xs[i][idx]), ys[i][idx]).backward()
                opts[i].step()
        observe = r % every == 0 or r == rounds
        if observe:
            curves["before"].append(float(np.mean([_accuracy(m, data) for m in models])))
        for i in rng.sample(range(cfg.peers), cfg.peers):
            j = rng.choice([k for k in range(cfg.peers) if k != i])
            si = {k: v.detach().clone() for k, v in models[i].state_dict().items()}
            sj = {k: v.detach().clone() for k, v in models[j].state_dict().items()}
            models[i].load_state_dict(_vc_merge(si, sj))
            models[j].load_state_dict(_vc_merge(sj, si))
            if momentum == "reset":
                for k in (i, j):
                    opts[k].state.clear()
        if observe:
            curves["after"].append(float(np.mean([_accuracy(m, data) for m in models])))
    return curves


def simulated(cfg: SimConfig, data: Dataset, rounds: int, local_steps: int, *, every: int = 1) -> dict[str, list[float]]:
    """Mean peer accuracy of ``peer.sim.swarm`` at every ``every``-th round boundary (``round·local_steps``),
    of the models as they are then and of each peer's model right after its latest merge."""
    sim = Simulator(cfg, data)
    start = float(sim.accuracies().mean())
    curves: dict[str, list[float]] = {"at-round-end": [start], "after-merge": [start]}
    for r in range(1, rounds + 1):
        sim.run_until(r * local_steps)
        if r % every == 0 or r == rounds:
            curves["at-round-end"].append(float(sim.accuracies().mean()))
            curves["after-merge"].append(float(sim.merged_accuracies().mean()))
    return curves


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reference", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist (bench.fmnist, 12k) or a peer.data spec")
    p.add_argument("--peers", type=int, default=8)
    p.add_argument("--model", default="cnn", help="mlp or cnn (hearsay's zoo)")
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--variants", default="ref,sim,ref-reset")
    p.add_argument("--every", type=int, default=2, help="observe every this many rounds")
    p.add_argument("--test-limit", type=int, default=1000, help="test images (Fashion-MNIST)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = fmnist.load(test_limit=args.test_limit) if args.dataset == "fashion-mnist" else load_dataset(args.dataset)
    cfg = SimConfig(peers=args.peers, dataset=args.dataset, model=args.model, split="dirichlet", alpha=0.5,
                    seed=args.seed, gossip_interval=float(args.local_steps))
    runs = {
        "ref": lambda: reference(cfg, data, args.rounds, args.local_steps, every=args.every),
        "ref-reset": lambda: reference(cfg, data, args.rounds, args.local_steps, momentum="reset", every=args.every),
        "sim": lambda: simulated(cfg, data, args.rounds, args.local_steps, every=args.every),
    }
    results = {}
    for name in args.variants.split(","):
        t0 = time.perf_counter()
        for when, curve in runs[name]().items():
            results[f"{name} {when}"] = curve
            tail = curve[-max(1, 10 // args.every):]
            print(f"{name:10s} {when:13s} final {curve[-1]:.4f}  mean of the last 10 rounds {np.mean(tail):.4f}  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
