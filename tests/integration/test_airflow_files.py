"""Airflow DAG files, unchanged, on a real 3-node cluster: each file of tests/airflow_dags/
(Airflow 1.10, 2.x and 3.x styles) is submitted with the CLI, triggered, and every task's
final state compared with the file's EXPECTED (Airflow's final states for that file).
Refused files leave the cluster unchanged."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

from support import ROOT, wait_for

pytestmark = pytest.mark.integration

DAGS = ROOT / "tests" / "airflow_dags"


def declared(path: Path, name: str) -> Any:
    """A module-level constant of the DAG file (EXPECTED, EXPECTED_RUN), read without running it."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path.name} declares no {name}")


def run_to_end(cli, dag_id: str, timeout: float = 120) -> dict[str, Any]:
    assert cli("dags", "unpause", dag_id).returncode == 0
    triggered = cli("dags", "trigger", dag_id, "--json")
    assert triggered.returncode == 0, triggered.stderr
    run_id = json.loads(triggered.stdout)["run_id"]
    wait_for(lambda: cli.json("runs", "show", run_id)["state"] in ("success", "failed"), timeout,
             f"{dag_id}'s run to end")
    run = cli.json("runs", "show", run_id)
    assert cli("dags", "pause", dag_id).returncode == 0
    return run


@pytest.mark.parametrize("name", ["airflow1_style.py", "airflow2_style.py", "airflow3_style.py",
                                  "airflow3_trigger.py"])
def test_an_airflow_file_runs_unchanged_with_airflows_final_states(cluster, cli, name: str) -> None:
    path = DAGS / name
    submitted = cli("dags", "submit", str(path))
    assert submitted.returncode == 0, submitted.stderr
    dag_id = path.stem
    run = run_to_end(cli, dag_id)
    states = {t["task_id"]: t["state"] for t in run["tasks"]}
    assert states == declared(path, "EXPECTED"), json.dumps(run["tasks"])
    assert run["state"] == declared(path, "EXPECTED_RUN"), run
    if name == "airflow3_style.py":   # the env reached the command; the DAG's doc_md is kept
        assert "stage=inner" in cli("tasks", "logs", run["run_id"], "outer.inner.deep").stdout
    if name == "airflow3_trigger.py":   # the triggered DAG ran with the conf the operator rendered
        runs = cli.json("runs", "list", "airflow3_target")["runs"]
        assert runs and runs[0]["state"] == "success", runs
        target = cli.json("runs", "show", runs[0]["run_id"])
        assert {t["task_id"]: t["state"] for t in target["tasks"]} == declared(path, "TARGET_EXPECTED")
        log = cli("tasks", "logs", runs[0]["run_id"], "echo_conf").stdout
        assert f"note=from {run['run_id']}" in log, log
    if name == "airflow2_style.py":   # the .sh template file's content ran, rendered
        log = cli("tasks", "logs", run["run_id"], "greet").stdout
        day = run["logical_date"][:10]
        assert f"greetings for {day} to team" in log, log
        assert f"query: SELECT count(*) FROM orders WHERE day = '{day}'" in log, log


def test_submit_warns_of_ignored_arguments_and_says_the_dag_is_paused(cluster, cli) -> None:
    submitted = cli("dags", "submit", str(DAGS / "airflow1_style.py"))
    assert submitted.returncode == 0, submitted.stderr
    assert "warning: DAG 'airflow1_style'" in submitted.stderr
    assert "email (default_args)" in submitted.stderr and "owner (default_args)" in submitted.stderr


def test_a_refused_file_submits_nothing(cluster, cli) -> None:
    before = {d["dag_id"] for d in cli.json("dags", "list")["dags"]}
    out = cli("dags", "submit", str(DAGS / "airflow1_style.py"), str(DAGS / "refused" / "custom_operator.py"))
    assert out.returncode == 2
    assert "custom_operator.py: line 16: custom operator HelloOperator" in out.stderr
    assert "nothing was submitted" in out.stderr
    assert {d["dag_id"] for d in cli.json("dags", "list")["dags"]} == before
