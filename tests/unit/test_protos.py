"""The generated Python modules in use are exactly what protos/ compiles to."""

from __future__ import annotations

from pathlib import Path

from raftflow_dev.protogen import generate

ROOT = Path(__file__).resolve().parents[2]


def test_generated_modules_match_protos(tmp_path: Path):
    fresh = {p.name: p.read_bytes() for p in generate(ROOT / "protos", tmp_path)}
    committed = {p.name: p.read_bytes() for p in (ROOT / "node" / "proto").glob("*_pb2*.py")}
    assert fresh.keys() == committed.keys(), "node/proto/ and protos/ define different modules"
    stale = sorted(name for name in fresh if fresh[name] != committed[name])
    assert not stale, f"node/proto/{stale[0]} is stale: run tools/gen-protos and commit the result"


def test_the_package_imports_the_committed_modules():
    import raftflow.proto.client_pb2 as client_pb2

    assert Path(client_pb2.__file__).resolve() == (ROOT / "node" / "proto" / "client_pb2.py").resolve()
