"""`raftflow dags test` / `tasks test` (localrun.py, raftflow_cli/localtest.py): one run
on this machine with the node's core and worker in one process, no cluster; its tasks
run as real processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import raftflow_cli.main as cli
from raftflow.localrun import LocalRunError, TaskOutcome, run_locally, succeeded
from raftflow_cli.loader import load_file

NATIVE = '''
from raftflow import DAG, BashTask, PythonTask, SSHTask, Variable

def pick(params):
    print("taking", params["path"])
    return params["path"]

def flaky(ti):
    if ti.try_number < 2:
        raise ValueError("first try fails")
    Variable.set("done", "yes")
    return ti.try_number

with DAG("local", params={"path": "fast"}, schedule="* * * * *", catchup=True, start_date="2026-01-01"):
    choose = PythonTask("choose", python_callable=pick, branch=True)
    fast = PythonTask("fast", python_callable=flaky, retries=1, retry_delay=0)
    slow = BashTask("slow", command="echo slow")
    report = BashTask("report", command="echo {{ ti.xcom_pull(task_ids='fast') }} {{ var.value.get('done', 'no') }}",
                      trigger_rule="none_failed_min_one_success")
    choose >> [fast, slow] >> report

with DAG("other"):
    BashTask("fails", command="echo about to fail; exit 3") >> BashTask("after", command="true")

with DAG("remote"):
    BashTask("local_step", command="echo here", pool="etl") >> SSHTask("remote_step", ssh_conn_id="spark", command="ls")
'''


@pytest.fixture(scope="module")
def dags(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    path = tmp_path_factory.mktemp("dags") / "local.py"
    path.write_text(NATIVE)
    return load_file(path)


def test_a_run_goes_to_its_end_with_retries_branches_xcoms_and_variables(dags) -> None:
    told: list[TaskOutcome] = []
    outcome = run_locally(dags, "local", logical_date="2026-03-01", on_task_done=told.append)
    states = {t.task_id: t.state for t in outcome.tasks}
    assert (outcome.state, outcome.logical_date) == ("success", "2026-03-01T00:00:00+00:00")
    assert states == {"choose": "success", "fast": "success", "slow": "skipped", "report": "success"}
    by_id = {t.task_id: t for t in outcome.tasks}
    assert (by_id["fast"].attempt, by_id["fast"].result) == (2, 2), "its retry ran (retry_delay 0)"
    assert by_id["report"].log == "2 yes\n", "the XCom and the Variable the callable set reach the next task"
    assert by_id["choose"].log == "taking fast\n"
    assert sorted((t.task_id, t.attempt, t.state) for t in told) == [
        ("choose", 1, "success"), ("fast", 1, "up_for_retry"), ("fast", 2, "success"), ("report", 1, "success"),
        ("slow", 0, "skipped")], "each attempt told once, as it ended"
    assert "ValueError: first try fails" in next(t.log for t in told if t.state == "up_for_retry")
    assert succeeded(outcome)


def test_the_conf_picks_the_branch_and_a_failure_fails_the_run(dags) -> None:
    outcome = run_locally(dags, "local", conf={"path": "slow"})
    assert {t.task_id: t.state for t in outcome.tasks}["fast"] == "skipped"
    failed = run_locally(dags, "other")
    assert failed.state == "failed" and not succeeded(failed)
    assert [(t.task_id, t.state, t.exit_code) for t in failed.tasks] == [("fails", "failed", 3),
                                                                        ("after", "upstream_failed", None)]


def test_tasks_test_runs_only_the_task_whatever_its_upstream(dags) -> None:
    outcome = run_locally(dags, "local", only_task="report")
    by_id = {t.task_id: t for t in outcome.tasks}
    assert by_id["report"].state == "success" and by_id["report"].log == "None no\n"
    assert all(by_id[t].attempt == 0 for t in ("choose", "fast", "slow")), "nothing else ran"
    assert by_id["fast"].reason == "not run: `tasks test` runs only report"
    assert succeeded(outcome, "report")
    failing = run_locally(dags, "other", only_task="fails")
    assert not succeeded(failing, "fails") and {t.task_id: t.attempt for t in failing.tasks} == {"fails": 1,
                                                                                              "after": 0}


@pytest.mark.parametrize("kwargs, error", [
    ({"dag_id": "nope"}, "the file declares no DAG 'nope' (it declares: local, other, remote)"),
    ({"dag_id": "remote"}, "this machine cannot run task(s) remote_step: no live node serving queue 'default' has "
                           "SSH connection 'spark'"),
    ({"dag_id": "local", "only_task": "nope"}, "DAG 'local' has no task 'nope' (its tasks: choose, fast, slow"),
    ({"dag_id": "local", "conf": {"k": float("nan")}}, "conf must be plain JSON values (a number is nan)"),
    ({"dag_id": "local", "logical_date": "yesterday"}, "logical_date 'yesterday' is not an ISO-8601"),
    ({"dag_id": "local", "variables": {"bad key": "1"}}, "variable key 'bad key' is invalid"),
])
def test_bad_input_is_refused_before_anything_runs(dags, kwargs: dict[str, Any], error: str) -> None:
    told: list[TaskOutcome] = []
    with pytest.raises(LocalRunError) as raised:
        run_locally(dags, on_task_done=told.append, **kwargs)
    assert error in str(raised.value) and told == []


def test_a_pool_of_the_cluster_holds_nothing_back_here(dags) -> None:
    outcome = run_locally(dags, "remote", only_task="local_step")
    assert [(t.task_id, t.state, t.log) for t in outcome.tasks if t.attempt] == [("local_step", "success", "here\n")]


def test_the_cli_prints_each_task_then_a_table_and_exits_by_the_outcome(tmp_path: Path, capsys) -> None:
    path = tmp_path / "local.py"
    path.write_text(NATIVE)
    assert cli.main(["dags", "test", str(path)]) == 2
    assert "declares 3 DAGs (local, other, remote): choose one with --dag" in capsys.readouterr().err
    assert cli.main(["dags", "test", str(path), "--dag", "other"]) == 1
    out = capsys.readouterr().out
    assert "--- fails: attempt 1 log\nabout to fail\n--- fails: failed after" in out and ": exit 3" in out
    assert "--- after: upstream_failed" in out and out.rstrip().endswith(": failed")
    assert cli.main(["tasks", "test", str(path), "choose", "--dag", "local", "--conf", '{"path": "slow"}',
                     "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [(t["task_id"], t["state"], t["result"], t["log"]) for t in shown["tasks"]] == \
        [("choose", "success", "slow", "taking slow\n")]
    (tmp_path / "vars.json").write_text("[1]")
    assert cli.main(["dags", "test", str(path), "--dag", "local", "--variables", str(tmp_path / "vars.json")]) == 2
    assert "must hold a non-empty JSON object" in capsys.readouterr().err
    assert cli.main(["dags", "test", str(tmp_path / "missing.py")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_sigterm_stops_the_running_tasks_and_removes_the_folder(tmp_path: Path) -> None:
    """What `timeout` and supervisors send: the run stops as on Ctrl-C, its task processes
    killed, its temporary folder gone."""
    import os
    import signal
    import subprocess
    import sys

    from waiting import wait_for

    marker = tmp_path / "pid"
    path = tmp_path / "slow.py"
    path.write_text("from raftflow import DAG, BashTask\nwith DAG('slow'):\n"
                    f"    BashTask('sleeps', command='echo $$ > {marker}; exec sleep 60')\n")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "raftflow_cli.main", "dags", "test", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(scratch)})
    try:
        wait_for(lambda: marker.exists() and marker.read_text().strip(), timeout=30, what="the task to start")
        task_pid = int(marker.read_text())
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143 and "terminated: the running tasks were stopped" in err

    def gone() -> bool:
        try:
            os.kill(task_pid, 0)
        except ProcessLookupError:
            return True
        return False
    wait_for(gone, timeout=10, what="the task's process to be gone")
    assert not [p for p in scratch.iterdir() if p.name.startswith("raftflow-test-")]


def test_tasks_test_runs_one_try_whatever_the_retries(tmp_path: Path) -> None:
    path = tmp_path / "retrying.py"
    path.write_text("from raftflow import DAG, BashTask\nwith DAG('retrying'):\n"
                    "    BashTask('flaky', command='echo try $RAFTFLOW_ATTEMPT; exit 1', retries=3, retry_delay=300)\n")
    outcome = run_locally(load_file(path), "retrying", only_task="flaky")
    flaky = next(t for t in outcome.tasks if t.task_id == "flaky")
    assert (flaky.state, flaky.attempt, flaky.log) == ("up_for_retry", 1, "try 1\n")
    assert not succeeded(outcome, "flaky")


def test_modules_of_the_dag_folder_travel_with_the_spec(tmp_path: Path) -> None:
    """A callable of a module next to the DAG file (Airflow puts the folder on the path):
    the loader sends the modules the file imported with the spec, and the task's process
    imports them from there - the folder is gone by the time the task runs."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "__init__.py").write_text("")
    (tmp_path / "lib" / "shapes.py").write_text("def area(w, h):\n    return w * h\n")
    (tmp_path / "helpers.py").write_text("from lib.shapes import area\n\ndef describe(w, h):\n"
                                         "    return f'{w}x{h} is {area(w, h)}'\n")
    (tmp_path / "uses_helpers.py").write_text(
        "import pendulum\nfrom airflow.sdk import DAG, task\nfrom helpers import describe\n\n"
        "with DAG('helped', schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz='UTC')):\n"
        "    @task\n    def size():\n        return describe(3, 4)\n\n    size()\n")
    dags = load_file(tmp_path / "uses_helpers.py")
    assert sorted(json.loads(dags[0]["spec_json"])["modules"]) == ["helpers.py", "lib/__init__.py", "lib/shapes.py"]
    for name in ("helpers.py", "lib/shapes.py", "lib/__init__.py"):
        (tmp_path / name).unlink()
    outcome = run_locally(dags, "helped")
    size = next(t for t in outcome.tasks if t.task_id == "size")
    assert (size.state, size.result) == ("success", "3x4 is 12"), size.log


def test_modules_travel_under_the_names_they_were_imported_as(tmp_path: Path) -> None:
    """A folder put on the path by the DAG file (sys.path.insert) holds `helper`, imported
    as a top-level module: it travels as helper.py, wherever it sat."""
    (tmp_path / "common-lib").mkdir()
    (tmp_path / "common-lib" / "helper.py").write_text("GREETING = 'hi'\n")
    (tmp_path / "dag.py").write_text(
        "import os, sys\nsys.path.insert(0, os.path.join(os.path.dirname(__file__), 'common-lib'))\n"
        "import helper\nfrom raftflow import DAG, PythonTask\n\ndef greet():\n    return helper.GREETING\n\n"
        "with DAG('greeting'):\n    PythonTask('greet', python_callable=greet)\n")
    dags = load_file(tmp_path / "dag.py")
    assert json.loads(dags[0]["spec_json"])["modules"] == {"helper.py": "GREETING = 'hi'\n"}
    (tmp_path / "common-lib" / "helper.py").unlink()
    outcome = run_locally(dags, "greeting")
    assert [(t.task_id, t.state, t.result) for t in outcome.tasks] == [("greet", "success", "hi")]
