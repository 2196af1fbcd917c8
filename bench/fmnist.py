"""A small Fashion-MNIST loader for the learning benchmarks (a stand-in until the daemon's
``fashion-mnist`` data set spec lands): reads Debian's ``dataset-fashion-mnist`` gzip IDX
files and keeps a seeded stratified-by-chance subsample, so runs on 2 cores stay short.

    python -m bench.learning --dataset bench.fmnist:load
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from peer.data import Dataset

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")


def _idx(path: Path) -> np.ndarray:
    """An IDX array (unsigned bytes) from a gzip file."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(seed: int = 0, limit: int = 12_000, test_limit: int = 2_000, path: str | Path = DEFAULT_DIR) -> Dataset:
    """``limit`` training and ``test_limit`` test images drawn without replacement (seeded)."""
    root = Path(path)
    tr_x, tr_y = _idx(root / "train-images-idx3-ubyte.gz"), _idx(root / "train-labels-idx1-ubyte.gz")
    te_x, te_y = _idx(root / "t10k-images-idx3-ubyte.gz"), _idx(root / "t10k-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(seed)
    tr = np.sort(rng.choice(len(tr_y), size=min(limit, len(tr_y)), replace=False))
    te = np.sort(rng.choice(len(te_y), size=min(test_limit, len(te_y)), replace=False))

    def images(x: np.ndarray) -> np.ndarray:
        return (x.astype(np.float32) / 255.0)[:, None, :, :]

    return Dataset("fashion-mnist", images(tr_x[tr]), tr_y[tr].astype(np.int64), images(te_x[te]),
                   te_y[te].astype(np.int64), num_classes=10).check()
