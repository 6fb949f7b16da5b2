"""Worker nodes (issue 16): real node processes that join a running 3-voter cluster
through one voter's address, with no change to any voter's config, run tasks, and go:
killed (the task runs again on another worker), or stopped with SIGTERM (the running
attempt finishes there, nothing new is given to it, and it leaves the member list).

The workers serve a queue of their own ("wq"), which no voter serves, so where a task
runs is the test's to choose; tasks record their own lifetimes (raftflow_dev.attempts)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from raftflow.config import load
from raftflow_dev import attempts
from raftflow_dev.local import LocalCluster
from support import (
    Cli,
    dump_node_logs,
    run_view,
    running_cluster,
    task_view,
    trigger,
    wait_for,
    wait_run_end,
    write_dag,
)

# solo: run alone, not beside another integration test (tools/test): asserts how soon a worker
# gets work; thirteen node processes.
pytestmark = [pytest.mark.integration, pytest.mark.solo]

QUEUE = "wq"


@pytest.fixture
def cluster(tmp_path: Path):
    with running_cluster(tmp_path / "cluster", nodes=3, slots=4, queues={"w1": [QUEUE], "w2": [QUEUE]}) as local:
        yield local


def members(cli: Cli) -> dict[str, dict]:
    return {n["id"]: n for n in cli.json("cluster", "status")["nodes"]}


def epoch(text: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_a_worker_joins_a_running_cluster_and_gets_its_queue_s_task_within_2_s(cluster, tmp_path):
    cli = Cli(cluster)
    record = tmp_path / "attempts.log"
    write_dag(tmp_path / "d.py", "on_workers", record, {"work": (0.2, [])}, queue=QUEUE)
    assert cli("dags", "submit", str(tmp_path / "d.py")).returncode == 0
    run_id = trigger(cli, "on_workers")
    wait_for(lambda: task_view(run_view(cli, run_id), "work")["state"] == "queued", 30, "the task to wait for a worker")

    spawned = time.time()
    worker = cluster.add_worker()
    run = wait_run_end(cli, run_id, timeout=60)
    assert run["state"] == "success", run
    work = task_view(run, "work")
    assert work["node"] == worker and work["attempt"] == 1
    status = members(cli)
    assert status[worker]["role"] == "worker" and status[worker]["worker"] and status[worker]["healthy"]
    assert all(not status[v.node_id]["worker"] for v in cluster.voters)
    joined = status[worker]["joined_at"]
    started = epoch(work["started_at"])
    print(f"worker {worker}: spawned -> joined {joined - spawned:.2f} s, joined -> task started "
          f"{started - joined:.2f} s")
    assert 0 < started - joined < 2.0, (joined, work)
    # No voter's config names the worker; the voters know it from the replicated state.
    for voter in cluster.voters:
        assert worker not in {p.id for p in load(voter.config_path, environ={}).peers}
    # Its API serves reads from its own replica and forwards writes.
    on_worker = Cli(cluster, cluster.node(worker).grpc_address)
    assert on_worker.json("runs", "show", run_id)["state"] == "success"
    assert on_worker("dags", "pause", "on_workers").returncode == 0


def test_a_worker_killed_mid_task_the_task_runs_again_on_another_worker(cluster, tmp_path):
    cli = Cli(cluster)
    first_worker, second_worker = cluster.add_worker(), cluster.add_worker()
    wait_for(lambda: all(members(cli).get(w, {}).get("healthy") for w in (first_worker, second_worker)), 30,
             "both workers to heartbeat")
    record = tmp_path / "attempts.log"
    write_dag(tmp_path / "d.py", "long_on_workers", record, {"long": (5.0, [])}, queue=QUEUE)
    assert cli("dags", "submit", str(tmp_path / "d.py")).returncode == 0
    run_id = trigger(cli, "long_on_workers")
    first = wait_for(lambda: (t := task_view(run_view(cli, run_id), "long"))["state"] == "running" and t,
                     30, "the task to start on a worker")
    wait_for(lambda: attempts.read(record).get((run_id, "long")), 30, "the attempt to record itself")
    killed_at = time.time()
    assert cluster.signal_node(first["node"], signal.SIGKILL)

    run = wait_run_end(cli, run_id, timeout=60)
    assert run["state"] == "success", run
    long = task_view(run, "long")
    other = second_worker if first["node"] == first_worker else first_worker
    assert long["attempt"] == 2 and long["node"] == other, long
    recorded = attempts.read(record)[(run_id, "long")]
    assert [r.attempt for r in recorded] == [1, 2] and not recorded[0].finished
    assert attempts.overlaps(attempts.read(record)) == []
    print(f"attempt 2 started on {other} {recorded[1].started - killed_at:.2f} s after the kill")
    status = members(cli)
    assert status[first["node"]]["role"] == "unreachable" and status[first["node"]]["worker"]
    assert not status[first["node"]]["healthy"]


def test_sigterm_drains_a_worker_its_attempt_finishes_there_and_it_leaves(cluster, tmp_path):
    cli = Cli(cluster)
    worker = cluster.add_worker()
    record = tmp_path / "attempts.log"
    write_dag(tmp_path / "d.py", "drained", record, {"long": (3.0, [])}, queue=QUEUE)
    assert cli("dags", "submit", str(tmp_path / "d.py")).returncode == 0
    run_id = trigger(cli, "drained")
    wait_for(lambda: task_view(run_view(cli, run_id), "long")["state"] == "running", 30, "the task to start")
    assert cluster.signal_node(worker, signal.SIGTERM)
    later = trigger(cli, "drained")       # arrives while the worker drains: it must not get it
    exit_code = cluster.wait_exit(worker, 30)
    assert exit_code == 0, exit_code

    run = run_view(cli, run_id)
    assert run["state"] == "success", run
    long = task_view(run, "long")
    assert long["attempt"] == 1 and long["node"] == worker
    recorded = attempts.read(record)[(run_id, "long")]
    assert len(recorded) == 1 and recorded[0].finished
    waiting = task_view(run_view(cli, later), "long")
    assert waiting["state"] == "queued" and waiting["attempt"] == 0, waiting
    assert worker not in members(cli)
    log = cluster.node(worker).log_path.read_text()
    assert "draining: 1 attempt(s) running" in log and "left the cluster (0 attempt(s) released)" in log
    # A worker that comes in after it takes the waiting task.
    successor = cluster.add_worker()
    run = wait_run_end(cli, later, timeout=60)
    assert run["state"] == "success" and task_view(run, "long")["node"] == successor


def test_a_leader_kill_with_ten_workers_attached_loses_and_doubles_nothing(tmp_path):
    """Ten workers run a wide stage while the leader is killed: every worker follows the
    new leader; every task succeeds exactly once and no two attempts of one overlap."""
    workers = [f"w{i}" for i in range(1, 11)]
    local = LocalCluster(tmp_path / "cluster", nodes=3, slots=2, workers=10, queues={w: [QUEUE] for w in workers})
    local.start()
    try:
        local.wait_ready(60)
        cli = Cli(local)
        record = tmp_path / "attempts.log"
        tasks = {f"part_{i:02d}": (3.0, []) for i in range(20)}
        tasks["join"] = (0.2, list(tasks))
        write_dag(tmp_path / "d.py", "wide_on_workers", record, tasks, queue=QUEUE)
        assert cli("dags", "submit", str(tmp_path / "d.py")).returncode == 0
        run_id = trigger(cli, "wide_on_workers")
        wait_for(lambda: sum(t["state"] == "running" for t in run_view(cli, run_id)["tasks"]) >= 15, 60,
                 "the wide stage to run on the workers")
        leader = cli.json("cluster", "status")["leader"]
        assert local.signal_node(leader, signal.SIGKILL)

        survivors = Cli(local, ",".join(n.grpc_address for n in local.nodes if n.node_id != leader))
        run = wait_run_end(survivors, run_id, timeout=90)
        assert run["state"] == "success", run
        recorded = attempts.read(record)
        assert len(recorded) == len(tasks)
        assert set(attempts.successes(recorded).values()) == {1}, attempts.successes(recorded)
        assert attempts.overlaps(recorded) == []
        # An attempt whose worker could not renew its lease through the new leader in time
        # (lease_timeout/2 = 2 s: an election and a barrier on a loaded 2-core machine) is
        # fenced and runs again: by design, never beside its successor, never twice to the end.
        again = {key: len(a) for key, a in recorded.items() if len(a) > 1}
        assert all(not a[0].finished for a in recorded.values() if len(a) > 1)
        print(f"{len(tasks) - len(again)} of {len(tasks)} tasks ran once; fenced and run again: {sorted(again)}")
        assert {t["node"] for t in run["tasks"]} <= set(workers)
        status = survivors.json("cluster", "status")
        assert status["leader"] not in ("", leader)
        assert all(n["healthy"] for n in status["nodes"] if n["worker"]), status["nodes"]
    except BaseException:
        dump_node_logs(local)
        raise
    finally:
        local.stop()
