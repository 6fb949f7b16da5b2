"""A 90-minute timedelta schedule: no cron expresses it."""
from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

with DAG("odd_interval", schedule=timedelta(minutes=90), start_date=datetime(2026, 1, 1)) as dag:  # REFUSED: schedule
    BashOperator(task_id="t", bash_command="echo")
