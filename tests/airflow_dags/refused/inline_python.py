"""Python in the DAG file: a PythonOperator with a function or a lambda of this file and
a @task run (the task's process runs the file and takes the task's function); a
@task.docker has no raftflow form."""
import pendulum
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, task


def hello():
    print("hello")


with DAG("inline_python", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
    t1 = PythonOperator(task_id="hello", python_callable=hello)
    anon = PythonOperator(task_id="anon", python_callable=lambda: 1)

    @task
    def world():
        return 1

    @task.docker(image="python:3.11")
    def isolated():
        return 2

    t1 >> world() >> isolated()  # REFUSED: @task.docker function 'isolated'
