"""SSH tasks on a real 3-node cluster against a real OpenSSH server (both started here on
free loopback ports, stopped by their PIDs). n1 and n2 define the connections; n3 has
none, so it must never be given an ssh task.

Covers: `connections list`; a task whose connection no node has waits and says why;
`tasks logs --follow` shows remote output while the command runs; `runs cancel` kills
the remote command; host-key failures fail attempts and retries apply; and the node
running an ssh task killed mid-task: the attempt is fenced, the remote command dies
with its connection, and the task runs again on the other node with the connection.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import replace

import pytest

from raftflow.config import SSHConnection
from support import ROOT, Cli, alive, dump_node_logs, pid_from, wait_for

pytestmark = pytest.mark.integration

DAGS = r'''
from raftflow import DAG, SSHTask

with DAG("remote_stream"):
    SSHTask("stream", ssh_conn_id="spark_master",
            command="echo 'first on {{ ds }}'; while [ ! -e WORK/go ]; do sleep 0.05; done; echo second")

with DAG("no_connection"):
    SSHTask("stranded", ssh_conn_id="nowhere", command="true")

with DAG("cancel_me"):
    SSHTask("long", ssh_conn_id="spark_master", command="sleep 300 & echo $! > WORK/cancel.pid; wait")

with DAG("untrusted"):
    SSHTask("refused", ssh_conn_id="unverified", retries=1, retry_delay=0, command="touch WORK/never")

with DAG("survivor"):
    SSHTask("long", ssh_conn_id="spark_master", retries=0, command=(
        'if [ "$RAFTFLOW_ATTEMPT" = 1 ]; then sleep 300 & echo $! > WORK/first.pid; wait; fi; '
        'echo "attempt $RAFTFLOW_ATTEMPT on $RAFTFLOW_NODE_ID"'))
'''


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    from raftflow_dev.local import LocalCluster
    from raftflow_dev.sshd import LocalSSHServer, find_sshd

    if find_sshd()[0] is None:
        pytest.skip(find_sshd()[1])
    base = tmp_path_factory.mktemp("ssh_cluster")
    sshd = LocalSSHServer(base / "sshd").start()
    (base / "empty_known_hosts").write_text("")
    spark = SSHConnection(name="spark_master", host=sshd.host, port=sshd.port, user=sshd.user,
                          key_file=sshd.client_key, known_hosts=sshd.known_hosts, connect_timeout=5.0)
    unverified = replace(spark, name="unverified", known_hosts=base / "empty_known_hosts")
    cluster = LocalCluster(base / "cluster", nodes=3, slots=4,
                           connections={"n1": (spark, unverified), "n2": (spark, unverified)})
    try:
        cluster.start()
        cluster.wait_ready(30)
        work = base / "work"
        work.mkdir()
        dags = base / "dags.py"
        dags.write_text(DAGS.replace("WORK", str(work)))
        cli = Cli(cluster)
        submitted = cli("dags", "submit", str(dags))
        assert submitted.returncode == 0, submitted.stderr
        yield cluster, cli, work, sshd
    except BaseException:
        dump_node_logs(cluster)
        raise
    finally:
        cluster.stop()
        sshd.stop()


def trigger(cli: Cli, dag_id: str) -> str:
    return cli.json("dags", "trigger", dag_id)["run_id"]


def task_of(cli: Cli, run_id: str, task_id: str) -> dict:
    return next(t for t in cli.json("runs", "show", run_id)["tasks"] if t["task_id"] == task_id)


def test_connections_list_names_hosts_and_the_nodes_that_have_each(world):
    cluster, cli, work, sshd = world
    listed = cli.json("connections", "list")
    by_name = {c["name"]: c for c in listed["connections"]}
    assert set(by_name) == {"spark_master", "unverified"}
    spark = by_name["spark_master"]
    assert (spark["host"], spark["port"], spark["user"], spark["auth"], spark["nodes"]) == (
        sshd.host, sshd.port, sshd.user, "key", ["n1", "n2"])
    text = cli("connections", "list").stdout
    assert f"spark_master  {sshd.user}@{sshd.host}:{sshd.port}" in text and "n1,n2" in text, text
    assert sshd.client_key.read_text().splitlines()[1] not in text, "never a secret"


def test_a_task_whose_connection_no_node_has_waits_and_says_why(world):
    cluster, cli, work, sshd = world
    run_id = trigger(cli, "no_connection")
    reason = wait_for(lambda: task_of(cli, run_id, "stranded")["reason"], 20, "a waiting reason")
    assert reason.startswith("waiting: no live node serving queue 'default' has SSH connection 'nowhere'"), reason
    assert task_of(cli, run_id, "stranded")["state"] == "queued"
    assert cli("runs", "cancel", run_id).returncode == 0
    # No attempt, so no log; skipped is not a failure (exit 0), with and without --follow alike.
    said = "stranded ended skipped without running (no attempt, so no log): cancelled by the user"
    for follow in ([], ["--follow"]):
        logs = cli("tasks", "logs", run_id, "stranded", *follow, timeout=30)
        assert logs.returncode == 0 and said in logs.stderr, logs


def test_tasks_logs_follow_shows_remote_output_while_the_command_runs(world):
    cluster, cli, work, sshd = world
    run_id = trigger(cli, "remote_stream")
    follow = subprocess.Popen([sys.executable, "-m", "raftflow_cli.main", "--cluster", cluster.addresses,
                               "tasks", "logs", run_id, "stream", "--follow"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=cli.env)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in follow.stdout], daemon=True).start()
    try:
        seen: list[str] = []
        wait_for(lambda: seen.extend(_drain(lines)) or any(s.startswith("first on ") for s in seen), 30,
                 "the first remote line through --follow")
        assert not any(s.startswith("second") for s in seen), "the command is still waiting"
        assert not (work / "go").exists()
        (work / "go").touch()
        assert follow.wait(30) == 0, follow.stderr.read()
        wait_for(lambda: seen.extend(_drain(lines)) or "second\n" in seen, 10, "the rest of the log")
    finally:
        if follow.poll() is None:
            follow.kill()
    node = task_of(cli, run_id, "stream")["node"]
    assert node in ("n1", "n2"), f"n3 has no connection, yet ran it: {node}"
    assert wait_for(lambda: cli.json("runs", "show", run_id)["state"] == "success", 20, "the run to succeed")


def _drain(lines: queue.Queue) -> list[str]:
    out = []
    while not lines.empty():
        out.append(lines.get_nowait())
    return out


def test_runs_cancel_kills_the_remote_command(world):
    cluster, cli, work, sshd = world
    run_id = trigger(cli, "cancel_me")
    remote = pid_from(work / "cancel.pid")
    assert alive(remote)
    assert cli("runs", "cancel", run_id).returncode == 0
    wait_for(lambda: not alive(remote), 15, f"remote process {remote} to be killed")
    log = wait_for(lambda: (lambda text: "remote command exited" in text and text)(
        cli("tasks", "logs", run_id, "long").stdout), 15, "the attempt's log to end")
    assert "raftflow: cancelled by the user: sending SIGTERM to the process group" in log, log
    assert "raftflow: sent SIGTERM to the remote command's process group" in log, log


def test_an_unverified_host_fails_every_attempt_with_the_fingerprint_and_retries_apply(world):
    cluster, cli, work, sshd = world
    run_id = trigger(cli, "untrusted")
    wait_for(lambda: cli.json("runs", "show", run_id)["state"] == "failed", 60, "the run to fail")
    task = task_of(cli, run_id, "refused")
    assert (task["state"], task["attempt"]) == ("failed", 2), task
    assert task["reason"].startswith(f"host key of [{sshd.host}]:{sshd.port} is not in known_hosts"), task["reason"]
    assert "SHA256:" in task["reason"]
    assert not (work / "never").exists()


def test_the_ssh_form_of_mlexpert_dag_runs_its_spark_jobs_on_the_remote_host(world):
    cluster, cli, work, sshd = world
    assert cli("dags", "submit", str(ROOT / "dags" / "mlexpert_ssh_dag.py")).returncode == 0
    assert cli("dags", "unpause", "mlexpert_ssh_dag").returncode == 0
    triggered = cli("dags", "trigger", "mlexpert_ssh_dag", "--wait", "--json", timeout=120)
    run = json.loads(triggered.stdout)
    assert run["state"] == "success", triggered.stdout + triggered.stderr
    tasks = {t["task_id"]: t for t in run["tasks"]}
    assert {t["node"] for t in tasks.values()} <= {"n1", "n2"}
    log = cli("tasks", "logs", run["run_id"], "generate_training_data").stdout
    day = run["logical_date"][:10]
    assert f"s3://bucket_name/generate_training_data.py {day}" in log, log
    assert f"done: generate_training_data.py for {day}" in log, log
    assert cli("dags", "pause", "mlexpert_ssh_dag").returncode == 0


def test_killing_the_node_mid_task_fences_the_attempt_and_runs_it_again_elsewhere(world):
    cluster, cli, work, sshd = world
    run_id = trigger(cli, "survivor")
    remote = pid_from(work / "first.pid")
    victim = task_of(cli, run_id, "long")["node"]
    assert victim in ("n1", "n2")
    assert cluster.signal_node(victim, signal.SIGKILL)
    survivors = ",".join(n.grpc_address for n in cluster.nodes if n.node_id != victim)
    wait_for(lambda: cli.json("runs", "show", run_id, cluster=survivors)["state"] == "success", 60,
             "the run to succeed on the other node")
    task = next(t for t in cli.json("runs", "show", run_id, cluster=survivors)["tasks"] if t["task_id"] == "long")
    other = ({"n1", "n2"} - {victim}).pop()
    assert (task["attempt"], task["node"]) == (2, other), task
    assert cli("tasks", "logs", run_id, "long", cluster=survivors).stdout.splitlines()[-1] == f"attempt 2 on {other}"
    wait_for(lambda: not alive(remote), 20, f"attempt 1's remote process {remote} to die with its connection")
    cluster.start_node(victim)
