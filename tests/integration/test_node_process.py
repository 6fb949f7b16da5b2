"""`raftflow node` as a process: it refuses to start without a cluster secret, or
without TLS files unless told `insecure = true`."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from raftflow.config import NodeConfig, to_toml
from raftflow_dev.local import free_ports
from support import wait_for

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


def _tls_node(tmp_path: Path) -> tuple[NodeConfig, Path]:
    """A one-node config with its secret and certificates, written to node.toml."""
    from raftflow import certs

    grpc_port, raft_port, peer_port, http_port = free_ports(4)
    (tmp_path / "secret").write_text("x" * 32 + "\n")
    certs.init_dir(tmp_path / "tls")
    cert, key = certs.issue_in_dir(tmp_path / "tls", "solo", ["127.0.0.1"])
    cfg = NodeConfig(node_id="solo", grpc_address=f"127.0.0.1:{grpc_port}", raft_address=f"127.0.0.1:{raft_port}",
                     peer_address=f"127.0.0.1:{peer_port}", data_dir=tmp_path / "data",
                     secret_file=tmp_path / "secret", tls_cert_file=cert, tls_key_file=key,
                     tls_ca_file=tmp_path / "tls" / "ca.pem", http_address=f"127.0.0.1:{http_port}")
    (tmp_path / "node.toml").write_text(to_toml(cfg))
    return cfg, tmp_path / "node.toml"


def test_node_refuses_to_start_when_its_peer_port_is_taken(tmp_path: Path):
    cfg, config = _tls_node(tmp_path)
    host, port = cfg.peer_address.rsplit(":", 1)
    with socket.socket() as taken:
        taken.bind((host, int(port)))
        taken.listen()
        proc = subprocess.run([sys.executable, "-m", "raftflow_cli.main", "node", "--config", str(config)],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"cannot listen on peer_address {cfg.peer_address}" in proc.stderr


def test_node_refuses_to_start_when_its_web_port_is_taken(tmp_path: Path):
    cfg, config = _tls_node(tmp_path)
    host, port = cfg.http_address.rsplit(":", 1)
    with socket.socket() as taken:
        taken.bind((host, int(port)))
        taken.listen()
        proc = subprocess.run([sys.executable, "-m", "raftflow_cli.main", "node", "--config", str(config)],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"cannot listen on http_address {cfg.http_address}" in proc.stderr


def test_every_port_binds_exactly_its_address(tmp_path: Path):
    """Bound to 127.0.0.1, a port is closed on 127.0.0.2 (also this machine's loopback);
    a wildcard bind would accept there. The node logs as --log-format json asks: every
    line of its stderr is one JSON object with its id and Raft term."""
    cfg, config = _tls_node(tmp_path)
    node = subprocess.Popen([sys.executable, "-m", "raftflow_cli.main", "node", "--config", str(config),
                             "--log-format", "json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        addresses = (cfg.grpc_address, cfg.peer_address, cfg.raft_address, cfg.http_address)
        ports = [int(a.rsplit(":", 1)[1]) for a in addresses]
        wait_for(lambda: all(_accepts("127.0.0.1", p) for p in ports), 30, "the node to listen on its four ports")
        assert [p for p in ports if _accepts("127.0.0.2", p)] == []
        # The web port speaks HTTPS with the node's certificate (trusted through the cluster's CA).
        context = ssl.create_default_context(cafile=str(cfg.tls_ca_file))
        with urllib.request.urlopen(f"https://{cfg.http_address}/api/v2/version", context=context, timeout=10) as r:
            assert r.status == 200 and b'"version"' in r.read()
    finally:
        node.terminate()
        node.wait(30)
    stderr = node.stderr.read() if node.stderr else ""
    assert node.returncode == 0, stderr[-2000:]   # a clean stop, web server too
    assert not _accepts("127.0.0.1", ports[-1])
    records = [json.loads(line) for line in stderr.splitlines()]
    assert records and all(r["node"] == cfg.node_id and {"time", "level", "logger", "message", "term"} <= r.keys()
                           for r in records), stderr[-2000:]
    # (term: null only before its Raft state exists; 0 here: the test stops the node before it elects itself)
    assert any(isinstance(r["term"], int) for r in records), stderr[-2000:]


def _accepts(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0
