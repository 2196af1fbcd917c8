"""Model files written by `hearsay pull-model`: atomic, in the format asked for, readable by the real library."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors

from peer.tools.model_files import ModelFileError, convert, safetensors_bytes, target_path, write_atomically


def test_safetensors_written_here_is_read_back_exactly_by_the_safetensors_library() -> None:
    torch.manual_seed(0)
    state = {"net.1.weight": torch.randn(128, 64), "net.1.bias": torch.randn(128),
             "half": torch.randn(3, 5).half(), "bf16": torch.randn(7).bfloat16(), "steps": torch.tensor(41),
             "mask": torch.tensor([True, False, True]), "bytes": torch.arange(5, dtype=torch.uint8),
             "empty": torch.zeros(0, 4), "transposed": torch.randn(4, 6).t()}
    loaded = load_safetensors(safetensors_bytes(state))
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name


def test_convert_turns_torch_save_bytes_into_safetensors() -> None:
    state = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4)}
    buf = io.BytesIO()
    torch.save(state, buf)
    assert convert(buf.getvalue(), "torch") == buf.getvalue()
    assert torch.equal(load_safetensors(convert(buf.getvalue(), "safetensors"))["w"], state["w"])


def test_targets_are_checked_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist") as e:
        target_path(str(tmp_path / "missing" / "m.pt"), "torch")
    assert e.value.exit_code == 2
    (tmp_path / "plain").write_text("x")
    with pytest.raises(ModelFileError, match="is not a directory"):
        target_path(str(tmp_path / "plain" / "m.pt"), "torch")
    assert target_path(str(tmp_path), "torch") == tmp_path  # a directory: the caller names the file
    assert target_path(str(tmp_path / "m.pt"), "safetensors") == tmp_path / "m.pt"


def test_writes_replace_atomically_and_leave_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    write_atomically(out, b"first")
    write_atomically(out, b"second")
    assert out.read_bytes() == b"second" and os.listdir(tmp_path) == ["m.pt"]
    (tmp_path / "sub").mkdir()
    with pytest.raises(ModelFileError, match="cannot write"):  # a directory in the way of the rename
        write_atomically(tmp_path / "sub", b"x")
    assert sorted(os.listdir(tmp_path)) == ["m.pt", "sub"] and os.listdir(tmp_path / "sub") == []
