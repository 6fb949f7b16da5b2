"""Restarts: committed state survives kill -9 of every node; unfinished runs continue."""

from __future__ import annotations

import signal

import pytest

from raftflow_cli import attempts
from support import Cli, running_cluster, wait_for
from test_failover import run_view, task_view, trigger, wait_run_end, write_dag

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("fsync", [False, True], ids=["default", "fsync"])
def test_kill_9_every_node_and_restart_nothing_committed_is_lost(tmp_path, fsync):
    env = {"RAFTFLOW_FSYNC": "true"} if fsync else {}
    with running_cluster(tmp_path / "cluster", extra_env=env) as cluster:
        cli = Cli(cluster.addresses)
        record = tmp_path / "attempts.log"
        write_dag(tmp_path / "d.py", "survivor", record, {"first": (0.2, []), "long": (4.0, ["first"]),
                                                           "last": (0.2, ["long"])})
        assert cli("dags", "submit", str(tmp_path / "d.py")).returncode == 0
        done = trigger(cli, "survivor")
        assert wait_run_end(cli, done)["state"] == "success"
        unfinished = trigger(cli, "survivor")
        wait_for(lambda: task_view(run_view(cli, unfinished), "long")["state"] == "running", 30, "the long task")
        before = {r["run_id"]: r["state"] for r in cli.json("runs", "list")["runs"]}

        for node in cluster.nodes:
            assert cluster.signal_node(node.node_id, signal.SIGKILL)
        for node in cluster.nodes:
            cluster.start_node(node.node_id)
        cluster.wait_ready(60)

        after = {r["run_id"]: r["state"] for r in cli.json("runs", "list")["runs"]}
        assert set(after) == set(before)
        assert after[done] == "success"
        assert cli.json("dags", "show", "survivor")["summary"]["dag_id"] == "survivor"
        run = wait_run_end(cli, unfinished, timeout=90)
        assert run["state"] == "success", run
        assert task_view(run, "long")["attempt"] == 2, "the attempt that died with the cluster runs again"
        assert attempts.overlaps(attempts.read(record)) == []

        def same_digest():
            nodes = cli.json("cluster", "status")["nodes"]
            return len({n["digest"] for n in nodes}) == 1 and all(n["healthy"] for n in nodes)
        wait_for(same_digest, 30, "equal digests after the restart")
