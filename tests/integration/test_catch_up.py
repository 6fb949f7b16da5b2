"""A node that was down while the cluster compacted its log catches up from a snapshot."""

from __future__ import annotations

import json
import signal

import pytest

from raftflow.config import RaftTuning
from raftflow.store.local import LocalStore
from raftflow_dev.local import LocalCluster
from support import ROOT, Cli, wait_for

pytestmark = pytest.mark.integration


def _digests_equal(cli: Cli) -> dict | bool:
    """Every node healthy and holding the same state digest (the digests, or False)."""
    nodes = cli.json("cluster", "status")["nodes"]
    digests = {n["id"]: n["digest"] for n in nodes}
    return len(set(digests.values())) == 1 and all(n["healthy"] for n in nodes) and digests


def test_node_behind_a_compacted_log_catches_up_with_equal_digest(tmp_path):
    cluster = LocalCluster(tmp_path, nodes=3, raft=RaftTuning(log_compaction_min_entries=10))
    cluster.start()
    try:
        cluster.wait_ready(30)
        cli = Cli(cluster)
        assert cli("dags", "submit", str(ROOT / "dags" / "etl_chain.py")).returncode == 0
        lagging = next(n.node_id for n in cluster.nodes if n.node_id != cli.json("cluster", "status")["leader"])
        cluster.signal_node(lagging, signal.SIGKILL)
        survivors = ",".join(n.grpc_address for n in cluster.nodes if n.node_id != lagging)
        for _ in range(8):   # far more than 10 Raft entries: the log is compacted meanwhile
            assert cli("dags", "pause", "etl_chain", cluster=survivors).returncode == 0
            assert cli("dags", "unpause", "etl_chain", cluster=survivors).returncode == 0
        cluster.start_node(lagging)

        wait_for(lambda: _digests_equal(cli), 30, "the restarted node to reach the same state digest")
        shown = cli.json("dags", "show", "etl_chain", cluster=cluster.node(lagging).grpc_address)
        assert shown["summary"]["dag_id"] == "etl_chain" and shown["summary"]["paused"] is False
    finally:
        cluster.stop()


def test_node_down_while_200_runs_happen_comes_back_through_a_snapshot(tmp_path):
    """Issue #4's snapshot path at scale: a follower is killed, 200 runs happen and
    retention prunes the oldest (some of whose task logs the dead node holds); back
    up, it installs a snapshot (the log was compacted meanwhile), reaches the same
    digest, serves the same runs, and drops the logs of runs pruned while it was away."""
    cluster = LocalCluster(tmp_path, nodes=3, raft=RaftTuning(log_compaction_min_entries=50))
    cluster.start()
    dag = tmp_path / "many.py"
    dag.write_text("from raftflow import DAG, BashTask\n"
                   "with DAG('many', keep_runs=150, max_active_runs=64):\n"
                   "    a = BashTask('a', command='echo run $RAFTFLOW_RUN_ID')\n"
                   "    a >> BashTask('b', command='true')\n")
    client = None
    try:
        cluster.wait_ready(30)
        cli = Cli(cluster)
        assert cli("dags", "submit", str(dag)).returncode == 0, "submit failed"
        lagging = next(n.node_id for n in cluster.nodes if n.node_id != cli.json("cluster", "status")["leader"])
        early = [json.loads(cli("dags", "trigger", "many", "--wait", "--json").stdout)["run_id"] for _ in range(6)]
        ran_there = [(r, t["task_id"]) for r in early for t in cli.json("runs", "show", r)["tasks"]
                     if t["node"] == lagging]
        assert ran_there, f"no early task ran on {lagging}: the log sweep below would prove nothing"

        cluster.signal_node(lagging, signal.SIGKILL)
        assert cluster.wait_exit(lagging, 10) is not None
        survivors = [n.grpc_address for n in cluster.nodes if n.node_id != lagging]
        client = cluster.client(survivors)
        triggered = [client.trigger("many")["run_id"] for _ in range(200)]

        def newest_150_succeeded():
            runs = client.list_runs("many", limit=1000)["runs"]
            return len(runs) == 150 and all(r["state"] == "success" for r in runs) and \
                {r["run_id"] for r in runs} == set(triggered[-150:])
        wait_for(newest_150_succeeded, 240, "the 200 runs to finish and retention to keep the newest 150")

        cluster.start_node(lagging)

        wait_for(lambda: _digests_equal(cli), 60, "the restarted node to reach the same state digest")
        assert "installed a Raft snapshot" in cluster.node(lagging).log_path.read_text(), \
            "the node caught up by log replay: the test did not exercise the snapshot path"
        on_lagging = cluster.client([cluster.node(lagging).grpc_address])
        try:
            served = on_lagging.list_runs("many", limit=1000)
            assert served["meta"]["served_by"] == lagging
            assert [r["run_id"] for r in served["runs"]] == triggered[-150:][::-1]
            assert on_lagging.get_run(triggered[-1])["tasks"][1]["state"] == "success"
        finally:
            on_lagging.close()

        wait_for(lambda: "removed the task logs of" in cluster.node(lagging).log_path.read_text(), 15,
                 "the restarted node to drop the logs of runs pruned while it was down")
    finally:
        if client is not None:
            client.close()
        cluster.stop()
    store = LocalStore(cluster.node(lagging).dir / "data" / "store")
    try:
        leftover = [run_id for run_id in store.runs_with_logs() if run_id in early]
    finally:
        store.close()
    assert leftover == [], f"logs of pruned runs remain on {lagging}: {leftover}"

