"""Data set specs: built-in sets, files on disk, or a user factory named by import path.

``digits``            scikit-learn's 8x8 digits (bundled, no download)
``fashion-mnist``     Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (or ``data_path``)
``idx:DIR``           the four MNIST-style IDX files in DIR (gzipped or not)
``npz:FILE``          arrays x_train, y_train, x_test, y_test (or train_x, ...) of an .npz
``module:factory``    ``factory(seed=..., **dataset_args)`` returning a ``Dataset``
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from peer.data.dataset import Dataset, DatasetError
from peer.data.files import load_idx_dir, load_npz
from peer.runtime.plugins import load_factory

if TYPE_CHECKING:
    from peer.runtime.config import PeerConfig

# Where Debian's dataset-fashion-mnist package puts the gzip IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# Options (dataset_arg KEY=VALUE) the built-in and file specs understand.
BUILTIN_OPTIONS = {"limit": "use a seeded random subset of this many training samples"}
BUILTIN_SPECS = ("digits", "fashion-mnist", "idx:DIR", "npz:FILE", "module:factory")


def digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 real images, bundled, no download).

    The test split is stratified and fixed by ``seed``, so every peer evaluates on
    the same held-out images and none of them trains on those.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]  # (n, 1, 8, 8), values in [0, 1]
    y = bunch.target.astype(np.int64)
    tr_x, te_x, tr_y, te_y = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return Dataset("digits", tr_x, tr_y, te_x, te_y, num_classes=10)


def parse_dataset_args(items: Sequence[str]) -> dict[str, str]:
    """``["key=value", ...]`` as a dict; ``DatasetError`` for an item without ``=``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DatasetError(f"dataset_arg: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _limit(ds: Dataset, options: Mapping[str, str], seed: int) -> Dataset:
    unknown = sorted(set(options) - set(BUILTIN_OPTIONS))
    if unknown:
        known = "; ".join(f"{k}: {v}" for k, v in BUILTIN_OPTIONS.items())
        raise DatasetError(f"data set {ds.name!r} takes no option {', '.join(unknown)} (it takes {known})")
    if "limit" not in options:
        return ds
    try:
        limit = int(options["limit"])
    except ValueError:
        raise DatasetError(f"data set {ds.name!r}: limit={options['limit']!r} is not a whole number") from None
    if not 0 < limit <= len(ds.train_y):
        raise DatasetError(f"data set {ds.name!r}: limit must be in 1..{len(ds.train_y)}, got {limit}")
    keep = np.sort(np.random.default_rng(seed).choice(len(ds.train_y), size=limit, replace=False))
    return Dataset(ds.name, ds.train_x[keep], ds.train_y[keep], ds.test_x, ds.test_y, ds.num_classes)


def _file_argument(spec: str, path: str) -> Path:
    given = spec.partition(":")[2] or path
    if not given:
        raise DatasetError(f"data set {spec!r}: name the {'directory' if spec.startswith('idx') else 'file'} "
                           f"after the colon")
    return Path(given).expanduser()


def _plugin(spec: str, seed: int, options: Mapping[str, str]) -> Dataset:
    factory = load_factory(spec, what="data set")
    kwargs = {"seed": seed, **options}
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as e:
        raise DatasetError(f"data set {spec!r} cannot take {', '.join(sorted(kwargs))}: {e}") from None
    except ValueError:  # no signature to check (a builtin): let the call decide
        pass
    try:
        ds = factory(**kwargs)
    except DatasetError:
        raise
    except Exception as e:  # noqa: BLE001 - user code: report it in one line
        raise DatasetError(f"data set {spec!r} failed: {type(e).__name__}: {e}") from e
    if not isinstance(ds, Dataset):
        raise DatasetError(f"data set {spec!r} returned {type(ds).__name__}, not peer.data.Dataset")
    return ds


def load_dataset(spec: str, seed: int = 0, *, path: str = "", args: Mapping[str, str] | None = None,
                 cache_dir: str = "") -> Dataset:
    """The data set ``spec`` names (see the module docstring).

    ``path`` is the directory of ``fashion-mnist`` (and is passed to a plug-in as
    ``path=``); ``args`` are the user's ``dataset_arg`` options; ``cache_dir`` holds
    decoded files (default ``~/.cache/hearsay/datasets``). Every failure is a one-line
    ``DatasetError``.
    """
    options = dict(args or {})
    cache = Path(cache_dir).expanduser() if cache_dir else None
    if spec == "digits":
        ds = digits(seed)
    elif spec == "fashion-mnist":
        directory = Path(path).expanduser() if path else FASHION_MNIST_DIR
        if not directory.is_dir():
            hint = "" if path else " (install Debian's dataset-fashion-mnist package, or pass --data-path DIR)"
            raise DatasetError(f"data set 'fashion-mnist': {directory} not found{hint}")
        ds = load_idx_dir(directory, "fashion-mnist", cache)
    elif spec.startswith("idx:"):
        ds = load_idx_dir(_file_argument(spec, path), spec, cache)
    elif spec.startswith("npz:"):
        ds = load_npz(_file_argument(spec, path), spec, cache)
    else:
        if ":" not in spec:
            raise DatasetError(f"data set {spec!r}: expected one of {', '.join(BUILTIN_SPECS)}")
        return _plugin(spec, seed, {**({"path": path} if path else {}), **options}).check()
    return _limit(ds, options, seed).check()


def dataset_from_config(config: PeerConfig) -> Dataset:
    """The data set a peer's options name (dataset, data_path, dataset_arg, data_cache, data_seed)."""
    return load_dataset(config.dataset, seed=config.data_seed, path=config.data_path,
                        args=parse_dataset_args(config.dataset_arg), cache_dir=config.data_cache)
