"""An operator raftflow does not know: its import fails, naming the module."""
from datetime import datetime

from airflow import DAG
from airflow.providers.http.operators.http import HttpOperator  # REFUSED: No module named 'airflow.providers.http'

with DAG("unknown_operator", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
    HttpOperator(task_id="call", endpoint="/")
