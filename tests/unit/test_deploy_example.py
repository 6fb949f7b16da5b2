"""The example node config in deploy/ loads as written."""

from pathlib import Path

from raftflow.config import load

ROOT = Path(__file__).resolve().parents[2]


def test_deploy_example_config_is_valid():
    cfg = load(ROOT / "deploy" / "node.toml.example", environ={})
    assert cfg.node_id == "n1" and [p.id for p in cfg.peers] == ["n2", "n3"]
