"""mlexpert_local_dag: the example from the notes raftflow started from, run on the nodes.

In Airflow it ran two spark-submit jobs on the Hadoop name node over SSH, in
parallel, for the run's date, then a third job once both had finished (that file,
unchanged, is mlexpert_dag.py; `tools/up --ssh-demo` runs it). Here the jobs are
bash stand-ins that print what they would submit and take a few seconds, so the
plain `tools/up` demo, with no SSH host, shows the two in parallel on different
nodes and the third after both.
"""

from datetime import datetime

from raftflow import DAG, BashTask

SPARK_SUBMIT = (
    'echo "[$RAFTFLOW_NODE_ID] spark-submit s3://bucket_name/{script} ${{RAFTFLOW_LOGICAL_DATE%%T*}}"; '
    'for step in 1 2 3; do echo "  stage $step/3 of {script}"; sleep 1; done; '
    'echo "done: {script}"'
)

with DAG(
    "mlexpert_local_dag",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup="none",
    description="Aggregate search interactions and user features, then join them for training.",
    tags=["example", "spark"],
    default_args={"retries": 1, "retry_delay": 5},
) as dag:
    t1 = BashTask("aggregate_search_interaction",
                  command=SPARK_SUBMIT.format(script="aggregate_search_interaction.py"))
    t2 = BashTask("aggregate_user_features",
                  command=SPARK_SUBMIT.format(script="aggregate_user_features.py"))
    t3 = BashTask("generate_training_data",
                  command=SPARK_SUBMIT.format(script="generate_training_data.py"))

    [t1, t2] >> t3
