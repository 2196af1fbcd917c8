"""A per-machine cache of decoded arrays, memory-mapped so peers on one machine share it.

Decoding Fashion-MNIST's gzip IDX files takes seconds of CPU, and a float32 copy of
the 60k training images is 188 MB. Decoding once into an ``.npy`` file and mapping it
read-only lets eight peers started together share one copy in the page cache and start
in well under a second each.

Entries are keyed by the source file's identity (resolved path, device, inode, size,
modification time) and the decoding's format version, so an edited or replaced source
is decoded again and never served stale. Writing is atomic (a private temporary file,
fsync, ``os.replace``): a reader sees a whole entry or none. Peers that start together
serialise on a lock file, so one decodes and the others wait and map its result.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Bump when what a decoder produces changes (dtype, scaling, layout): old entries stop matching.
FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/hearsay/datasets``, else ``~/.cache/hearsay/datasets``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hearsay" / "datasets"


def source_key(source: Path, member: str) -> str:
    """A name for ``member`` decoded from ``source`` that changes whenever the file does."""
    st = source.stat()
    identity = f"{FORMAT_VERSION}|{source.resolve()}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{member}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:20]
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{source.name}-{member}")
    return f"{stem}-{digest}.npy"


def _load(path: Path) -> np.ndarray | None:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:  # cannot happen through os.replace, but a disk can lie
        log.warning("data cache entry %s is unreadable (%s); decoding again", path, e)
        return None


def _write_atomically(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_array(source: Path, member: str, decode: Callable[[], np.ndarray],
                 cache_dir: Path | None = None) -> np.ndarray:
    """``decode()``'s result for ``member`` of ``source``, from the cache when it holds it.

    The result is a read-only memory map. Without a writable cache directory the array
    is decoded in memory (and a warning says why), so a read-only home still works.
    """
    directory = cache_dir or default_cache_dir()
    path = directory / source_key(source, member)
    cached = _load(path)
    if cached is not None:
        return cached
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_name(path.name + ".lock"), "a+b")  # noqa: SIM115 - held across the decode
    except OSError as e:
        log.warning("data cache %s not writable (%s); decoding %s in memory", directory, e.strerror or e, source.name)
        return decode()
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        cached = _load(path)  # another peer may have written it while we waited
        if cached is not None:
            return cached
        array = decode()
        try:
            _write_atomically(path, array)
        except OSError as e:
            log.warning("cannot write data cache %s (%s); using the decoded copy", path, e.strerror or e)
            return array
        log.info("decoded %s (%s) into the data cache %s", source.name, member, path)
    mapped = _load(path)
    return mapped if mapped is not None else array
