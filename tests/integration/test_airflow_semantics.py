"""Airflow's semantics on a real 3-node cluster (#19): a bash task exiting with one of
its skip_on_exit_code ends skipped, its all_success downstream is skipped and the run
succeeds; depends_on_past holds a task until its previous run's instance is done well;
Variables set with the CLI reach a template and a secret one is masked in the log."""

from __future__ import annotations

import json
import signal
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from support import Cli, running_cluster, wait_for

pytestmark = pytest.mark.integration


def spec(dag_id: str, tasks: list[dict[str, Any]], **dag: Any) -> dict[str, str]:
    return {"spec_json": json.dumps({"dag_id": dag_id, "tasks": tasks, **dag}), "source": "# written for the test",
            "filename": f"{dag_id}.py"}


def finished(client: Any, run_id: str, timeout: float = 60) -> dict[str, Any]:
    return wait_for(lambda: (lambda r: r if r["state"] in ("success", "failed") else None)(
        client.get_run(run_id)), timeout=timeout, what=f"run {run_id} to finish")


def states(run: dict[str, Any]) -> dict[str, str]:
    return {t["task_id"]: t["state"] for t in run["tasks"]}


VARS_DAG = '''
from raftflow import DAG, BashTask

with DAG("uses_vars"):
    BashTask("show", command="echo table={{ var.value.table }} pw={{ var.value.db_password }} "
                             "n={{ var.json.cfg.n }} key={{ task_instance_key_str }} try={{ ti.try_number }}")
'''


def test_skip_on_exit_code_depends_on_past_and_variables(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "cluster") as cluster, closing(cluster.client()) as client:
        cli = Cli(cluster)
        marker = tmp_path / "ok"
        client.submit([
            spec("skippy", [
                {"task_id": "check", "kind": "bash", "command": "echo checking; exit 99", "skip_on_exit_code": [99],
                 "retries": 2, "doc_md": "Exits 99: *skips*."},
                {"task_id": "after", "kind": "bash", "command": "true", "upstream": ["check"], "group": "tail"},
                {"task_id": "anyway", "kind": "bash", "command": "true", "upstream": ["check"],
                 "trigger_rule": "none_failed", "group": "tail"},
            ], description="skips on 99", tags=["airflow", "skip"], doc_md="# Skippy\nShows skips."),
            spec("pastdep", [
                {"task_id": "step", "kind": "bash", "command": f"test -e {marker}", "depends_on_past": True},
            ]),
        ])

        shown = cli("dags", "show", "skippy").stdout
        assert "description: skips on 99\ntags: airflow, skip\n" in shown, shown
        assert "GROUP" in shown and "--- doc_md ---\n# Skippy\nShows skips." in shown
        assert "--- check: doc_md ---\nExits 99: *skips*." in shown
        assert [line.split()[1] for line in shown.splitlines() if line.startswith(("after ", "anyway "))] == \
            ["tail", "tail"]

        # skip_on_exit_code: skipped from running, no retry used; the run succeeds.
        run = finished(client, client.trigger("skippy")["run_id"])
        assert states(run) == {"check": "skipped", "after": "skipped", "anyway": "success"}, run
        assert run["state"] == "success"
        check = next(t for t in run["tasks"] if t["task_id"] == "check")
        assert check["attempt"] == 1 and check["exit_code"] == 99
        assert cli("tasks", "logs", run["run_id"], "check").stdout == "checking\n"

        # depends_on_past: the second run's step waits for the first run's, which failed ...
        first = finished(client, client.trigger("pastdep")["run_id"])
        assert first["state"] == "failed"
        second_id = client.trigger("pastdep")["run_id"]
        assert second_id != first["run_id"]
        waiting = wait_for(lambda: (lambda t: t if "depends_on_past" in t["reason"] else None)(
            next(t for t in client.get_run(second_id)["tasks"] if t["task_id"] == "step")),
            timeout=30, what="the second run's step to say it waits for the previous run")
        assert waiting["state"] == "pending"
        assert waiting["reason"] == "waiting for the previous run's step (depends_on_past): it is failed"
        # ... until that one is marked success by hand; then it runs (and succeeds).
        marker.write_text("")
        assert cli("tasks", "mark", first["run_id"], "step", "success").returncode == 0
        second = finished(client, second_id)
        assert states(second) == {"step": "success"}, second

        # Variables set with the CLI, read by a template; the secret one is masked in the log.
        assert cli("variables", "set", "table", "orders").returncode == 0
        assert cli("variables", "set", "db_password", "hunter22").returncode == 0
        imported = tmp_path / "vars.json"
        imported.write_text(json.dumps({"cfg": {"n": 3}}))
        proc = cli("variables", "import", str(imported))
        assert proc.returncode == 0 and "imported 1 variable(s)" in proc.stdout, proc.stderr
        listed = cli.json("variables", "list")["variables"]
        assert {v["key"]: v["value"] for v in listed} == {"cfg": '{"n": 3}', "db_password": "hunter22",
                                                           "table": "orders"}, "an admin sees every value"
        viewer = cli.json("tokens", "create", "watcher", "--role", "viewer")["secret"]
        as_viewer = Cli(cluster)
        as_viewer.env["RAFTFLOW_TOKEN"] = viewer
        masked = {v["key"]: v["value"] for v in as_viewer.json("variables", "list")["variables"]}
        assert masked == {"cfg": '{"n": 3}', "db_password": "***", "table": "orders"}
        assert as_viewer("variables", "get", "db_password").stdout == "***\n"
        refused = as_viewer("variables", "set", "table", "x")
        assert refused.returncode != 0 and "SetVariable needs role operator" in refused.stderr, refused.stderr
        dags = tmp_path / "vars_dag.py"
        dags.write_text(VARS_DAG)
        assert cli("dags", "submit", str(dags)).returncode == 0
        run = finished(client, client.trigger("uses_vars")["run_id"])
        assert run["state"] == "success", run
        log = cli("tasks", "logs", run["run_id"], "show").stdout
        day = run["logical_date"][:10].replace("-", "")
        assert log == f"table=orders pw=*** n=3 key=uses_vars__show__{day} try=1\n", log
        assert cli("variables", "delete", "table").returncode == 0
        assert cli("variables", "get", "table").returncode != 0


