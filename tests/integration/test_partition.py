"""A real minority partition, with network namespaces: the cut-off node stops starting
work and kills what it ran; the majority finishes the run; the node rejoins."""

from __future__ import annotations

import time

import pytest

from raftflow_dev import attempts, netns
from raftflow_dev.local import LocalCluster
from support import Cli, wait_for
from test_failover import run_view, task_view, trigger, wait_run_end, write_dag

pytestmark = pytest.mark.integration


@pytest.fixture
def topology():
    reason = netns.available()
    if reason:
        pytest.skip(f"the partition test needs network namespaces: {reason}")
    topo = netns.Topology(3)
    yield topo
    topo.destroy()


def test_minority_partition_stops_its_work_and_the_majority_finishes(topology, tmp_path):
    cluster = LocalCluster(tmp_path / "cluster", nodes=3, hosts=topology.hosts, launcher=topology.launcher())
    cluster.start()
    try:
        cluster.wait_ready(30)
        cli = Cli(cluster)
        record = tmp_path / "attempts.log"
        tasks = {f"part_{i}": (6.0, []) for i in range(4)}
        tasks["join"] = (0.5, list(tasks))
        assert cli("dags", "submit", str(write_dag(tmp_path / "d.py", "split", record, tasks))).returncode == 0
        run_id = trigger(cli, "split")
        leader = cli.json("cluster", "status")["leader"]

        def a_follower_running():
            run = run_view(cli, run_id)
            busy = [t["node"] for t in run["tasks"] if t["state"] == "running" and t["node"] != leader]
            return busy[0] if busy else None
        minority = wait_for(a_follower_running, 30, "a follower to run a task")
        index = [n.node_id for n in cluster.nodes].index(minority)
        majority = ",".join(n.grpc_address for n in cluster.nodes if n.node_id != minority)
        cut_at = time.time()
        topology.partition(index)

        run = wait_run_end(cli, run_id, timeout=90, cluster=majority)
        assert run["state"] == "success", run
        recorded = attempts.read(record)
        assert attempts.overlaps(recorded) == []
        mine = [a for recs in recorded.values() for a in recs if a.node == minority]
        assert mine, "the minority node ran nothing before the partition"
        assert all(a.started < cut_at + 1.0 for a in mine), "the cut-off node started work"
        for a in mine:
            if a.started < cut_at:
                assert not a.finished and a.last_seen < cut_at + 3.0, (
                    f"{a.task_id} attempt {a.attempt} kept running on the cut-off node "
                    f"until {a.last_seen - cut_at:.1f}s")
        for task_id in tasks:
            assert task_view(run, task_id)["node"] != minority

        topology.heal(index)

        def converged():
            nodes = Cli(cluster).json("cluster", "status")["nodes"]
            return all(n["healthy"] for n in nodes) and len({n["digest"] for n in nodes}) == 1
        wait_for(converged, 30, "the healed node to rejoin with the same state")
    finally:
        cluster.stop()
