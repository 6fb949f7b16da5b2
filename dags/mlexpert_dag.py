"""mlexpert_dag as the notes raftflow started from show it: an Airflow DAG file, loaded
unchanged. `tools/up --ssh-demo` runs it (a local sshd as spark_master, a stand-in spark-submit)."""
from datetime import datetime, timedelta

from airflow import DAG
from airflow.contrib.operators.ssh_operator import SSHOperator

default_args = {
    "owner": "airflow",
    "depends_on_past": False,
    "start_date": datetime(2026, 1, 1),
    "email": ["airflow@example.com"],
    "retries": 1,
    "retry_delay": timedelta(seconds=10),
}

dag = DAG(
    "mlexpert_dag",
    default_args=default_args,
    description="Aggregate search interactions and user features, then join them for training.",
    schedule_interval=timedelta(days=1),
    catchup=False,
)

t1 = SSHOperator(
    task_id="aggregate_search_interaction",
    ssh_conn_id="spark_master",
    command="spark-submit s3://bucket_name/aggregate_search_interaction.py {{ ds }}",
    dag=dag,
)

t2 = SSHOperator(
    task_id="aggregate_user_features",
    ssh_conn_id="spark_master",
    command="spark-submit s3://bucket_name/aggregate_user_features.py {{ ds }}",
    dag=dag,
)

t3 = SSHOperator(
    task_id="generate_training_data",
    ssh_conn_id="spark_master",
    command="spark-submit s3://bucket_name/generate_training_data.py {{ ds }}",
    dag=dag,
)

[t1, t2] >> t3
