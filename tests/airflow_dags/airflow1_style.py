"""An Airflow 1.10 DAG file: old import paths, schedule_interval, DummyOperator,
provide_context, dag=dag, set_upstream/set_downstream and days_ago."""

from datetime import timedelta

import airflow
from airflow import DAG
from airflow.operators.bash_operator import BashOperator
from airflow.operators.dummy_operator import DummyOperator

default_args = {
    "owner": "data-eng",
    "depends_on_past": False,
    "start_date": airflow.utils.dates.days_ago(2),
    "email": ["alerts@example.com"],
    "email_on_failure": False,
    "email_on_retry": False,
    "retries": 1,
    "retry_delay": timedelta(seconds=1),
    "provide_context": True,
}

dag = DAG(
    "airflow1_style",
    default_args=default_args,
    description="An Airflow 1.10 style DAG",
    schedule_interval="@daily",
    catchup=False,
)

start = DummyOperator(task_id="start", dag=dag)
extract = BashOperator(task_id="extract", bash_command="echo extracting {{ ds }}", dag=dag,
                       execution_timeout=timedelta(minutes=5))
flaky = BashOperator(task_id="flaky", bash_command="exit 3", retries=0, dag=dag)
cleanup = BashOperator(task_id="cleanup", bash_command="echo cleanup", trigger_rule="all_done", dag=dag)
report = BashOperator(task_id="report", bash_command="echo report", dag=dag)

start.set_downstream(extract)
flaky.set_upstream(start)
cleanup.set_upstream([extract, flaky])
extract >> report

# Airflow's final states for a run of this DAG: flaky fails (exit 3, no retries), cleanup
# runs anyway (all_done), report follows extract. The run fails (a leaf failed? no:
# leaves are cleanup and report, both succeed) - Airflow marks it success.
EXPECTED = {"start": "success", "extract": "success", "flaky": "failed", "cleanup": "success",
            "report": "success"}
EXPECTED_RUN = "success"

if __name__ == "__main__":
    dag.cli()
