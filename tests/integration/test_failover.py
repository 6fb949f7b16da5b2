"""Kill, pause and isolate real node processes mid-run: work carries on, nothing is
lost, and no two attempts of one task ever run at the same time.

Each test starts its own 3-node cluster; tasks record their own lifetimes
(raftflow_dev.attempts), which is the evidence for the fencing checks.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from raftflow.worker.shipping import holders
from raftflow_dev import attempts
from raftflow_dev.local import LocalCluster
from support import Cli, run_view, task_view, trigger, wait_for, wait_run_end, write_dag

# solo: run alone, not beside another integration test (tools/test): asserts how soon a killed node's attempt stops.
pytestmark = [pytest.mark.integration, pytest.mark.solo]


@pytest.fixture
def cluster(tmp_path: Path):
    local = LocalCluster(tmp_path / "cluster", nodes=3, slots=4)
    local.start()
    try:
        local.wait_ready(30)
        yield local
    finally:
        local.stop()


@pytest.fixture
def cli(cluster) -> Cli:
    return Cli(cluster)


def test_leader_killed_mid_dag_every_task_succeeds_exactly_once(cluster, cli, tmp_path):
    record = tmp_path / "attempts.log"
    tasks = {"extract": (1.0, []), "part_a": (2.0, ["extract"]), "part_b": (2.0, ["extract"]),
             "part_c": (2.0, ["extract"]), "join": (1.0, ["part_a", "part_b", "part_c"]), "publish": (1.0, ["join"])}
    assert cli("dags", "submit", str(write_dag(tmp_path / "d.py", "failover_mix", record, tasks))).returncode == 0
    run_id = trigger(cli, "failover_mix")
    wait_for(lambda: task_view(run_view(cli, run_id), "part_a")["state"] == "running", 30, "the parallel stage")
    leader = cli.json("cluster", "status")["leader"]
    assert cluster.signal_node(leader, signal.SIGKILL)

    survivors = ",".join(n.grpc_address for n in cluster.nodes if n.node_id != leader)
    run = wait_run_end(cli, run_id, cluster=survivors)
    assert run["state"] == "success", run
    recorded = attempts.read(record)
    assert set(attempts.successes(recorded).values()) == {1}, attempts.successes(recorded)
    assert len(recorded) == len(tasks)
    assert attempts.overlaps(recorded) == []
    status = Cli(cluster, survivors).json("cluster", "status")
    assert status["leader"] and status["leader"] != leader


BRANCH_DAG = '''
import subprocess
from raftflow import DAG, BashTask, PythonTask

WORK = {work!r}


def choose():
    subprocess.run(["bash", "-c", WORK], check=True)   # (records itself while it decides: killed with it)
    return "fast"


with DAG("branch_failover"):
    decide = PythonTask("choose", python_callable=choose, branch=True)
    decide >> [BashTask("fast", command={fast!r}), BashTask("slow", command={slow!r})]
'''


def test_leader_killed_while_a_branch_decides_the_choice_applies_once(cluster, cli, tmp_path):
    """Issue 20: the branch's decision commits with its result through whichever leader
    there is then: the chosen task runs once, the other is skipped once, and no two
    attempts of the branch overlap (if it ran on the killed node, it ran again)."""
    record = tmp_path / "attempts.log"
    path = tmp_path / "branch_failover.py"
    path.write_text(BRANCH_DAG.format(work=attempts.recording_command(record, 4.0),
                                      fast=attempts.recording_command(record, 0.5),
                                      slow=attempts.recording_command(record, 0.5)))
    assert cli("dags", "submit", str(path)).returncode == 0
    run_id = trigger(cli, "branch_failover")
    wait_for(lambda: any(r.task_id == "choose" for recs in attempts.read(record).values() for r in recs),
             30, "the branch to start deciding")
    leader = cli.json("cluster", "status")["leader"]
    assert cluster.signal_node(leader, signal.SIGKILL)

    survivors = ",".join(n.grpc_address for n in cluster.nodes if n.node_id != leader)
    run = wait_run_end(cli, run_id, timeout=120, cluster=survivors)
    assert run["state"] == "success", run
    states = {t["task_id"]: t["state"] for t in run["tasks"]}
    assert states == {"choose": "success", "fast": "success", "slow": "skipped"}, run
    recorded = attempts.read(record)
    assert attempts.successes(recorded) == {(run_id, "choose"): 1, (run_id, "fast"): 1}, recorded
    assert attempts.overlaps(recorded) == []
    events = cli.json("tasks", "story", run_id, "slow", cluster=survivors)["events"]
    skips = [e for e in events if e["after"] == "skipped"]
    assert len(skips) == 1 and "branch 'choose' followed 'fast'" in skips[0]["reason"], events


CALLBACK_DAG = '''
import subprocess
from raftflow import DAG, BashTask

WORK = {work!r}


def page_someone(context):
    print("paging about", context["task_id"], "try", context["try_number"])
    subprocess.run(["bash", "-c", WORK], check=True)   # (records itself while it runs: killed with it)


with DAG("callback_failover"):
    BashTask("fails", command="exit 3", on_failure_callback=page_someone)
'''


def test_leader_killed_while_a_callback_runs_it_finishes_once(cluster, cli, tmp_path):
    """Issue 20: a callback is fenced like an attempt: through a leader's death it ends
    once, never two copies at once, and the run finishes after it, failed by its task."""
    record = tmp_path / "attempts.log"
    path = tmp_path / "callback_failover.py"
    path.write_text(CALLBACK_DAG.format(work=attempts.recording_command(record, 4.0)))
    assert cli("dags", "submit", str(path)).returncode == 0
    run_id = trigger(cli, "callback_failover")
    wait_for(lambda: any(recs for recs in attempts.read(record).values()), 30, "the callback to start")
    leader = cli.json("cluster", "status")["leader"]
    assert cluster.signal_node(leader, signal.SIGKILL)

    survivors = ",".join(n.grpc_address for n in cluster.nodes if n.node_id != leader)
    run = wait_run_end(cli, run_id, timeout=120, cluster=survivors)
    states = {t["task_id"]: t["state"] for t in run["tasks"]}
    assert run["state"] == "failed" and states == {"fails": "failed", "fails@on_failure.1": "success"}, run
    recorded = attempts.read(record)
    assert attempts.successes(recorded) == {(run_id, "fails@on_failure.1"): 1}, recorded
    assert attempts.overlaps(recorded) == []
    log = cli("tasks", "logs", run_id, "fails@on_failure.1", cluster=survivors).stdout
    assert "paging about fails try 1" in log


def test_node_killed_mid_task_the_task_runs_again_elsewhere(cluster, cli, tmp_path):
    """... without waiting for the lease: the dead node's reaper killed the attempt and
    reported it (worker/gone.py); and the log of the attempt that died with its node is
    read back through a survivor: what it printed, and a last line saying it was lost
    with its node."""
    record = tmp_path / "attempts.log"
    write_dag(tmp_path / "d.py", "long_one", record, {"long": (6.0, []), "after": (0.5, ["long"])},
              first={"long": "echo 'extracting batch 1 of 3'; echo 'loaded 1000 rows' >&2"})
    assert cli("dags", "submit", str(tmp_path / "d.py")).returncode == 0
    run_id = trigger(cli, "long_one")
    first = wait_for(lambda: (t := task_view(run_view(cli, run_id), "long"))["state"] == "running" and t,
                     30, "the long task to start")
    # The kill must hit a running attempt whose output had time to reach the cluster:
    # three log-shipping periods (worker/shipping.py SHIP_PERIOD) after it started.
    wait_for(lambda: (a := attempts.read(record).get((run_id, "long"))) and a[0].last_seen >= a[0].started + 1.5,
             30, "the long task to run for 1.5 s")
    killed_at = time.time()
    assert cluster.signal_node(first["node"], signal.SIGKILL)

    survivors = ",".join(n.grpc_address for n in cluster.nodes if n.node_id != first["node"])
    run = wait_run_end(cli, run_id, cluster=survivors)
    assert run["state"] == "success", run
    long = task_view(run, "long")
    assert long["attempt"] == 2 and long["node"] != first["node"]
    assert "lost" in long["reason"] or long["reason"] == ""
    recorded = attempts.read(record)[(run_id, "long")]
    assert [r.attempt for r in recorded] == [1, 2]
    assert not recorded[0].finished, "the killed node's attempt kept running to its end"
    assert recorded[0].last_seen < killed_at + 0.5, "the killed node's attempt outlived it (orphan)"
    assert attempts.overlaps(attempts.read(record)) == []
    story = cli.json("tasks", "story", run_id, "long", cluster=survivors)["events"]
    [lost] = [e for e in story if e["command"] == "lose_attempt"]
    assert "its reaper killed attempt 1's processes" in lost["reason"], story
    print(f"attempt 2 started {recorded[1].started - killed_at:.2f} s after the kill (the lease is 4 s)")

    logs = Cli(cluster, survivors)("tasks", "logs", run_id, "long", "--attempt", "1")
    print(f"$ raftflow tasks logs {run_id} long --attempt 1   # through a survivor\n{logs.stdout}{logs.stderr}"
          f"(exit {logs.returncode})")
    assert logs.returncode == 0, logs.stderr
    lines = logs.stdout.splitlines()
    assert lines[:2] == ["extracting batch 1 of 3", "loaded 1000 rows"], logs.stdout
    assert lines[-1].startswith(f"raftflow: attempt 1 was lost with node {first['node']} (released by "), lines
    assert lines[-1].endswith("the output above is what reached the cluster before it died (the copy kept on node "
                              f"{holders(first['node'], [n.node_id for n in cluster.nodes])[0]})"), lines


def test_node_stopped_mid_task_hands_its_attempt_to_another_node_not_back_to_itself(cluster, cli, tmp_path):
    """A node stopped with SIGTERM (a restart, a deploy) releases its attempt and says it is
    leaving first: the next attempt goes to another node, not back to the leaving one
    (which would refuse it until the lease ran out and use up a second lost attempt)."""
    record = tmp_path / "attempts.log"
    write_dag(tmp_path / "d.py", "stopped_one", record, {"long": (6.0, [])})
    assert cli("dags", "submit", str(tmp_path / "d.py")).returncode == 0
    run_id = trigger(cli, "stopped_one")
    first = wait_for(lambda: (t := task_view(run_view(cli, run_id), "long"))["state"] == "running" and t,
                     30, "the long task to start")
    stopped = first["node"]
    assert cluster.signal_node(stopped, signal.SIGTERM)
    survivors = ",".join(n.grpc_address for n in cluster.nodes if n.node_id != stopped)
    run = wait_run_end(cli, run_id, cluster=survivors)
    assert run["state"] == "success", run
    story = cli.json("tasks", "story", run_id, "long", cluster=survivors)["events"]
    assigned = [(e["attempt"], e["node"]) for e in story if e["command"] == "assign_task"]
    assert assigned[0] == (1, stopped) and all(node != stopped for _, node in assigned[1:]), story
    assert task_view(run, "long")["attempt"] == 2, story
    assert attempts.overlaps(attempts.read(record)) == []


def test_paused_node_fences_its_own_attempt_before_it_runs_again(cluster, cli, tmp_path):
    record = tmp_path / "attempts.log"
    write_dag(tmp_path / "d.py", "paused_one", record, {"long": (8.0, [])})
    assert cli("dags", "submit", str(tmp_path / "d.py")).returncode == 0
    run_id = trigger(cli, "paused_one")
    first = wait_for(lambda: (t := task_view(run_view(cli, run_id), "long"))["state"] == "running" and t,
                     30, "the task to start")
    paused = first["node"]
    others = ",".join(n.grpc_address for n in cluster.nodes if n.node_id != paused)
    assert cluster.signal_node(paused, signal.SIGSTOP)
    try:
        second = wait_for(lambda: (t := task_view(run_view(cli, run_id, others), "long"))["attempt"] == 2 and t,
                          30, "attempt 2 after the paused node's lease expired")
        assert second["node"] != paused
    finally:
        cluster.signal_node(paused, signal.SIGCONT)
    run = wait_run_end(cli, run_id)
    assert run["state"] == "success"
    long = task_view(run, "long")
    assert long["attempt"] == 2 and long["exit_code"] == 0
    recorded = attempts.read(record)[(run_id, "long")]
    assert [r.attempt for r in recorded] == [1, 2]
    assert not recorded[0].finished
    assert recorded[0].last_seen < recorded[1].started, "the paused node's attempt overlapped attempt 2"
    log = cli("tasks", "logs", run_id, "long", "--attempt", "1")
    assert log.returncode == 0 and "its lease lapsed" in log.stdout


def test_quorum_loss_refuses_writes_serves_stale_reads_and_recovers(cluster, cli, tmp_path):
    record = tmp_path / "attempts.log"
    write_dag(tmp_path / "d.py", "quick", record, {"only": (0.2, [])})
    assert cli("dags", "submit", str(tmp_path / "d.py")).returncode == 0
    done = trigger(cli, "quick")
    assert wait_run_end(cli, done)["state"] == "success"

    survivor, *down = [n.node_id for n in cluster.nodes]
    for node in down:
        assert cluster.signal_node(node, signal.SIGKILL)
    only = Cli(cluster, cluster.node(survivor).grpc_address)
    def survivor_view() -> dict:
        return next(n for n in only.json("cluster", "status")["nodes"] if n["id"] == survivor)
    wait_for(lambda: not survivor_view()["has_quorum"], 15, "the survivor to notice it has no quorum")
    assert only.json("cluster", "status")["leader"] == "", "a node without quorum names no leader (not the dead one)"
    shown = only("cluster", "status")
    assert f"leader: NONE ({survivor} has no quorum" in shown.stdout, shown.stdout

    started = time.monotonic()
    proc = only("dags", "trigger", "quick", timeout=30)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no quorum" in proc.stderr and "nothing was changed" in proc.stderr, proc.stderr
    assert time.monotonic() - started < 5, "a refusal must be prompt, not a timeout"
    stale = wait_for(lambda: (r := only.json("runs", "show", done))["meta"]["possibly_stale"] and r, 15,
                     "reads marked possibly stale")
    assert stale["state"] == "success"
    listing = only.json("runs", "list")
    assert listing["meta"]["possibly_stale"] and listing["meta"]["served_by"] == survivor
    human = only("runs", "show", done)
    assert human.returncode == 0 and "may be out of date" in human.stderr
    runs_before = listing["runs"]

    cluster.start_node(down[0])
    wait_for(lambda: only("dags", "trigger", "quick").returncode == 0, 30, "writes to work again")
    assert len(only.json("runs", "list")["runs"]) == len(runs_before) + 1
