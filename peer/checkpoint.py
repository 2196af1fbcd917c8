"""Atomic, checksummed checkpoints in a peer's data directory, and resuming from them.

File layout: ``MAGIC | sha256(payload) | len(payload) as u64 LE | payload`` where the
payload is ``torch.save`` of a plain dict (tensors, numbers, strings, lists). A file is
written to a temporary name, fsynced, renamed into place and the directory fsynced,
so a crash at any moment leaves either the previous set of checkpoints or the
previous set plus one complete new file — never a partial file under a final name.
Resume walks the files newest first and takes the first whose checksum holds.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

MAGIC = b"HEARSAY-CKPT\x01"
_LEN = struct.Struct("<Q")
_NAME = re.compile(r"^ckpt-(\d{8})\.hsck$")
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
    """(sequence number, path) of every final-named checkpoint, newest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


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
    """Write ``state`` as the next checkpoint atomically; keep the newest ``keep`` files."""
    directory.mkdir(parents=True, exist_ok=True)
    existing = checkpoints(directory)
    seq = existing[0][0] + 1 if existing else 1
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
    for _, old in existing[max(keep - 1, 0):]:
        old.unlink(missing_ok=True)
    return Saved(final, seq, len(blob), hashlib.sha256(blob[len(MAGIC) + 32 + _LEN.size:]).hexdigest())


def load_latest(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that passes every check, skipping (and logging) bad ones."""
    for _, path in checkpoints(directory):
        try:
            return path, decode(path.read_bytes())
        except (OSError, CheckpointError) as e:
            log.warning("skipping checkpoint %s: %s", path.name, e)
    return None


def remove_temporaries(directory: Path) -> int:
    """Delete leftovers of writes that a crash interrupted; returns how many."""
    if not directory.is_dir():
        return 0
    count = 0
    for p in directory.iterdir():
        if p.name.startswith(TMP_PREFIX):
            p.unlink(missing_ok=True)
            count += 1
    return count
