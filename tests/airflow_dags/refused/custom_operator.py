"""A BaseOperator subclass of the file's own with no execute() (one with it runs as a
python task), and an executor_config."""
from datetime import datetime

from airflow import DAG
from airflow.models import BaseOperator
from airflow.operators.bash import BashOperator


class HelloOperator(BaseOperator):
    def run_it(self, context):
        print("hello")


with DAG("custom_operator", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
    HelloOperator(task_id="hello")  # REFUSED: custom operator HelloOperator
    BashOperator(task_id="pod", bash_command="echo", executor_config={"pod": {}})  # REFUSED: executor_config
