"""History retention: old runs and their task logs are removed on every node."""

from __future__ import annotations

import json

import pytest

from raftflow.store.local import LocalStore
from support import Cli, running_cluster, wait_for

pytestmark = pytest.mark.integration


def test_keep_runs_removes_old_runs_and_their_logs_everywhere(tmp_path):
    with running_cluster(tmp_path / "cluster") as cluster:
        cli = Cli(cluster)
        dag = tmp_path / "kept.py"
        dag.write_text("from raftflow import DAG, BashTask\n"
                       "with DAG('kept', keep_runs=2):\n"
                       "    BashTask('a', command='echo run $RAFTFLOW_RUN_ID')\n"
                       "    BashTask('b', command='echo again $RAFTFLOW_RUN_ID')\n")
        assert cli("dags", "submit", str(dag)).returncode == 0
        runs = []
        for _ in range(4):
            proc = cli("dags", "trigger", "kept", "--wait", "--json")
            assert proc.returncode == 0, proc.stderr
            runs.append(json.loads(proc.stdout)["run_id"])

        def only_newest_two_everywhere():
            for node in cluster.nodes:
                listed = [r["run_id"] for r in cli.json("runs", "list", "kept", cluster=node.grpc_address)["runs"]]
                if sorted(listed) != sorted(runs[2:]):
                    return False
            return True
        wait_for(only_newest_two_everywhere, 15, "every node to keep only the newest 2 runs")
        gone = cli("runs", "show", runs[0])
        assert gone.returncode == 2 and "no run" in gone.stderr

    logs: dict[tuple[str, str], list[str]] = {}   # (run, task) -> nodes holding its log
    for node in cluster.nodes:
        store = LocalStore(node.dir / "data" / "store")
        try:
            for run_id in runs:
                for task in "ab":
                    if store.has_log(run_id, task, 1):
                        logs.setdefault((run_id, task), []).append(node.node_id)
        finally:
            store.close()
    for run_id in runs[:2]:
        assert not any((run_id, task) in logs for task in "ab"), f"logs of pruned run {run_id} remain: {logs}"
    for run_id in runs[2:]:
        assert all(len(logs.get((run_id, task), [])) == 1 for task in "ab"), logs
