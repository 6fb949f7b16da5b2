"""Restarts: committed state survives kill -9 of every node; unfinished runs continue."""

from __future__ import annotations

import signal

import pytest

from raftflow_dev import attempts
from support import Cli, run_view, running_cluster, task_view, trigger, wait_for, wait_run_end, write_dag

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("fsync", [False, True], ids=["default", "fsync"])
def test_kill_9_every_node_and_restart_nothing_committed_is_lost(tmp_path, fsync):
    env = {"RAFTFLOW_FSYNC": "true"} if fsync else {}
    with running_cluster(tmp_path / "cluster", extra_env=env) as cluster:
        cli = Cli(cluster)
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


def test_ticks_missed_while_every_node_was_down_follow_catchup(tmp_path):
    """Two DAGs tick every 2 s until `end_date`; every node is killed before the last
    ticks and restarted after end_date. end_date leaves 12 s for two submissions and the
    first scheduled runs: a loaded 2-core machine took 9.5 s for them. `latest` runs the newest missed tick once;
    `none` runs none of them (ARCHITECTURE invariant 5 keeps either from doubling)."""
    import time
    from datetime import datetime, timezone

    with running_cluster(tmp_path / "cluster") as cluster:
        cli = Cli(cluster)
        start = time.time()
        end = start + 12
        iso = lambda t: datetime.fromtimestamp(t, timezone.utc).isoformat()  # noqa: E731
        for catchup in ("latest", "none"):
            (tmp_path / f"{catchup}.py").write_text(
                "from raftflow import DAG, BashTask\n"
                f"with DAG('every2_{catchup}', schedule='* * * * * */2', catchup='{catchup}',\n"
                f"         start_date='{iso(start)}', end_date='{iso(end)}'):\n"
                "    BashTask('a', command='true')\n")
            assert cli("dags", "submit", str(tmp_path / f"{catchup}.py")).returncode == 0

        def scheduled(dag_id):
            return [r for r in cli.json("runs", "list", dag_id)["runs"] if r["run_id"].startswith("scheduled__")]
        wait_for(lambda: all(len(scheduled(f"every2_{k}")) >= 1 for k in ("latest", "none")), 15,
                 "each DAG's first scheduled run")
        for node in cluster.nodes:
            assert cluster.signal_node(node.node_id, signal.SIGKILL)
        killed_at = time.time()
        assert end - killed_at >= 2.5, "too slow to kill before the last ticks: the test proves nothing"
        wait_for(lambda: time.time() > end + 1, end + 2 - time.time(), "end_date to pass while the cluster is down")
        for node in cluster.nodes:
            cluster.start_node(node.node_id)
        cluster.wait_ready(60)

        def missed(dag_id):
            return sorted(r["logical_date"] for r in scheduled(dag_id)
                          if datetime.fromisoformat(r["logical_date"]).timestamp() > killed_at)
        newest = iso(float(int(end) - int(end) % 2))     # the last even second at or before end_date
        wait_for(lambda: missed("every2_latest") == [newest], 20, "latest to run the newest missed tick")
        # The leader planned `none` in the same loop, before or with latest's run.
        assert missed("every2_none") == [], missed("every2_none")
        assert cli.json("dags", "show", "every2_none")["summary"]["dag_id"] == "every2_none"
