"""What scoring a model costs in each memory layout: the daemon's evaluation copy is channels-last.

    python -m bench.eval_layout [--repeats N] [--json FILE]

One process, one torch thread, seeded. For each model of the zoo on its data set (the CNN on
Fashion-MNIST's 28x28 images and on digits' 8x8, the MLP), it scores the same weights on the
same test images with ``peer.runtime.evaluation.accuracy`` in the default (contiguous) layout and
in ``eval_layout``'s, alternating the two ``--repeats`` times, and prints the median CPU time of
each and their ratio, measured side by side, with both accuracies: they must agree to within one
image (exit 1 if not).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from peer.data import load_dataset
from peer.models import build_model
from peer.runtime.evaluation import accuracy, eval_layout

CASES = (("fashion-mnist", "cnn", 2000), ("digits", "cnn", 0), ("digits", "mlp", 0))


def measure(dataset: str, model_name: str, limit: int, repeats: int) -> dict:
    data = load_dataset(dataset, args={"limit": "2000"} if dataset == "fashion-mnist" else None)
    x, y = data.test_x, data.test_y
    if limit:
        x, y = x[:limit], y[:limit]
    x, y = torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y))  # copies out of the memory map
    torch.manual_seed(0)
    plain = build_model(model_name, data.input_shape, data.num_classes)
    laid = eval_layout(copy.deepcopy(plain))
    times: dict[str, list[float]] = {"contiguous": [], "eval_layout": []}
    scores = {}
    for _ in range(repeats):
        for name, model in (("contiguous", plain), ("eval_layout", laid)):
            started = time.process_time()
            scores[name] = accuracy(model, x, y)
            times[name].append(time.process_time() - started)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"dataset": dataset, "model": model_name, "images": len(y),
            "contiguous_ms": round(med["contiguous"] * 1e3, 1), "eval_layout_ms": round(med["eval_layout"] * 1e3, 1),
            "eval_layout_over_contiguous": round(med["eval_layout"] / med["contiguous"], 3),
            "accuracy_contiguous": scores["contiguous"], "accuracy_eval_layout": scores["eval_layout"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.eval_layout", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = [measure(d, m, n, args.repeats) for d, m, n in CASES]
    print("| data set | model | images | contiguous ms | eval_layout ms | ratio | accuracies |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['model']} | {r['images']} | {r['contiguous_ms']} | {r['eval_layout_ms']} "
              f"| {r['eval_layout_over_contiguous']} | {r['accuracy_contiguous']:.4f} / {r['accuracy_eval_layout']:.4f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    wrong = [r for r in rows if abs(r["accuracy_contiguous"] - r["accuracy_eval_layout"]) > 1.0 / r["images"]]
    if wrong:
        print(f"eval_layout changed the accuracy: {wrong}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
