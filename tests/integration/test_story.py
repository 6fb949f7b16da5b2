"""`raftflow tasks story`: the story of a task that failed once (and was retried),
lost its next attempt to a node killed with kill -9 (and ran again elsewhere), and
was then marked by hand - every move in order with its Raft index, command, node,
attempt and who asked, read from a surviving node.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from support import Cli, dump_node_logs, running_cluster, wait_for

pytestmark = pytest.mark.integration

# Attempt 1 fails, attempt 2 runs until its node is killed, attempt 3 succeeds.
COMMAND = 'case "$RAFTFLOW_ATTEMPT" in 1) exit 3;; 2) sleep 60;; esac; echo done'
DAG = f"""from raftflow import DAG, BashTask
with DAG("storied") as dag:
    BashTask("flaky", command={COMMAND!r}, retries=1, retry_delay=0)
"""


def task_view(cli: Cli, run_id: str, cluster: str | None = None) -> dict:
    run = cli.json("runs", "show", run_id, cluster=cluster)
    return {**next(t for t in run["tasks"] if t["task_id"] == "flaky"), "run_state": run["state"]}


def test_the_story_of_a_retried_task_that_lost_an_attempt_to_a_killed_node(tmp_path: Path):
    # The shortest lease config.py accepts (3.4 s: fallback 1 s + a 200 ms heartbeat round +
    # the 0.5 s margin, doubled): the loss is noticed sooner.
    with running_cluster(tmp_path / "cluster", extra_env={"RAFTFLOW_LEASE_TIMEOUT": "3.4"}) as cluster:
        cli = Cli(cluster)
        try:
            (tmp_path / "storied.py").write_text(DAG)
            assert cli("dags", "submit", str(tmp_path / "storied.py")).returncode == 0
            run_id = cli.json("dags", "trigger", "storied")["run_id"]
            second = wait_for(lambda: (t := task_view(cli, run_id))["attempt"] == 2 and t["state"] == "running" and t,
                              30, "attempt 2 to run")
            victim = second["node"]
            assert cluster.signal_node(victim, signal.SIGKILL)

            survivors = Cli(cluster, ",".join(n.grpc_address for n in cluster.nodes if n.node_id != victim))
            done = wait_for(lambda: (t := task_view(survivors, run_id))["run_state"] == "success" and t,
                            60, "the run to succeed on the survivors")
            assert done["attempt"] == 3 and done["node"] != victim
            proc = survivors("tasks", "mark", run_id, "flaky", "failed")
            assert proc.returncode == 0, proc.stderr

            story = wait_for(lambda: (s := survivors.json("tasks", "story", run_id, "flaky"))["events"][-1]["command"]
                             == "mark_task" and s, 10, "the mark in the story")
            text = survivors("tasks", "story", run_id, "flaky")
        except BaseException:
            dump_node_logs(cluster)
            raise

    events = story["events"]
    assert [(e["command"], e["before"], e["after"], e["attempt"]) for e in events] == [
        ("queue_task", "pending", "queued", 0),
        ("assign_task", "queued", "assigned", 1),
        ("task_started", "assigned", "running", 1),
        ("task_finished", "running", "up_for_retry", 1),      # exit 3: one retry left
        ("queue_task", "up_for_retry", "queued", 1),
        ("assign_task", "queued", "assigned", 2),
        ("task_started", "assigned", "running", 2),
        ("lose_attempt", "running", "queued", 2),             # its node was killed: no retry used
        ("assign_task", "queued", "assigned", 3),
        ("task_started", "assigned", "running", 3),
        ("task_finished", "running", "success", 3),
        ("mark_task", "success", "failed", 3),
    ], json.dumps(events, indent=1)
    indexes = [e["index"] for e in events]
    assert all(i > 0 for i in indexes) and indexes == sorted(indexes), indexes
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    nodes = {n.node_id for n in cluster.nodes}
    # Workers claim their start and report their result themselves; the leader plans
    # the rest; the mark came through the client API, made with the admin token.
    for e in events:
        if e["command"] in ("task_started", "task_finished"):
            assert e["proposer"] == e["node"], e
        elif e["command"] == "mark_task":
            assert e["proposer"] == "token:admin", e   # the admin token tools/up gives the CLI
        else:
            assert e["proposer"] in nodes, e
    assert events[6]["node"] == events[7]["node"] == victim
    assert events[7]["proposer"] != victim and "lost" in events[7]["reason"]
    assert events[3]["reason"] == "attempt 1 exit 3"
    assert story["state"] == "failed"

    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == f"{run_id}/flaky: failed, 12 recorded move(s), oldest first"
    assert lines[1].split() == ["INDEX", "TIME", "COMMAND", "NODE", "ATTEMPT", "ASKED", "BY", "MOVE", "REASON"]
    rows = lines[3:]
    assert len(rows) == 12
    assert rows[7].split()[:7] == [str(events[7]["index"]), events[7]["at"], "lose_attempt", victim, "2",
                                   events[7]["proposer"], "running"]
    assert "running -> queued" in rows[7] and "token:admin" in rows[11] and "success -> failed" in rows[11]
