"""Data sets from files: IDX directories (MNIST, Fashion-MNIST) and ``.npz`` archives.

Images become float32 in ``[0, 1]`` shaped ``(n, channels, height, width)``; labels
become int64. Decoded arrays live in the memory-mapped per-machine cache
(``peer.data.cache``), so only the first peer on a machine pays for gunzip.
"""

from __future__ import annotations

import gzip
import zlib
import zipfile
from pathlib import Path

import numpy as np

from peer.data.cache import cached_array
from peer.data.dataset import Dataset, DatasetError

# The standard MNIST/Fashion-MNIST file names, each also accepted gzipped.
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
# IDX type codes (the third byte of the magic number); multi-byte types are big-endian.
IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
# Keras' mnist.npz names, and the names peer.data.Dataset uses.
NPZ_KEYS = (("x_train", "y_train", "x_test", "y_test"), ("train_x", "train_y", "test_x", "test_y"))


def parse_idx(raw: bytes, name: str) -> np.ndarray:
    """The array in an (uncompressed) IDX file; ``DatasetError`` naming the file if malformed."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES or raw[3] == 0:
        raise DatasetError(f"{name}: not an IDX file (bad magic number)")
    dtype, ndim = IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{name}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DatasetError(f"{name}: IDX header declares shape {shape} ({expected} bytes) but the file "
                           f"holds {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def read_idx(path: Path) -> np.ndarray:
    """Read and decode one IDX file, gunzipping ``*.gz``."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"{path}: cannot read ({type(e).__name__}: {e}); the file is damaged") from None
    return parse_idx(raw, str(path))


def as_images(x: np.ndarray, name: str) -> np.ndarray:
    """float32 inputs; integer pixels scaled to ``[0, 1]``; ``(n, h, w)`` gains a channel axis,
    and channel-last ``(n, h, w, c)`` (c in 1, 3, 4) becomes channel-first."""
    if x.ndim < 2:
        raise DatasetError(f"{name}: inputs need at least 2 dimensions (samples, features), got shape {x.shape}")
    if np.issubdtype(x.dtype, np.integer):
        scale = 255.0 if x.dtype.itemsize == 1 else float(max(1, int(np.abs(x).max())))
        x = x.astype(np.float32) / np.float32(scale)
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    else:
        raise DatasetError(f"{name}: inputs of type {x.dtype} are not numbers")
    if x.ndim == 3:
        x = x[:, None, :, :]
    elif x.ndim == 4 and x.shape[3] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


def as_labels(y: np.ndarray, name: str) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{name}: labels must be one integer per sample, got {y.dtype} of shape {y.shape}")
    return y.astype(np.int64)


def _idx_file(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"{directory / stem}[.gz] not found")


def load_idx_dir(directory: Path, name: str, cache_dir: Path | None = None) -> Dataset:
    """The four standard IDX files of ``directory`` (train/t10k images and labels)."""
    if not directory.is_dir():
        raise DatasetError(f"data set {name!r}: {directory} is not a directory")
    arrays: dict[str, np.ndarray] = {}
    for part, stem in IDX_FILES.items():
        path = _idx_file(directory, stem)
        convert = as_images if part.endswith("_x") else as_labels
        arrays[part] = cached_array(path, "idx", lambda p=path, c=convert: c(read_idx(p), str(p)), cache_dir)
    return _assemble(name, arrays)


def load_npz(path: Path, name: str, cache_dir: Path | None = None) -> Dataset:
    """An ``.npz`` with ``x_train, y_train, x_test, y_test`` (Keras) or ``train_x, ...`` arrays."""
    if not path.is_file():
        raise DatasetError(f"data set {name!r}: {path} not found")
    try:
        with np.load(path, allow_pickle=False) as archive:
            present = set(archive.files)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DatasetError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from None
    keys = next((k for k in NPZ_KEYS if set(k) <= present), None)
    if keys is None:
        raise DatasetError(f"{path}: needs arrays {', '.join(NPZ_KEYS[0])} (or {', '.join(NPZ_KEYS[1])}); "
                           f"it has {', '.join(sorted(present)) or 'none'}")

    def member(key: str, part: str) -> np.ndarray:
        def decode() -> np.ndarray:
            try:
                with np.load(path, allow_pickle=False) as archive:
                    raw = archive[key]
            except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as e:
                raise DatasetError(f"{path}: array {key!r} is damaged ({type(e).__name__}: {e})") from None
            return (as_images if part.endswith("_x") else as_labels)(raw, f"{path}:{key}")
        return cached_array(path, key, decode, cache_dir)

    return _assemble(name, {part: member(key, part) for key, part in zip(keys, IDX_FILES)})


def _assemble(name: str, arrays: dict[str, np.ndarray]) -> Dataset:
    for part in ("train", "test"):
        x, y = arrays[f"{part}_x"], arrays[f"{part}_y"]
        if len(x) == 0:
            raise DatasetError(f"data set {name!r}: the {part} set is empty")
        if len(x) != len(y):
            raise DatasetError(f"data set {name!r}: {part} has {len(x)} inputs but {len(y)} labels")
    num_classes = int(max(arrays["train_y"].max(), arrays["test_y"].max())) + 1
    return Dataset(name, arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"],
                   num_classes=num_classes)
