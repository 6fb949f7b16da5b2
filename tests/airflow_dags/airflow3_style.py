"""An Airflow 3.x DAG file: airflow.sdk, the standard provider's operators, nested
TaskGroups, Label, doc_md, Param, and trigger rules after a failure."""

from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Label, Param, TaskGroup, TriggerRule

with DAG(
    dag_id="airflow3_style",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    doc_md="# Airflow 3 style\nGroups, labels and a failure handled by trigger rules.",
    params={"rows": Param(10, type="integer", minimum=0)},
    is_paused_upon_creation=False,
    tags=["compat", "airflow3"],
) as dag:
    start = EmptyOperator(task_id="start")
    with TaskGroup("outer") as outer:
        first = BashOperator(task_id="first", bash_command="echo rows={{ params.rows }}",
                             doc_md="Prints the row count.")
        with TaskGroup("inner"):
            deep = BashOperator(task_id="deep", bash_command='echo "stage=$STAGE"', env={"STAGE": "inner"},
                                append_env=True)
        first >> deep
    report = BashOperator(task_id="report", bash_command="echo report")
    fail = BashOperator(task_id="fails", bash_command="exit 1")
    after_fail = EmptyOperator(task_id="after_fail")
    rescue = EmptyOperator(task_id="rescue", trigger_rule=TriggerRule.ONE_FAILED)

    start >> outer >> Label("then report") >> report
    start >> fail >> [after_fail, rescue]

# Airflow's final states: fails fails, after_fail is upstream_failed, rescue (one_failed)
# succeeds; the run fails, because a leaf (after_fail) is upstream_failed.
EXPECTED = {"start": "success", "outer.first": "success", "outer.inner.deep": "success", "report": "success",
            "fails": "failed", "after_fail": "upstream_failed", "rescue": "success"}
EXPECTED_RUN = "failed"
