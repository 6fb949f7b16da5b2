"""An Airflow 3.x DAG file with a TriggerDagRunOperator that starts another DAG of this
file with a templated conf and waits for it to finish."""

from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG

with DAG(
    dag_id="airflow3_target",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    params={"note": "default"},
    is_paused_upon_creation=False,
) as target:
    BashOperator(task_id="echo_conf", bash_command="echo note={{ params.note }}")

with DAG(
    dag_id="airflow3_trigger",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    is_paused_upon_creation=False,
) as dag:
    trigger = TriggerDagRunOperator(task_id="trigger_target", trigger_dag_id="airflow3_target",
                                    conf={"note": "from {{ run_id }}"}, wait_for_completion=True,
                                    poke_interval=1)
    done = BashOperator(task_id="done", bash_command="echo target finished")
    trigger >> done

# Airflow's final states: the target run succeeds, so the trigger task (waiting for it) succeeds.
EXPECTED = {"trigger_target": "success", "done": "success"}
EXPECTED_RUN = "success"
TARGET_EXPECTED = {"echo_conf": "success"}
