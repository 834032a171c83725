"""Generate the Python modules of service/grpc_v2/proto/inference.proto (run after editing the .proto).

    python scripts/generate_grpc_stubs.py          # rewrite service/grpc_v2/inference_pb2{.py,.pyi,_grpc.py}
    python scripts/generate_grpc_stubs.py --check  # exit 1 when the committed modules are not what it generates

The modules are committed so the runtime image needs grpcio and protobuf but not grpcio-tools; the --check
run in the test suite keeps them in step with the .proto. grpcio-tools is pinned in the dev dependencies
because its version is written into the generated code.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "service" / "grpc_v2"
PROTO = PACKAGE / "proto" / "inference.proto"
MODULES = ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")
# protoc writes a top-level import; the modules live in a package.
BARE_IMPORT = "import inference_pb2 as inference__pb2"
PACKAGE_IMPORT = "from bnfold.service.grpc_v2 import inference_pb2 as inference__pb2"
# The messages go into a pool of their own, not protobuf's default pool: tritonclient registers the same
# protocol (package `inference`) in the default pool, and two files defining `inference.ModelInferRequest` in
# one pool refuse to load together (a process that serves and also runs tritonclient, like the tests).
DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
OWN_POOL = "POOL = _descriptor_pool.DescriptorPool()\nDESCRIPTOR = POOL.AddSerializedFile("


def generate(out: Path) -> None:
    """Run protoc (from grpcio-tools) on the .proto into `out`."""
    from grpc_tools import protoc

    arguments = [
        "protoc",
        f"-I{PROTO.parent}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO),
    ]
    if protoc.main(arguments) != 0:
        raise SystemExit(f"protoc failed on {PROTO}")
    _replace_once(out / "inference_pb2.py", DEFAULT_POOL, OWN_POOL)
    _replace_once(out / "inference_pb2_grpc.py", BARE_IMPORT, PACKAGE_IMPORT)


def _replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    if text.count(old) != 1:
        raise SystemExit(f"{path.name}: expected one {old!r} in protoc's output; update this script")
    path.write_text(text.replace(old, new))


def stale_modules() -> list[str]:
    """Names of committed modules that differ from freshly generated ones."""
    with tempfile.TemporaryDirectory() as scratch:
        generate(Path(scratch))
        return [
            name
            for name in MODULES
            if not (PACKAGE / name).is_file() or (PACKAGE / name).read_bytes() != (Path(scratch) / name).read_bytes()
        ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report modules that are out of date")
    if parser.parse_args(argv).check:
        stale = stale_modules()
        if stale:
            print(f"out of date: {', '.join(stale)}; run python scripts/generate_grpc_stubs.py", file=sys.stderr)
            return 1
        return 0
    generate(PACKAGE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
