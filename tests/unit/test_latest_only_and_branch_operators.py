"""Airflow's LatestOnlyOperator (worker/latest_only.py), BaseBranchOperator subclasses and
PythonOperator's templates_dict, loaded by the Airflow layer and run by `dags test`'s
local run (real task processes)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from raftflow.localrun import run_locally
from raftflow.worker.latest_only import is_latest
from raftflow_cli.loader import inspect_file, load_file

HOURLY = {"schedule": "0 * * * *", "timezone": "UTC"}
NOW = datetime(2026, 3, 4, 10, 20, tzinfo=timezone.utc)   # (judged at a fixed time: 10:20)


def _hour(offset: int) -> datetime:
    return NOW.replace(minute=0) + timedelta(hours=offset)


@pytest.mark.parametrize("dag, run_type, logical, latest", [
    (HOURLY, "scheduled", _hour(0), True),      # this hour's tick: the next one is ahead
    (HOURLY, "scheduled", _hour(-2), False),    # two ticks ago: later ones came
    (HOURLY, "backfill", _hour(-5), False),
    (HOURLY, "manual", _hour(-5), True),        # by hand: always runs, as in Airflow
    ({"schedule": None, "timezone": "UTC"}, "scheduled", _hour(-5), True),
])
def test_latest_only_lets_only_the_latest_scheduled_run_through(dag, run_type, logical, latest) -> None:
    assert is_latest(dag, {"run_type": run_type}, logical, now=NOW.timestamp()) is latest


AIRFLOW = '''
import pendulum
from airflow.sdk import DAG
from airflow.operators.branch import BaseBranchOperator
from airflow.operators.latest_only import LatestOnlyOperator
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.python import PythonOperator


class EvenOdd(BaseBranchOperator):
    def choose_branch(self, context):
        return "even" if context["params"]["n"] % 2 == 0 else "odd"


def show(templates_dict, **context):
    print("query:", templates_dict["query"], "limit:", templates_dict["limit"])
    return templates_dict


with DAG("ops", schedule="@daily", start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), params={"n": 3}):
    EvenOdd(task_id="pick") >> [EmptyOperator(task_id="even"), EmptyOperator(task_id="odd")]
    LatestOnlyOperator(task_id="latest_only") >> EmptyOperator(task_id="publish")
    PythonOperator(task_id="templated", python_callable=show,
                   templates_dict={"query": "SELECT * FROM t WHERE ds = '{{ ds }}'", "limit": 5})


class NoChoice(BaseBranchOperator):
    pass


with DAG("bad", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
    NoChoice(task_id="nothing")
'''


def test_the_operators_load_and_run_as_airflow_runs_them(tmp_path: Path) -> None:
    path = tmp_path / "ops.py"
    path.write_text(AIRFLOW)
    result = inspect_file(path)
    assert result["ok"] is False
    assert "branch operator NoChoice" in result["error"] and "defines no choose_branch(context)" in result["error"]
    path.write_text(AIRFLOW[:AIRFLOW.index("class NoChoice")])
    outcome = run_locally(load_file(path), "ops", logical_date="2026-03-04")
    states = {t.task_id: t.state for t in outcome.tasks}
    assert states == {"pick": "success", "even": "skipped", "odd": "success", "latest_only": "success",
                      "publish": "success", "templated": "success"}, "a manual run is always the latest"
    templated = next(t for t in outcome.tasks if t.task_id == "templated")
    assert templated.result == {"query": "SELECT * FROM t WHERE ds = '2026-03-04'", "limit": 5}
    assert outcome.state == "success"
