"""Regenerate the Python stubs for proto/hearsay/v1/*.proto next to the .proto files.

    python proto/generate.py            # write the stubs into proto/
    python proto/generate.py --out DIR  # write them elsewhere (the drift test compares)

The output depends only on the .proto files and the pinned grpcio-tools version
(pyproject's dev extra), so the committed stubs can be checked byte for byte.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "hearsay" / "v1").glob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) on every .proto file; return the files written."""
    from grpc_tools import protoc

    import grpc_tools

    out.mkdir(parents=True, exist_ok=True)
    include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    rel = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}",
            f"--pyi_out={out}", f"--grpc_python_out={out}", *rel]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    for pkg in (out / "hearsay", out / "hearsay" / "v1"):
        init = pkg / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated gRPC stubs for the hearsay wire contract (proto/generate.py)."""\n')
        written.append(init)
    written += sorted((out / "hearsay" / "v1").glob("*_pb2*.py*"))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_ROOT)
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
