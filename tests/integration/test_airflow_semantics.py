"""Airflow's semantics on a real 3-node cluster (#19): a bash task exiting with one of
its skip_on_exit_code ends skipped, its all_success downstream is skipped and the run
succeeds; depends_on_past holds a task until its previous run's instance is done well;
Variables set with the CLI reach a template and a secret one is masked in the log."""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from support import Cli, running_cluster, wait_for

pytestmark = pytest.mark.integration


def spec(dag_id: str, tasks: list[dict[str, Any]]) -> dict[str, str]:
    return {"spec_json": json.dumps({"dag_id": dag_id, "tasks": tasks}), "source": "# written for the test",
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
                 "retries": 2},
                {"task_id": "after", "kind": "bash", "command": "true", "upstream": ["check"]},
                {"task_id": "anyway", "kind": "bash", "command": "true", "upstream": ["check"],
                 "trigger_rule": "none_failed"},
            ]),
            spec("pastdep", [
                {"task_id": "step", "kind": "bash", "command": f"test -e {marker}", "depends_on_past": True},
            ]),
        ])

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
