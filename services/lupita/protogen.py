"""Generate the Python gRPC/protobuf modules from ``protos/`` (never edited by hand).

Run as ``python -m lupita.protogen``; output goes to ``services/lupita/v1/`` (git-ignored),
made with the grpcio-tools of the running environment so it matches its protobuf runtime.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "protos"
OUT_DIR = ROOT / "services"


def generate(proto_dir: Path = PROTO_DIR, out_dir: Path = OUT_DIR) -> list[Path]:
    from grpc_tools import protoc  # only needed at build time
    import grpc_tools

    protos = sorted(proto_dir.rglob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {proto_dir}")
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{proto_dir}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(proto_dir)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    packages = {(out_dir / p.relative_to(proto_dir)).parent for p in protos}
    for pkg in packages:
        (pkg / "__init__.py").touch()
    return sorted(out_dir.joinpath(p.relative_to(proto_dir)).with_suffix("") for p in protos)


def main() -> None:
    for path in generate():
        print(f"generated {path.relative_to(ROOT)}_pb2.py")


if __name__ == "__main__":
    sys.exit(main())
