"""Atomic, checksummed checkpoints in a peer's data directory, and resuming from them.

File layout: ``MAGIC | sha256(payload) | len(payload) as u64 LE | payload`` where the
payload is ``torch.save`` of a plain dict (tensors, numbers, strings, lists). A file is
written to a temporary name, fsynced, renamed into place and the directory fsynced,
so a crash at any moment leaves either the previous set of checkpoints or the
previous set plus one complete new file — never a partial file under a final name.
Resume walks the files newest first and takes the first whose checksum holds.

The directory may hold things we did not write. A name is a checkpoint's when it is
``ckpt-<digits>.hsck``, the digits read as an integer of any width (they are written
8 wide, but a sequence past 99999999 must still be found). Only regular files are
read, opened without blocking (a FIFO under a checkpoint's name must not hang the
start), and anything else under such a name is skipped, logged once, never removed.
The next sequence number follows the highest checkpoint whose header is valid, and
steps over names already taken, so junk under a large number cannot derail it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

MAGIC = b"HEARSAY-CKPT\x01"
_LEN = struct.Struct("<Q")
_NAME = re.compile(r"^ckpt-([0-9]{1,200})\.hsck$")
TMP_PREFIX = ".tmp-ckpt-"


class CheckpointError(Exception):
    """A checkpoint file that cannot be used (truncated, corrupt, wrong format)."""


@dataclass(frozen=True)
class Saved:
    path: Path
    seq: int
    size_bytes: int
    sha256: str


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(sequence number, path) of every entry named like a checkpoint, newest first
    (whatever it is: readers check it is a regular file)."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), directory / e.name) for e in os.scandir(directory) if (m := _NAME.match(e.name))]
    return sorted(found, reverse=True)


_reported: set[str] = set()  # entries already logged: one line per foreign entry and process


def _skip(path: Path, reason: str) -> None:
    if str(path) not in _reported:
        _reported.add(str(path))
        log.warning("skipping %s in the data directory: %s", path.name, reason)


def _read(path: Path, limit: int | None = None) -> tuple[bytes, int]:
    """The bytes of the regular file ``path`` (the first ``limit``) and its size, opened
    without blocking; ``CheckpointError`` for anything that is not a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError("not a regular file")
        size = info.st_size if limit is None else min(limit, info.st_size)
        chunks, left = [], size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks), info.st_size
    finally:
        os.close(fd)


def _head_ok(path: Path) -> bool:
    """Whether ``path`` is a regular file whose header is ours and whose size matches it (no
    checksum: cheap enough to run over the whole directory at every save)."""
    head = len(MAGIC) + 32 + _LEN.size
    try:
        blob, size = _read(path, head)
    except OSError as e:
        _skip(path, e.strerror or str(e))
        return False
    except CheckpointError as e:
        _skip(path, str(e))
        return False
    if len(blob) < head or not blob.startswith(MAGIC) or _LEN.unpack_from(blob, len(MAGIC) + 32)[0] != size - head:
        _skip(path, "not a complete hearsay checkpoint")
        return False
    return True


def encode(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    return MAGIC + hashlib.sha256(payload).digest() + _LEN.pack(len(payload)) + payload


def decode(blob: bytes) -> dict[str, Any]:
    """The state stored in ``blob``; ``CheckpointError`` unless every check passes."""
    head = len(MAGIC) + 32 + _LEN.size
    if len(blob) < head or not blob.startswith(MAGIC):
        raise CheckpointError("not a hearsay checkpoint (bad magic or too short)")
    digest = blob[len(MAGIC):len(MAGIC) + 32]
    (length,) = _LEN.unpack_from(blob, len(MAGIC) + 32)
    payload = blob[head:]
    if len(payload) != length:
        raise CheckpointError(f"truncated: {len(payload)} of {length} payload bytes")
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError("checksum mismatch")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise CheckpointError(f"unreadable payload: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict):
        raise CheckpointError("payload is not a dict")
    return state


def save(directory: Path, state: dict[str, Any], keep: int = 3) -> Saved:
    """Write ``state`` as the next checkpoint atomically; keep the newest ``keep`` valid files."""
    directory.mkdir(parents=True, exist_ok=True)
    entries = checkpoints(directory)
    valid = [(seq, path) for seq, path in entries if _head_ok(path)]
    taken = {seq for seq, _ in entries}
    seq = valid[0][0] + 1 if valid else 1
    while seq in taken:  # a foreign entry holds that name: never replace it, take the next
        seq += 1
    final = directory / f"ckpt-{seq:08d}.hsck"
    tmp = directory / f"{TMP_PREFIX}{seq:08d}-{os.getpid()}"
    # The temporary exists for the whole save (serialising included), so a crash at any
    # point of it leaves a recognisable leftover and never a file under a final name.
    with open(tmp, "wb") as f:
        blob = encode(state)
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(directory)
    for _, old in valid[max(keep - 1, 0):]:  # only our own files: foreign entries are left alone
        old.unlink(missing_ok=True)
    return Saved(final, seq, len(blob), hashlib.sha256(blob[len(MAGIC) + 32 + _LEN.size:]).hexdigest())


def load_latest(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that passes every check, skipping (and logging) bad ones."""
    for _, path in checkpoints(directory):
        try:
            return path, decode(_read(path)[0])
        except (OSError, CheckpointError) as e:
            _skip(path, e.strerror if isinstance(e, OSError) and e.strerror else str(e))
    return None


def remove_temporaries(directory: Path) -> int:
    """Delete leftovers of writes that a crash interrupted; returns how many."""
    if not directory.is_dir():
        return 0
    count = 0
    for p in directory.iterdir():
        if p.name.startswith(TMP_PREFIX):
            if p.is_dir() and not p.is_symlink():
                _skip(p, "a directory named like a temporary checkpoint")
                continue
            p.unlink(missing_ok=True)
            count += 1
    return count
