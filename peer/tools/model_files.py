"""Writing a downloaded model to disk: torch.save bytes or safetensors, always atomically.

`hearsay pull-model` uses this. The target is checked before anything is downloaded;
the file is written under a unique temporary name in the target's own directory,
fsynced and renamed over the target, so a failure at any point leaves the previous
file (or none) and no temporary behind.

safetensors is written here rather than through the ``safetensors`` package (a small,
fixed format, not worth a runtime dependency): an 8-byte little-endian header length,
a JSON header mapping each tensor name to its dtype, shape and byte range, padded with
spaces to a multiple of 8, then the tensors' little-endian bytes back to back.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

SUFFIXES = {"torch": ".pt", "safetensors": ".safetensors"}


class ModelFileError(Exception):
    """A model file that cannot be written where asked; one line for the user."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def target_path(output: str, fmt: str) -> Path:
    """The path to write: ``output`` itself, or ``output`` as an existing directory (the caller
    names the file in it). ``ModelFileError`` (exit code 2) when neither can work."""
    if fmt not in SUFFIXES:
        raise ModelFileError(f"unknown format {fmt!r}; one of {', '.join(SUFFIXES)}", exit_code=2)
    path = Path(output)
    if path.is_dir():
        return path
    parent = path.parent
    if not parent.exists():
        raise ModelFileError(f"directory {parent} does not exist (create it first, or pass an existing "
                             "directory)", exit_code=2)
    if not parent.is_dir():
        raise ModelFileError(f"{parent} is not a directory", exit_code=2)
    if path.exists() and not path.is_file():
        raise ModelFileError(f"{path} exists and is not a regular file", exit_code=2)
    return path


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` under ``path``, complete or not at all (previous content kept on failure)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as e:
        raise ModelFileError(f"cannot write in {path.parent}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a model file is not a secret
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise ModelFileError(f"cannot write {path}: {e.strerror or e}") from None


def convert(torch_bytes: bytes, fmt: str) -> bytes:
    """The model as ``fmt``: the downloaded torch.save bytes as they are, or safetensors."""
    if fmt == "torch":
        return torch_bytes
    import torch

    state = torch.load(io.BytesIO(torch_bytes), map_location="cpu", weights_only=True)
    return safetensors_bytes(state)


_DTYPES: dict[str, str] = {
    "torch.float64": "F64", "torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16",
    "torch.int64": "I64", "torch.int32": "I32", "torch.int16": "I16", "torch.int8": "I8",
    "torch.uint8": "U8", "torch.bool": "BOOL",
}


def safetensors_bytes(state: dict[str, Any], metadata: dict[str, str] | None = None) -> bytes:
    """``state`` (name -> torch tensor) in the safetensors format."""
    import torch

    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        dtype = _DTYPES.get(str(tensor.dtype))
        if dtype is None:
            raise ModelFileError(f"tensor {name!r} has dtype {tensor.dtype}, which safetensors cannot hold")
        # bytes through a same-width integer view: numpy has no bfloat16
        raw = tensor.view(torch.int16).numpy().tobytes() if tensor.dtype == torch.bfloat16 else \
            tensor.numpy().astype(tensor.numpy().dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtype, "shape": list(tensor.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)
