"""Generate the Python protobuf/gRPC modules from protos/ (needs grpcio-tools).

`python -m raftflow_cli.protogen DEST` writes DEST/{client,peer,command}_pb2*.py.
The protos are compiled under the virtual path raftflow/proto/ so the generated
imports read `from raftflow.proto import client_pb2`, which resolves inside the
installed package. Used by tools/gen-protos and by the test that proves the
committed modules match protos/.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

PROTO_FILES = ("command.proto", "client.proto", "peer.proto")


def generate(protos_dir: Path, dest: Path) -> list[Path]:
    from grpc_tools import protoc  # dev/test dependency only

    include = Path(protoc.__file__).parent / "_proto"
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-Iraftflow/proto={protos_dir}", f"-I{include}",
                f"--python_out={tmp}", f"--grpc_python_out={tmp}"]
        args += [f"raftflow/proto/{name}" for name in PROTO_FILES]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {protos_dir}")
        dest.mkdir(parents=True, exist_ok=True)
        for path in sorted((Path(tmp) / "raftflow" / "proto").glob("*.py")):
            shutil.copy(path, dest / path.name)
            written.append(dest / path.name)
    return written


def main() -> None:
    root = Path(__file__).resolve().parents[2]
    dest = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "node" / "proto"
    for path in generate(root / "protos", dest):
        print(path)


if __name__ == "__main__":
    main()