def test_trigger_dagrun_waits_for_its_run_and_triggers_once_across_a_leader_kill(tmp_path: Path) -> None:
    """One slot per node; two blockers hold the followers' slots (followers get work first),
    so the trigger task runs on the leader, which is killed while the trigger waits for
    its run: the attempt is lost, runs again on a survivor, finds the run it created (its
    id derives from run, task and try) and waits for that one; the child DAG has one run,
    and the parent succeeds by its state."""
    marker = tmp_path / "go"
    with running_cluster(tmp_path / "cluster", slots=1) as cluster, closing(cluster.client()) as client:
        wait_marker = f"while [ ! -e {marker} ]; do sleep 0.1; done"
        client.submit([
            spec("blocker", [{"task_id": "b1", "kind": "bash", "command": wait_marker},
                             {"task_id": "b2", "kind": "bash", "command": wait_marker}]),
            spec("child", [{"task_id": "work", "kind": "bash", "command": "echo child ran"}]),
            spec("parent", [{"task_id": "kick", "kind": "trigger_dagrun", "trigger_dag_id": "child",
                             "conf": {"day": "{{ ds }}"}, "wait_for_completion": True, "poke_interval": 0.2}]),
        ])
        blocker = client.trigger("blocker")["run_id"]
        wait_for(lambda: all(t["state"] == "running" for t in client.get_run(blocker)["tasks"]), timeout=60,
                 what="both blockers running")
        parent = client.trigger("parent")["run_id"]
        kick = wait_for(lambda: (lambda t: t if t["state"] == "running" else None)(
            client.get_run(parent)["tasks"][0]), timeout=60, what="the trigger task running")
        child_runs = wait_for(lambda: client.list_runs("child")["runs"], timeout=30, what="the child run")
        assert len(child_runs) == 1 and child_runs[0]["run_id"].startswith("triggered__child__")
        # The followers' slots were taken, so the trigger runs on the node that led when it was
        # placed; that node is killed (still the leader unless a load-made election moved it).
        leader = kick["node"]
        assert {t["node"] for t in client.get_run(blocker)["tasks"]} == {n.node_id for n in cluster.nodes} - {leader}
        assert cluster.signal_node(leader, signal.SIGKILL)

        survivors = [n.grpc_address for n in cluster.nodes if n.node_id != leader]
        marker.write_text("")
        with closing(cluster.client(survivors)) as rest:
            run = finished(rest, parent, timeout=120)
            assert run["state"] == "success", run
            kick = run["tasks"][0]
            assert kick["attempt"] >= 2 and kick["node"] != leader, kick
            runs = rest.list_runs("child")["runs"]
            assert [r["run_id"] for r in runs] == [child_runs[0]["run_id"]], "triggered once"
            assert runs[0]["state"] == "success"
            child = rest.get_run(runs[0]["run_id"])
            assert child["conf"] == {"day": run["logical_date"][:10]}
            log = Cli(cluster, ",".join(survivors))("tasks", "logs", parent, "kick").stdout
            assert "exists already" in log and "not triggering again" in log, log


def test_ssh_cmd_timeout_stops_the_remote_command_and_fails_the_attempt(tmp_path: Path) -> None:
    """Airflow's SSHOperator cmd_timeout, against a real OpenSSH server: past it the remote
    command's process group is stopped and the attempt fails saying so."""
    import sys

    from raftflow.config import SSHConnection
    from raftflow.core import commands as c
    from raftflow.core.spec import DagSpec
    from raftflow.worker.worker import Assignment, AttemptSetup
    from raftflow_dev.sshd import LocalSSHServer, find_sshd

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    from worker_support import make_worker

    if find_sshd()[0] is None:
        pytest.skip(find_sshd()[1])
    sshd = LocalSSHServer(tmp_path / "sshd").start()
    try:
        conn = SSHConnection(name="box", host=sshd.host, port=sshd.port, user=sshd.user, key_file=sshd.client_key,
                             known_hosts=sshd.known_hosts, connect_timeout=5.0)
        command = "echo started; sleep 30"
        task = DagSpec.from_dict({"dag_id": "d", "tasks": [{"task_id": "t", "kind": "ssh", "ssh_conn_id": "box",
                                                             "command": command, "cmd_timeout": 1}]}).task("t")
        worker, reports, store = make_worker(tmp_path, current=True, setup=AttemptSetup({}, None, task),
                                             connections=(conn,))
        try:
            assert worker.accept(Assignment("r1", "t", 1, "d", "ssh", command, {}, "")) == (True, "")
            done = reports.wait_for(c.TaskFinished, timeout=30)
        finally:
            worker.shutdown()
        assert isinstance(done, c.TaskFinished)
        assert done.exit_code == 255 and done.reason == "SSH command timed out after 1s (cmd_timeout)", done
        assert done.ended_at - done.started_at < 15
        log = b"".join(store.read_log("r1", "t", 1)).decode()
        assert "started" in log and "sent SIGTERM to the remote command's process group" in log, log
    finally:
        sshd.stop()
