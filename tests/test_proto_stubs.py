"""The committed gRPC stubs are exactly what proto/generate.py makes from the .proto files."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "proto" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["proto_generate"] = module
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_freshly_generated_ones(tmp_path: Path) -> None:
    generate = _generator()
    written = generate.generate(tmp_path)
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in written}
    assert any(str(p).endswith("gossip_pb2_grpc.py") for p in fresh)
    assert any(str(p).endswith("admin_pb2_grpc.py") for p in fresh)
    for rel, content in fresh.items():
        committed = ROOT / "proto" / rel
        assert committed.exists(), f"{rel} is generated but not committed: run python proto/generate.py"
        assert committed.read_bytes() == content, f"{rel} drifted from the .proto files: run python proto/generate.py"
    committed_stubs = {p.relative_to(ROOT / "proto") for p in (ROOT / "proto").rglob("*_pb2*.py*")}
    assert committed_stubs == {p for p in fresh if "_pb2" in p.name}, "stale stubs without a .proto file"


def test_every_proto_file_has_its_stubs() -> None:
    for proto in (ROOT / "proto" / "hearsay" / "v1").glob("*.proto"):
        for suffix in ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi"):
            assert (proto.parent / (proto.stem + suffix)).exists(), f"{proto.name}: missing {suffix}"
