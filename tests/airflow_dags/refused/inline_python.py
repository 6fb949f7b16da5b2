"""A PythonOperator whose callable is defined in this file runs (the task's process runs
the file and takes the task's function, lambdas included); a @task waits for TaskFlow
(the next issue)."""
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

    t1 >> world()  # REFUSED: @task function 'world'
