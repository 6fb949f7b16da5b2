"""What a task sees on a real 3-node cluster (issue 14, item 5): with run_as_user, a
DAG's task cannot print the cluster secret file, list the node's data directory or
read the node's environment, and its own environment holds none of the node's
variables; its result still reaches the run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from support import Cli, dump_node_logs, running_cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from throwaway_user import reachable_dir, task_python, task_user  # noqa: E402

pytestmark = pytest.mark.integration

PLANTED = "planted-node-variable-value-7f3a"

DAG = '''
from raftflow import DAG, BashTask, PythonTask

with DAG("peek", default_args={{"retries": 0}}):
    BashTask("whoami", command='echo "user=$(id -un) home=$HOME day={{{{ ds }}}}"')
    BashTask("secret", command="cat {secret}")
    BashTask("data_dir", command="ls {data_dir}")
    BashTask("node_env", command="cat /proc/$PPID/environ")
    BashTask("own_env", command="env")
    BashTask("result", command='echo "{{\\\\"cwd\\\\": \\\\"$(pwd -P)\\\\"}}" > "$RAFTFLOW_RESULT_FILE"')
    PythonTask("python", python_callable="peek_steps:who")
'''

STEPS = '''
import os, pwd

def who():
    return {"user": pwd.getpwuid(os.getuid()).pw_name, "planted": any("planted-node" in v for v in os.environ.values())}
'''


def test_a_task_on_the_cluster_cannot_read_the_secret_the_data_dir_or_the_node_env(tmp_path):
    user = task_user()
    python = task_python(user)
    with reachable_dir() as modules:
        (modules / "peek_steps.py").write_text(STEPS)
        (modules / "peek_steps.py").chmod(0o644)
        env = {"RAFTFLOW_TEST_NODE_SECRET": PLANTED, "PYTHONPATH": str(modules)}
        with running_cluster(tmp_path / "cluster", python=python, extra_env=env, run_as_user=user.name) as cluster:
            try:
                _check(cluster, user.name, user.home, tmp_path)
            except BaseException:
                dump_node_logs(cluster)
                raise


def _check(cluster, user: str, home: str, tmp_path: Path) -> None:
    cli = Cli(cluster)
    secret = cluster.secret_file.read_text().strip()
    data_dir = cluster.nodes[0].dir / "data"
    (tmp_path / "peek.py").write_text(DAG.format(secret=cluster.secret_file, data_dir=data_dir))
    submitted = cli("dags", "submit", str(tmp_path / "peek.py"))
    assert submitted.returncode == 0, submitted.stderr
    proc = cli("dags", "trigger", "peek", "--wait", "--json", timeout=90)
    run = json.loads(proc.stdout)
    tasks = {t["task_id"]: t for t in run["tasks"]}

    def log(task_id: str) -> str:
        shown = cli("tasks", "logs", run["run_id"], task_id)
        assert shown.returncode == 0, shown.stderr
        return shown.stdout

    logs = {task_id: log(task_id) for task_id in tasks}
    assert all(secret not in text and PLANTED not in text for text in logs.values()), logs
    assert tasks["whoami"]["state"] == "success" and logs["whoami"].startswith(f"user={user} home={home} day=")
    assert tasks["secret"]["exit_code"] == 1 and "Permission denied" in logs["secret"], logs["secret"]
    assert tasks["data_dir"]["exit_code"] == 2 and "Permission denied" in logs["data_dir"], logs["data_dir"]
    assert tasks["node_env"]["exit_code"] == 1 and "Permission denied" in logs["node_env"], logs["node_env"]
    names = {line.split("=", 1)[0] for line in logs["own_env"].splitlines() if "=" in line}
    assert not names & {"RAFTFLOW_TEST_NODE_SECRET", "PYTHONPATH", "RAFTFLOW_CLUSTER", "PYTHONUNBUFFERED"}, names
    assert {"PATH", "HOME", "RAFTFLOW_RUN_ID", "RAFTFLOW_RESULT_FILE"} <= names
    assert tasks["result"]["state"] == "success", logs["result"]
    cwd = Path(tasks["result"]["result"]["cwd"])
    assert not cwd.is_relative_to(cluster.data_dir) and not cwd.exists(), "outside the data, removed afterwards"
    assert tasks["python"]["result"] == {"user": user, "planted": False}, logs["python"]
