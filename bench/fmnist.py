"""Fashion-MNIST for the learning benchmarks: the daemon's own ``fashion-mnist`` data set
(Debian's ``dataset-fashion-mnist``, decoded once into the memory-mapped cache) with a
seeded training subsample (``limit=``, as ``--dataset-arg limit=N``) and a seeded test
subsample, so runs on 2 cores stay short.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from peer.data import Dataset, load_dataset


def load(seed: int = 0, limit: int = 12_000, test_limit: int = 2_000, path: str = "") -> Dataset:
    """``limit`` training and ``test_limit`` test images drawn without replacement (seeded)."""
    ds = load_dataset("fashion-mnist", seed=seed, path=path, args={"limit": str(limit)})
    te = np.sort(np.random.default_rng(seed).choice(len(ds.test_y), size=min(test_limit, len(ds.test_y)),
                                                    replace=False))
    return replace(ds, test_x=np.asarray(ds.test_x[te]), test_y=np.asarray(ds.test_y[te])).check()
