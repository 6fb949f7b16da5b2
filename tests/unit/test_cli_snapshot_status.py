"""`raftflow cluster status` shows each node's last snapshot, and a failing one loudly;
and whether each node takes work."""

from __future__ import annotations

import argparse
import time
from typing import Any

import pytest

from raftflow_cli.main import cmd_cluster_status, health_cell, snapshot_cell


def _node(node_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": node_id, "role": "follower", "healthy": True, "pid": 1, "raft_term": "3", "commit_index": "40",
            "running_tasks": 0, "slots": 4, "last_heartbeat_age": 0.2, "queues": ["default"],
            "grpc_address": "h:1", "error": "", "digest": "d", "snapshot_at": 0.0, "snapshot_index": "0",
            "snapshot_error": "", "snapshot_failures": 0, "ready": True, **fields}


class _Client:
    def __init__(self, nodes: list[dict[str, Any]]) -> None:
        self.nodes = nodes

    def cluster_status(self) -> dict[str, Any]:
        return {"leader": "n1", "leader_changes": [], "served_by": "n1", "nodes": self.nodes}


def test_snapshot_cell() -> None:
    now = 1000.0
    assert snapshot_cell(_node("n1"), now) == "none"
    assert snapshot_cell(_node("n1", snapshot_at=940.0, snapshot_index="37"), now) == "37 (60s ago)"
    assert snapshot_cell(_node("n1", snapshot_at=940.0, snapshot_index="37", snapshot_error="boom"),
                         now) == "FAILING, last 37 (60s ago)"
    assert snapshot_cell(_node("n1", role="unreachable"), now) == "-"


def test_cluster_status_prints_the_snapshot_column_and_the_failure(capsys: pytest.CaptureFixture[str]) -> None:
    nodes = [_node("n1", role="leader", snapshot_at=time.time() - 5.2, snapshot_index="37"),
             _node("n2", snapshot_error="pickling the state failed: RecursionError: too deep", snapshot_failures=3)]
    assert cmd_cluster_status(_Client(nodes), argparse.Namespace(json=False)) == 0  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "SNAPSHOT" in out and "37 (5s ago)" in out and "FAILING, last none" in out
    assert "snapshot FAILING on n2 (3 attempt(s) in a row" in out and "RecursionError: too deep" in out


def test_health_cell_tells_a_starting_or_draining_node_from_a_working_one() -> None:
    assert health_cell(_node("n1")) == "yes"
    assert health_cell(_node("n1", ready=False)) == "yes, no work"
    assert health_cell(_node("n1", healthy=False, ready=True)) == "NO"
    assert health_cell(_node("n1", role="unreachable", healthy=False, ready=False)) == "NO"
