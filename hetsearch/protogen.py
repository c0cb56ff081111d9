"""Regenerate the protobuf/gRPC modules from ``proto/``.

    python -m hetsearch.protogen        # from the repository root

Runs ``grpc_tools.protoc -I proto --python_out=. --grpc_python_out=. --pyi_out=.``
so ``proto/hetsearch/v1/gallery.proto`` becomes ``hetsearch/v1/gallery_pb2.py``,
``gallery_pb2_grpc.py`` and ``gallery_pb2.pyi``. The generated files are
committed: installs (the SDK in particular) never need grpcio-tools.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import require

PROTOS = ("hetsearch/v1/gallery.proto",)


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def generate(root: Path | None = None) -> list[Path]:
    root = Path(root or repo_root())
    require("grpc_tools", "dev", "regenerating the protobuf modules")
    from grpc_tools import protoc

    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    outputs = []
    for proto in PROTOS:
        args = [
            "grpc_tools.protoc",
            f"-I{root / 'proto'}",
            f"-I{include}",
            f"--python_out={root}",
            f"--grpc_python_out={root}",
            f"--pyi_out={root}",
            str(root / "proto" / proto),
        ]
        rc = protoc.main(args)
        if rc != 0:
            raise SystemExit(f"protoc failed on {proto} (exit {rc})")
        stem = root / proto[: -len(".proto")]
        outputs += [stem.with_name(stem.name + s) for s in ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")]
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hetsearch.protogen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="repository root (default: the one holding this package)")
    args = parser.parse_args(argv)
    for path in generate(Path(args.root) if args.root else None):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
