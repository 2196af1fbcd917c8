"""Codec speed, size and error on one fp32 delta, single core, next to a plain copy.

    python -m bench.codecs [--quick] [--json FILE]

Every codec encodes and decodes the same 25M-element float32 delta (``--quick``: 2M).
Times are the best of several runs, so that a busy shared machine costs as little
as possible; a plain copy of the same tensor (numpy, into a fresh array, as a decode
must produce) is timed in the same loop, and each codec's time is reported divided
by it, which is what stays comparable between machines. GB/s count float32 input
bytes for both directions. ``ratio`` is float32 bytes over payload bytes;
``rel_error`` is ||x - decode(encode(x))|| / ||x||.

hivemind's fp16 and 8-bit codecs are measured on the same tensor when hivemind can
be imported (it is an optional extra; run this module with an interpreter that has
it, e.g. a separate venv, with the repository as the working directory).
"""

from __future__ import annotations

import os

# One core: set before numpy/torch load their thread pools.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from protocol import codecs  # noqa: E402

FULL_ELEMENTS = 25_000_000
QUICK_ELEMENTS = 2_000_000
# (registry name, encode options): every codec the daemon can be configured with.
CODECS: list[tuple[str, dict[str, object]]] = [
    ("fp32", {}), ("fp16", {}), ("int8", {}), ("int4", {}),
    ("topk", {"ratio": 0.01}), ("topk_int8", {"ratio": 0.01}), ("randk", {"ratio": 0.01}),
]


@dataclass
class Row:
    name: str
    encode_gbps: float
    decode_gbps: float
    encode_over_copy: float
    decode_over_copy: float
    ratio: float
    rel_error: float


def make_delta(n: int, seed: int = 0) -> np.ndarray:
    """A model-delta-like tensor: Gaussian, with magnitudes varying from block to block
    (layers and rows differ in scale by orders of magnitude) and a few outliers."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n, dtype=np.float32)
    block = 4096
    scales = np.exp(rng.standard_normal(-(-n // block)) * 1.0).astype(np.float32) * 1e-3
    x *= np.repeat(scales, block)[:n]
    x[rng.integers(0, n, max(1, n // 100_000))] *= 30
    return x


class Timer:
    """Best-of-``repeats`` timing, with a plain copy timed before every measurement so
    that the copy reference sees the same machine conditions as the codecs."""

    def __init__(self, x: np.ndarray, repeats: int) -> None:
        self.x = x
        self.repeats = repeats
        self.copy_s = float("inf")

    def best(self, fn: Callable[[], object]) -> float:
        fn()  # warm up: first-call allocations, lazy tables
        best = float("inf")
        for _ in range(self.repeats):
            gc.collect()
            start = time.perf_counter()
            self.x.copy()
            self.copy_s = min(self.copy_s, time.perf_counter() - start)
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        return best


def rel_error(x: np.ndarray, y: np.ndarray) -> float:
    x64 = x.astype(np.float64)
    return float(np.linalg.norm(x64 - y.reshape(-1).astype(np.float64)) / np.linalg.norm(x64))


def measure_ours(x: np.ndarray, timer: Timer) -> list[tuple[str, float, float, float, float]]:
    """(name, encode s, decode s, ratio, rel_error) per codec."""
    out = []
    for name, options in CODECS:
        if name in ("fp32", "fp16"):
            codec = codecs.make(name)
        else:
            codec = codecs.make(name, seed=1, **options)
        decoder = codecs.get(name)
        enc = codec.encode(x)
        y = decoder.decode(enc.payload, x.shape, x.dtype, enc.params)
        t_enc = timer.best(lambda: codec.encode(x))
        t_dec = timer.best(lambda: decoder.decode(enc.payload, x.shape, x.dtype, enc.params))
        out.append((name, t_enc, t_dec, x.nbytes / len(enc.payload), rel_error(x, y)))
        print(f"  measured {name}", file=sys.stderr, flush=True)
    return out


def measure_hivemind(x: np.ndarray, timer: Timer) -> list[tuple[str, float, float, float, float]]:
    """hivemind's fp16 and uniform 8-bit codecs through its public serialisation API."""
    try:
        from hivemind.compression import deserialize_torch_tensor, serialize_torch_tensor
        from hivemind.proto import runtime_pb2
    except Exception as e:  # noqa: BLE001 - any import failure means "not available here"
        print(f"  hivemind not available: {type(e).__name__}: {e}", file=sys.stderr)
        return []
    t = torch.from_numpy(x)
    out = []
    for label, kind in (("hivemind_fp16", "FLOAT16"), ("hivemind_uniform_8bit", "UNIFORM_8BIT")):
        ctype = getattr(runtime_pb2.CompressionType, kind)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's deprecation notice for quantize_per_tensor
            msg = serialize_torch_tensor(t, ctype)
            y = deserialize_torch_tensor(msg).numpy()
            t_enc = timer.best(lambda: serialize_torch_tensor(t, ctype))
            t_dec = timer.best(lambda: deserialize_torch_tensor(msg))
        out.append((label, t_enc, t_dec, x.nbytes / len(msg.buffer), rel_error(x, y)))
        print(f"  measured {label}", file=sys.stderr, flush=True)
    return out


