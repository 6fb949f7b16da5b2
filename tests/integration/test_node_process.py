"""`raftflow node` as a process: it refuses to start without a cluster secret, or
without TLS files unless told `insecure = true`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from raftflow.config import NodeConfig, to_toml
from raftflow_dev.local import free_ports

pytestmark = pytest.mark.integration


def test_node_refuses_to_start_without_a_secret(tmp_path: Path):
    grpc_port, raft_port, peer_port = free_ports(3)
    cfg = NodeConfig(node_id="solo", grpc_address=f"127.0.0.1:{grpc_port}", raft_address=f"127.0.0.1:{raft_port}",
                     peer_address=f"127.0.0.1:{peer_port}", data_dir=tmp_path / "data",
                     secret_file=tmp_path / "missing-secret")
    (tmp_path / "node.toml").write_text(to_toml(cfg))
    proc = subprocess.run([sys.executable, "-m", "raftflow_cli.main", "node", "--config", str(tmp_path / "node.toml")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "cannot read the cluster secret" in proc.stderr
    assert str(tmp_path / "missing-secret") in proc.stderr


def test_node_refuses_to_start_without_tls_files_and_says_how_to_make_them(tmp_path: Path):
    grpc_port, raft_port, peer_port = free_ports(3)
    (tmp_path / "secret").write_text("x" * 32 + "\n")
    cfg = NodeConfig(node_id="solo", grpc_address=f"127.0.0.1:{grpc_port}", raft_address=f"127.0.0.1:{raft_port}",
                     peer_address=f"127.0.0.1:{peer_port}", data_dir=tmp_path / "data",
                     secret_file=tmp_path / "secret")
    (tmp_path / "node.toml").write_text(to_toml(cfg))
    proc = subprocess.run([sys.executable, "-m", "raftflow_cli.main", "node", "--config", str(tmp_path / "node.toml")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "no TLS certificate" in proc.stderr and "raftflow certs issue solo" in proc.stderr
    assert "insecure = true" in proc.stderr
    assert not (tmp_path / "data").exists(), "nothing was created"
