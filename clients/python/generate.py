#!/usr/bin/env python3
"""Regenerates authgate_client/_proto from the repository's proto/ directory.

Usage: python3 generate.py [--proto-dir DIR] [--out DIR]

The output is committed, so users of the package need no grpcio-tools. Run
this after changing a .proto file, with the grpcio-tools version pinned in
requirements-test.txt (the generated code names that version, and the tests
compare a fresh generation with the committed one byte for byte).
"""

import argparse
import os
import pathlib
import re
import shutil
import sys
import tempfile

import grpc_tools
from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent
PROTO_DIR = HERE.parent.parent / "proto"
OUT_DIR = HERE / "authgate_client" / "_proto"
PACKAGE = "authgate_client._proto"

# protoc writes imports as if the proto root were on sys.path; inside the
# package they must go through it, or `import authgate` would be needed.
_PROTO_IMPORT = re.compile(r"^from authgate\.", re.MULTILINE)


def generate(proto_dir: pathlib.Path, out_dir: pathlib.Path) -> None:
    proto_dir = proto_dir.resolve()
    protos = sorted(str(p) for p in proto_dir.rglob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {proto_dir}")
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    with tempfile.TemporaryDirectory() as raw:
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{proto_dir}",
                f"-I{well_known}",
                f"--python_out={raw}",
                f"--pyi_out={raw}",
                f"--grpc_python_out={raw}",
                *protos,
            ]
        )
        if status != 0:
            raise SystemExit(f"protoc failed with status {status}")
        # Replaced whole, so stubs of a deleted .proto do not linger.
        if out_dir.exists():
            shutil.rmtree(out_dir)
        for src in sorted(pathlib.Path(raw).rglob("*")):
            if not src.is_file():
                continue
            dst = out_dir / src.relative_to(raw)
            dst.parent.mkdir(parents=True, exist_ok=True)
            text = src.read_bytes().decode("utf-8")
            dst.write_bytes(_PROTO_IMPORT.sub(f"from {PACKAGE}.authgate.", text).encode("utf-8"))
    for directory in [out_dir, *sorted(p for p in out_dir.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").write_bytes(b"")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto-dir", type=pathlib.Path, default=PROTO_DIR)
    parser.add_argument("--out", type=pathlib.Path, default=OUT_DIR)
    args = parser.parse_args()
    generate(args.proto_dir, args.out)
    print(f"generated {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
