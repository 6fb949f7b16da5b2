"""A PythonOperator and a @task whose code is in this file: both wait for the next issue."""
import pendulum
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, task


def hello():
    print("hello")


with DAG("inline_python", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
    t1 = PythonOperator(task_id="hello", python_callable=hello)  # REFUSED: PythonOperator with a callable

    @task
    def world():
        return 1

    t1 >> world()  # REFUSED: @task function 'world'
