"""A node that was down while the cluster compacted its log catches up from a snapshot."""

from __future__ import annotations

import signal

import pytest

from raftflow.config import RaftTuning
from raftflow_cli.local import LocalCluster
from support import ROOT, Cli, wait_for

pytestmark = pytest.mark.integration


def test_node_behind_a_compacted_log_catches_up_with_equal_digest(tmp_path):
    cluster = LocalCluster(tmp_path, nodes=3, raft=RaftTuning(log_compaction_min_entries=10))
    cluster.start()
    try:
        cluster.wait_ready(30)
        cli = Cli(cluster.addresses)
        assert cli("dags", "submit", str(ROOT / "dags" / "etl_chain.py")).returncode == 0
        lagging = next(n.node_id for n in cluster.nodes if n.node_id != cli.json("cluster", "status")["leader"])
        cluster.signal_node(lagging, signal.SIGKILL)
        survivors = ",".join(n.grpc_address for n in cluster.nodes if n.node_id != lagging)
        for _ in range(8):   # far more than 10 Raft entries: the log is compacted meanwhile
            assert cli("dags", "pause", "etl_chain", cluster=survivors).returncode == 0
            assert cli("dags", "unpause", "etl_chain", cluster=survivors).returncode == 0
        cluster.start_node(lagging)

        def digests_equal():
            nodes = cli.json("cluster", "status")["nodes"]
            digests = {n["id"]: n["digest"] for n in nodes}
            return len(set(digests.values())) == 1 and all(n["healthy"] for n in nodes) and digests
        wait_for(digests_equal, 30, "the restarted node to reach the same state digest")
        shown = cli.json("dags", "show", "etl_chain", cluster=cluster.node(lagging).grpc_address)
        assert shown["summary"]["dag_id"] == "etl_chain" and shown["summary"]["paused"] is False
    finally:
        cluster.stop()