def reference_topk(x: np.ndarray, timer: Timer) -> float:
    """Seconds for an exact ``torch.topk`` of 1 % by magnitude: what the sampled threshold
    replaces."""
    t = torch.from_numpy(x)
    k = max(1, x.size // 100)
    return timer.best(lambda: torch.topk(t.abs(), k, sorted=False))


def to_rows(measured: list[tuple[str, float, float, float, float]], nbytes: int, copy_s: float) -> list[Row]:
    return [Row(name, nbytes / te / 1e9, nbytes / td / 1e9, te / copy_s, td / copy_s, ratio, err)
            for name, te, td, ratio, err in measured]


def table(rows: list[Row]) -> str:
    lines = [f"{'codec':24s} {'enc GB/s':>9s} {'dec GB/s':>9s} {'enc/copy':>9s} {'dec/copy':>9s} "
             f"{'ratio':>8s} {'rel err':>9s}"]
    for r in rows:
        lines.append(f"{r.name:24s} {r.encode_gbps:9.2f} {r.decode_gbps:9.2f} {r.encode_over_copy:9.2f} "
                     f"{r.decode_over_copy:9.2f} {r.ratio:8.1f} {r.rel_error:9.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.codecs", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ELEMENTS:,} elements instead of "
                                                             f"{FULL_ELEMENTS:,}")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (best is kept)")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    n = QUICK_ELEMENTS if args.quick else FULL_ELEMENTS
    repeats = args.repeats or (5 if args.quick else 9)
    x = make_delta(n)
    timer = Timer(x, repeats)
    print(f"codecs on a {n:,}-element float32 delta ({x.nbytes / 1e6:.0f} MB), 1 thread, "
          f"best of {repeats}", file=sys.stderr)
    ours = measure_ours(x, timer)
    theirs = measure_hivemind(x, timer)
    exact_topk_s = reference_topk(x, timer)
    rows, hm_rows = to_rows(ours, x.nbytes, timer.copy_s), to_rows(theirs, x.nbytes, timer.copy_s)

    print(f"plain copy: {x.nbytes / timer.copy_s / 1e9:.2f} GB/s; exact torch.topk (1 %): "
          f"{x.nbytes / exact_topk_s / 1e9:.2f} GB/s")
    print(table(rows + hm_rows))
    result = {
        "elements": n,
        "threads": torch.get_num_threads(),
        "copy_gbps": x.nbytes / timer.copy_s / 1e9,
        "exact_topk_gbps": x.nbytes / exact_topk_s / 1e9,
        "codecs": [asdict(r) for r in rows],
        "hivemind": [asdict(r) for r in hm_rows],
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
