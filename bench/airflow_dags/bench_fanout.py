"""tools/bench airflow: one task, then 200 parallel BashOperator tasks, then one.

Every task runs `true`: the wall time is the schedulers' and executors' own cost of
starting 202 processes in dependency order. Airflow and raftflow run this file
unchanged (raftflow through its Airflow compatibility loader).
"""

from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

WIDTH = 200

with DAG(
    dag_id="bench_airflow_fanout",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    is_paused_upon_creation=False,
    tags=["bench"],
) as dag:
    start = BashOperator(task_id="start", bash_command="true")
    end = BashOperator(task_id="end", bash_command="true")
    for i in range(WIDTH):
        start >> BashOperator(task_id=f"work_{i:03d}", bash_command="true") >> end
