"""Checkpoint files: atomic, checksummed, newest valid one wins, partial writes ignored."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from peer import checkpoint
from peer.checkpoint import CheckpointError


def state(step: int) -> dict:
    return {"format": 1, "trainer": {"steps": step, "w": torch.full((64,), float(step))}, "members": []}


def test_round_trip_and_newest_first(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, state(step), keep=5)
    path, loaded = checkpoint.load_latest(tmp_path)
    assert path.name == "ckpt-00000003.hsck" and loaded["trainer"]["steps"] == 3
    assert torch.equal(loaded["trainer"]["w"], torch.full((64,), 3.0))


def test_only_the_newest_keep_files_remain(tmp_path: Path) -> None:
    for step in range(6):
        checkpoint.save(tmp_path, state(step), keep=2)
    assert [seq for seq, _ in checkpoint.checkpoints(tmp_path)] == [6, 5]


@pytest.mark.parametrize("damage", ["truncate", "flip", "magic", "empty"])
def test_a_damaged_newest_file_is_skipped_for_the_previous_one(tmp_path: Path, damage: str) -> None:
    checkpoint.save(tmp_path, state(1))
    newest = checkpoint.save(tmp_path, state(2)).path
    blob = bytearray(newest.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "flip":
        blob[-10] ^= 0xFF
    elif damage == "magic":
        blob[:4] = b"XXXX"
    else:
        blob = bytearray()
    newest.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError):
        checkpoint.decode(bytes(blob))
    _, loaded = checkpoint.load_latest(tmp_path)
    assert loaded["trainer"]["steps"] == 1


def test_temporaries_are_never_loaded_and_are_cleaned_up(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, state(1))
    partial = tmp_path / f"{checkpoint.TMP_PREFIX}00000002-123"
    partial.write_bytes(checkpoint.encode(state(2))[:100])
    assert checkpoint.load_latest(tmp_path)[1]["trainer"]["steps"] == 1
    assert checkpoint.remove_temporaries(tmp_path) == 1 and not partial.exists()


def test_no_directory_or_no_checkpoint_gives_none(tmp_path: Path) -> None:
    assert checkpoint.load_latest(tmp_path / "missing") is None
    assert checkpoint.load_latest(tmp_path) is None
