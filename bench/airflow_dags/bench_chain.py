"""tools/bench airflow: a chain of 20 BashOperator tasks that run `true`.

Airflow and raftflow both run this file unchanged (raftflow through its Airflow
compatibility loader), so the scheduling overhead between two tasks is measured on
the same DAG. Kept small: on Airflow each step costs about a second.
"""

from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

LENGTH = 20

with DAG(
    dag_id="bench_airflow_chain",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    is_paused_upon_creation=False,
    tags=["bench"],
) as dag:
    previous = None
    for i in range(LENGTH):
        step = BashOperator(task_id=f"step_{i:02d}", bash_command="true")
        if previous is not None:
            previous >> step
        previous = step
