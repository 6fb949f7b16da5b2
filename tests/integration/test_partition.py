"""A real minority partition, with network namespaces: the cut-off node stops starting
work and kills what it ran; the majority finishes the run; the node rejoins."""

from __future__ import annotations

import time

import pytest

from raftflow_dev import attempts, netns
from raftflow_dev.local import LocalCluster
from support import Cli, run_view, task_view, trigger, wait_for, wait_run_end, write_dag

# solo: run alone, not beside another integration test (tools/test): asserts how soon a cut-off node's attempt stops.
pytestmark = [pytest.mark.integration, pytest.mark.solo]


def _network(hosts: int):
    reason = netns.available()
    if reason:
        pytest.skip(f"the partition test needs network namespaces: {reason}")
    topo = netns.Topology(hosts)
    try:
        yield topo
    finally:
        topo.destroy()


@pytest.fixture
def topology():
    yield from _network(3)


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


@pytest.fixture
def four_hosts():
    yield from _network(4)


def test_a_worker_cut_off_from_the_voters_kills_its_attempt_and_runs_again_once_back(four_hosts, tmp_path):
    """Issue 16: a worker (no vote) in its own namespace, the only node serving the task's
    queue. Cut off, it fences its attempt at its lease (it cannot renew it through any
    voter); the leader releases the attempt after the lease; healed, the worker follows
    the log again and runs attempt 2. At no instant do two attempts run."""
    launcher = {**four_hosts.launcher(), "w1": ["ip", "netns", "exec", four_hosts.namespaces[3]]}
    del launcher["n4"]
    cluster = LocalCluster(tmp_path / "cluster", nodes=3, hosts=four_hosts.hosts[:3], launcher=launcher,
                           queues={"w1": ["wq"]})
    cluster.start()
    try:
        cluster.wait_ready(30)
        worker = cluster.add_worker(host=four_hosts.hosts[3])
        voters = ",".join(n.grpc_address for n in cluster.voters)
        cli = Cli(cluster, voters)
        wait_for(lambda: any(n["id"] == worker and n["healthy"] for n in cli.json("cluster", "status")["nodes"]),
                 30, "the worker to join")
        record = tmp_path / "attempts.log"
        write_dag(tmp_path / "d.py", "cut_worker", record, {"long": (8.0, [])}, queue="wq")
        assert cli("dags", "submit", str(tmp_path / "d.py")).returncode == 0
        run_id = trigger(cli, "cut_worker")
        wait_for(lambda: attempts.read(record).get((run_id, "long")), 30, "the attempt to start on the worker")
        cut_at = time.time()
        four_hosts.partition(3)

        def released():
            long = task_view(run_view(cli, run_id), "long")
            return long["state"] == "queued" and long["attempt"] == 1 and long
        wait_for(released, 30, "the leader to release the cut-off worker's attempt")
        first = attempts.read(record)[(run_id, "long")][0]
        assert not first.finished and first.last_seen < cut_at + 3.0, \
            f"attempt 1 kept running on the cut-off worker until {first.last_seen - cut_at:.1f}s after the cut"

        four_hosts.heal(3)
        run = wait_run_end(cli, run_id, timeout=90)
        assert run["state"] == "success", run
        long = task_view(run, "long")
        assert long["attempt"] == 2 and long["node"] == worker, long
        recorded = attempts.read(record)
        assert attempts.overlaps(recorded) == [] and [a.attempt for a in recorded[(run_id, "long")]] == [1, 2]
    finally:
        cluster.stop()
