"""Checkpoint files: atomic, checksummed, newest valid one wins, partial writes ignored."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from peer.runtime import checkpoint
from peer.runtime.checkpoint import CheckpointError


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


def test_names_parse_as_integers_of_any_width(tmp_path: Path) -> None:
    wide = tmp_path / "ckpt-123456789012.hsck"
    wide.write_bytes(checkpoint.encode(state(7)))
    checkpoint.save(tmp_path, state(1), keep=5)  # ckpt-123456789013: after the widest valid one
    assert [seq for seq, _ in checkpoint.checkpoints(tmp_path)][:2] == [123456789013, 123456789012]
    path, loaded = checkpoint.load_latest(tmp_path)
    assert path.name == "ckpt-123456789013.hsck" and loaded["trainer"]["steps"] == 1


def test_junk_under_a_large_number_does_not_derail_the_sequence(tmp_path: Path, caplog) -> None:
    checkpoint.save(tmp_path, state(1))
    junk = tmp_path / "ckpt-99999999.hsck"
    junk.write_bytes(b"not a checkpoint")
    for step in (2, 3, 4, 5):
        checkpoint.save(tmp_path, state(step), keep=3)
    names = sorted(p.name for p in tmp_path.iterdir())
    # the sequence goes on from the highest valid checkpoint; the junk is left alone, never pruned
    assert names == ["ckpt-00000003.hsck", "ckpt-00000004.hsck", "ckpt-00000005.hsck", "ckpt-99999999.hsck"]
    path, loaded = checkpoint.load_latest(tmp_path)
    assert path.name == "ckpt-00000005.hsck" and loaded["trainer"]["steps"] == 5
    assert "ckpt-99999999.hsck" in caplog.text


def test_foreign_entries_under_checkpoint_names_are_skipped_and_logged(tmp_path: Path, caplog) -> None:
    checkpoint.save(tmp_path, state(1))
    (tmp_path / "ckpt-00000002.hsck").mkdir()  # a directory named like the next checkpoint
    os.mkfifo(tmp_path / "ckpt-00000009.hsck")  # a FIFO: opening it blocking would hang for good
    os.symlink("/dev/zero", tmp_path / "ckpt-00000008.hsck")
    (tmp_path / f"{checkpoint.TMP_PREFIX}dir").mkdir()
    for step in (2, 3, 4, 5):  # saving, and pruning old files, works around all of them
        checkpoint.save(tmp_path, state(step), keep=2)
    path, loaded = checkpoint.load_latest(tmp_path)
    assert loaded["trainer"]["steps"] == 5 and path.name == "ckpt-00000006.hsck"
    assert (tmp_path / "ckpt-00000002.hsck").is_dir() and stat.S_ISFIFO(os.stat(tmp_path / "ckpt-00000009.hsck").st_mode)
    assert checkpoint.remove_temporaries(tmp_path) == 0 and (tmp_path / f"{checkpoint.TMP_PREFIX}dir").is_dir()
    for name in ("ckpt-00000002.hsck", "ckpt-00000009.hsck", "ckpt-00000008.hsck"):
        assert name in caplog.text
    logged = [r for r in caplog.records if "ckpt-00000009.hsck" in r.getMessage()]
    assert len(logged) == 1  # once per entry, not at every save


def test_a_fifo_alone_does_not_block_the_load(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "ckpt-00000001.hsck")
    assert checkpoint.load_latest(tmp_path) is None  # returns at once instead of waiting for a writer
