"""A real 3-node cluster runs DAGs end to end, driven through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import grpc
import pytest
import yaml

from raftflow_dev.local import free_ports
from support import ROOT, wait_for

pytestmark = pytest.mark.integration

PARALLEL = ("aggregate_search_interaction", "aggregate_user_features")
JOIN = "generate_training_data"


def _t(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def test_mlexpert_dag_runs_in_dependency_order_across_nodes(cluster, cli):
    # dags/mlexpert_dag.py is the Airflow file (SSH, for tools/up --ssh-demo); its bash stand-in runs here.
    submitted = cli("dags", "submit", str(ROOT / "dags"))
    assert submitted.returncode == 0, submitted.stderr
    assert "mlexpert_dag" in submitted.stdout and "mlexpert_local_dag" in submitted.stdout

    triggered = cli("dags", "trigger", "mlexpert_local_dag", "--wait", "--json", timeout=120)
    assert triggered.returncode == 0, triggered.stderr + triggered.stdout
    run = json.loads(triggered.stdout)
    assert run["state"] == "success"
    tasks = {t["task_id"]: t for t in run["tasks"]}
    assert all(t["state"] == "success" and t["exit_code"] == 0 and t["attempt"] == 1 for t in tasks.values())

    a, b, join = tasks[PARALLEL[0]], tasks[PARALLEL[1]], tasks[JOIN]
    assert _t(a["started_at"]) < _t(b["ended_at"]) and _t(b["started_at"]) < _t(a["ended_at"]), \
        "the two parallel tasks did not overlap in time"
    assert _t(join["started_at"]) >= max(_t(a["ended_at"]), _t(b["ended_at"])), "the join started before both ended"
    assert len({t["node"] for t in tasks.values()}) >= 2, "all tasks ran on one node"

    # Every node reports the same run state (followers may lag a moment behind).
    def same_everywhere():
        views = []
        for address in cluster.addresses.split(","):
            view = cli.json("runs", "show", run["run_id"], cluster=address)
            view.pop("meta")
            views.append(view)
        return all(v == views[0] for v in views) and views[0]["state"] == "success"
    wait_for(same_everywhere, 10, "every node to report the same run state")

    # A task's log can be read through any node, whichever ran it.
    for address in cluster.addresses.split(","):
        logs = cli("tasks", "logs", run["run_id"], JOIN, cluster=address)
        assert logs.returncode == 0, logs.stderr
        assert f"[{join['node']}] spark-submit s3://bucket_name/generate_training_data.py" in logs.stdout
        assert "done: generate_training_data.py" in logs.stdout


def test_task_environment_and_failure_reporting(cluster, cli, tmp_path: Path):
    dag_file = tmp_path / "env_dag.py"
    dag_file.write_text(
        "from raftflow import DAG, BashTask\n"
        "with DAG('env_check') as dag:\n"
        "    BashTask('show_env', command='env | grep ^RAFTFLOW_ | sort')\n"
        "    BashTask('fails', command='echo about to fail >&2; exit 7')\n"
    )
    assert cli("dags", "submit", str(dag_file)).returncode == 0
    proc = cli("dags", "trigger", "env_check", "--wait", "--json", timeout=60)
    assert proc.returncode == 1, "a failed run must exit 1 under --wait"
    run = json.loads(proc.stdout)
    assert run["state"] == "failed"
    tasks = {t["task_id"]: t for t in run["tasks"]}
    assert tasks["fails"]["state"] == "failed" and tasks["fails"]["exit_code"] == 7
    assert "about to fail" in tasks["fails"]["log_tail"]

    env = dict(line.split("=", 1) for line in cli("tasks", "logs", run["run_id"], "show_env").stdout.splitlines())
    assert env["RAFTFLOW_DAG_ID"] == "env_check"
    assert env["RAFTFLOW_RUN_ID"] == run["run_id"]
    assert env["RAFTFLOW_TASK_ID"] == "show_env"
    assert env["RAFTFLOW_ATTEMPT"] == "1"
    assert env["RAFTFLOW_NODE_ID"] == tasks["show_env"]["node"]
    assert _t(env["RAFTFLOW_LOGICAL_DATE"]).utcoffset().total_seconds() == 0
    assert env["RAFTFLOW_LOGICAL_DATE"] == run["logical_date"]


def test_cluster_status_shows_one_leader_and_healthy_nodes(cluster, cli):
    status = wait_for(lambda: (s := cli.json("cluster", "status")) and
                      all(n["healthy"] for n in s["nodes"]) and s, 10, "all nodes healthy")
    assert status["leader"] in {n.node_id for n in cluster.nodes}
    roles = sorted(n["role"] for n in status["nodes"])
    assert roles == ["follower", "follower", "leader"]
    pids = {n.node_id: n.pid() for n in cluster.nodes}
    for node in status["nodes"]:
        assert node["pid"] == pids[node["id"]]
        assert node["raft_term"] >= 1 and node["commit_index"] >= 1
        assert "running_tasks" in node


BAD_FILES = {
    "cycle.py": ("from raftflow import DAG, BashTask\nwith DAG('cyc'):\n"
                 "    a = BashTask('a', command='true'); b = BashTask('b', command='true')\n    a >> b >> a\n",
                 "dependency cycle"),
    "raises.py": ("from raftflow import DAG, BashTask\nwith DAG('raiser'):\n    BashTask('a', command='true')\n"
                  "raise RuntimeError('warehouse unreachable')\n", "line 4: RuntimeError: warehouse unreachable"),
    "hangs.py": ("import time\nwhile True:\n    time.sleep(1)\n", "did not finish loading within"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_dag_files_are_refused_and_nothing_is_submitted(cluster, cli, tmp_path: Path, name: str):
    source, message = BAD_FILES[name]
    (tmp_path / name).write_text(source)
    good = tmp_path / "good.py"
    good.write_text("from raftflow import DAG, BashTask\n"
                    "with DAG('good_neighbour'):\n    BashTask('a', command='true')\n")
    before = cli.json("dags", "list")["dags"]
    proc = cli("dags", "submit", str(tmp_path / name), str(good), "--load-timeout", "3")
    assert proc.returncode == 2
    assert message in proc.stderr and "nothing was submitted" in proc.stderr
    assert cli.json("dags", "list")["dags"] == before


@pytest.mark.parametrize("args, message", [
    (("dags", "trigger", "no_such_dag"), "no DAG 'no_such_dag'"),
    (("dags", "trigger", "mlexpert_dag", "--conf", "{not json"), "--conf is not valid JSON"),
    (("dags", "trigger", "mlexpert_dag", "--conf", "[1, 2]"), "--conf must be a JSON object"),
    (("dags", "show", "no_such_dag"), "no DAG 'no_such_dag'"),
    (("runs", "show", "no_such_run"), "no run 'no_such_run'"),
])
def test_bad_requests_exit_2_with_a_clear_message(cluster, cli, args, message):
    before = cli.json("runs", "list")["runs"]
    proc = cli(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert cli.json("runs", "list")["runs"] == before


def test_unreachable_cluster_exits_3(cli):
    from raftflow_dev.local import free_ports

    proc = cli("dags", "list", cluster=f"127.0.0.1:{free_ports(1)[0]}")
    assert proc.returncode == 3
    assert "no raftflow node answered" in proc.stderr


def test_peer_api_refuses_calls_without_the_cluster_token(cluster):
    from raftflow.proto import client_pb2, peer_pb2, peer_pb2_grpc

    with cluster.channel(cluster.nodes[0].grpc_address) as channel:   # the client port serves no peer API
        with pytest.raises(grpc.RpcError) as caught:
            peer_pb2_grpc.PeerStub(channel).RunTask(peer_pb2.TaskAssignment(run_id="r", task_id="t", attempt=1,
                                                                            node="n1"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # A member's certificate gets a caller through the peer port's TLS; the token is still required.
    with cluster.peer_channel("n1", as_node="n2") as channel:
        stub = peer_pb2_grpc.PeerStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.RunTask(peer_pb2.TaskAssignment(run_id="r", task_id="t", attempt=1, kind="bash",
                                                 command="touch /tmp/should-not-exist", node="n1"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.ReadTaskLog(client_pb2.GetTaskLogRequest(run_id="r", task_id="t", attempt=1),
                                  metadata=(("x-raftflow-peer-token", "wrong"),), timeout=5))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as caught:
            stub.AppendLogCopy(peer_pb2.LogCopyPart(run_id="r", task_id="t", attempt=1, node="n2", data=b"x"),
                               timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_log_copies_are_taken_only_from_the_node_that_ran_the_attempt_and_bounded(cluster):
    """The peer API's AppendLogCopy with the cluster token: a node ships its own logs
    only, in parts of at most 1 MiB, with ids that can name an attempt."""
    from raftflow.api.peers import TOKEN_HEADER, peer_token
    from raftflow.proto import peer_pb2, peer_pb2_grpc

    token = ((TOKEN_HEADER, peer_token(cluster.secret_file.read_text().strip())),)
    with cluster.peer_channel("n1", as_node="n2") as channel:
        stub = peer_pb2_grpc.PeerStub(channel)

        def refused(part: peer_pb2.LogCopyPart) -> grpc.RpcError:
            with pytest.raises(grpc.RpcError) as caught:
                stub.AppendLogCopy(part, metadata=token, timeout=5)
            return caught.value

        other = refused(peer_pb2.LogCopyPart(run_id="r", task_id="t", attempt=1, node="n3", data=b"x"))
        assert other.code() == grpc.StatusCode.PERMISSION_DENIED and "ships only its own logs" in other.details()
        big = refused(peer_pb2.LogCopyPart(run_id="r", task_id="t", attempt=1, node="n2", data=b"x" * ((1 << 20) + 1)))
        assert big.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 1048576 bytes" in big.details()
        bad_id = refused(peer_pb2.LogCopyPart(run_id="r", task_id="../t", attempt=1, node="n2", data=b"x"))
        assert bad_id.code() == grpc.StatusCode.INVALID_ARGUMENT and "is not a task id" in bad_id.details()
        key = peer_pb2.AttemptKey(run_id="r-copies-check", task_id="t", attempt=1)
        assert [p.found for p in stub.ReadLogCopy(key, metadata=token, timeout=5)] == [False]
        ack = stub.AppendLogCopy(peer_pb2.LogCopyPart(run_id=key.run_id, task_id="t", attempt=1, node="n2",
                                                      data=b"hello\n", final=True), metadata=token, timeout=5)
        assert ack.end == 6
        parts = list(stub.ReadLogCopy(key, metadata=token, timeout=5))
        assert [(p.node, p.data, p.final, p.end) for p in parts] == [("n2", b"hello\n", True, 6)]


def test_a_flooding_task_is_capped_and_the_cluster_keeps_scheduling(cluster, cli, tmp_path: Path):
    """`yes` until the test has seen enough: its log stops at task_log_limit (64 MiB) with
    a note where it was cut, and while it floods every node stays healthy (heartbeats
    flow) and another run is scheduled and finishes. (The flood ends only once the test
    made its stop file, so whatever the test saw before, it saw during the flood.)"""
    started, stop = tmp_path / "flooding", tmp_path / "stop-flooding"
    flood_command = (f"touch {started}; yes raftflow-flood & pid=$!; "
                     f"timeout 120 sh -c 'until [ -e {stop} ]; do sleep 0.1; done'; kill $pid")
    (tmp_path / "flood.py").write_text(
        "from raftflow import DAG, BashTask\n"
        "with DAG('flood') as dag:\n"
        f"    BashTask('yes', command={flood_command!r})\n"
        "with DAG('beside_flood') as dag2:\n"
        "    BashTask('small', command='echo small task ran')\n")
    assert cli("dags", "submit", str(tmp_path / "flood.py")).returncode == 0
    flood = json.loads(cli("dags", "trigger", "flood", "--json").stdout)["run_id"]
    try:
        wait_for(started.exists, 30, "the flood to start")
        beside = cli("dags", "trigger", "beside_flood", "--wait", "--json", timeout=60)
        assert beside.returncode == 0 and json.loads(beside.stdout)["state"] == "success", \
            beside.stdout + beside.stderr
        status = cli.json("cluster", "status")
        assert all(n["healthy"] for n in status["nodes"]), status["nodes"]
    finally:
        stop.touch()
    run = wait_for(lambda: (r := cli.json("runs", "show", flood))["state"] in ("success", "failed") and r, 60,
                   "the flood to end")
    assert run["state"] == "success", run
    logs = cli("tasks", "logs", flood, "yes", timeout=120)
    assert logs.returncode == 0, logs.stderr
    limit = 64 * 1024 * 1024
    assert logs.stdout.startswith("raftflow-flood\nraftflow-flood\n")
    cut_note = "raftflow: the log is cut here: this attempt's output passed the node's task_log_limit"
    assert limit <= len(logs.stdout) < limit + 1000 and cut_note in logs.stdout[limit:], logs.stdout[limit:]


def test_cli_edges_a_new_user_meets(cluster, cli, tmp_path: Path):
    """Issue #17 part 5 through the real CLI: a negative --limit, runs list's filters
    (answered by the node), logs of tasks that never ran with and without -f, options
    after the verb, -o yaml."""
    dag_file = tmp_path / "edges.py"
    dag_file.write_text(
        "from raftflow import DAG, BashTask, EmptyTask\n"
        "with DAG('cli_edges') as dag:\n"
        "    EmptyTask('start') >> BashTask('boom', command='exit 3') >> BashTask('after', command='echo never')\n"
    )
    assert cli("dags", "submit", str(dag_file)).returncode == 0
    run = json.loads(cli("dags", "trigger", "cli_edges", "--wait", "--json", timeout=60).stdout)
    assert run["state"] == "failed"

    bad = cli("runs", "list", "--limit", "-1")
    assert bad.returncode == 2 and "--limit is 0 to 4,294,967,295 (0: 50), not -1" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr

    listed = cli.json("runs", "list", "--dag", "cli_edges", "--state", "failed", "--since", "10m")["runs"]
    assert [r["run_id"] for r in listed] == [run["run_id"]]   # (the filters' cases: test_api_operations.py)

    plain, follow = cli("tasks", "logs", run["run_id"], "after"), cli("tasks", "logs", run["run_id"], "after", "-f")
    assert (plain.returncode, plain.stderr) == (follow.returncode, follow.stderr) == (1, plain.stderr)
    assert "after ended upstream_failed without running (no attempt, so no log)" in plain.stderr, plain.stderr
    empty = cli("tasks", "logs", run["run_id"], "start")   # an empty task, succeeded
    assert (empty.returncode, empty.stderr.strip()) == (0, "start ended success without running (no attempt, "
                                                            "so no log)")

    # `tasks mark` reopens the run, which ends again at once: its duration is the re-run's, and says so.
    client = cluster.client()
    try:
        client.mark_task(run["run_id"], "boom", "success")
        wait_for(lambda: (lambda r: r["ended_at"] and r["started_at"] != run["started_at"])(
            client.get_run(run["run_id"])), 30, "the reopened run to end again")
    finally:
        client.close()
    shown = cli("runs", "show", run["run_id"])
    assert "since it was reopened; " in shown.stdout.splitlines()[0], shown.stdout

    def after_the_verb(*args: str) -> subprocess.CompletedProcess:   # no --cluster before the group
        return subprocess.run([sys.executable, "-m", "raftflow_cli.main", *args], capture_output=True, text=True,
                              timeout=60, cwd=ROOT, env=cli.env)

    answered = after_the_verb("runs", "list", "--dag", "cli_edges", "--cluster", cli.addresses, "-o", "yaml")
    assert answered.returncode == 0, answered.stderr
    assert [r["run_id"] for r in yaml.safe_load(answered.stdout)["runs"]] == [run["run_id"]]
    nowhere = after_the_verb("dags", "list", "--cluster", f"127.0.0.1:{free_ports(1)[0]}", "--retry-for", "0")
    assert nowhere.returncode == 3, nowhere.stderr   # the --cluster after the verb was the one used
