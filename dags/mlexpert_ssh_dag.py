"""mlexpert_dag's SSH form in raftflow's own API (mlexpert_dag.py is the Airflow file itself).

Each task connects over SSH to the Hadoop name node (connection `spark_master`,
defined in the nodes' config, never here) and runs spark-submit there for the run's
date. Two jobs run in parallel, the third once both have finished; the exit status
of the remote spark-submit decides each task.

`params.spark_submit` is a stand-in script (dags/bin/spark-submit) so it needs no
Spark (`tools/up --ssh-demo` gives every node the connection spark_master to a local
sshd; unpause and trigger this DAG there). Against a real cluster, set it to
"spark-submit" (or trigger with --conf '{"spark_submit": "spark-submit"}').
The DAG is created paused, so a cluster without the connection never schedules it.

A trigger's conf can set `spark_submit` to anything, and the remote shell runs the
command: so the param declares what it may be (a `Param` schema: a path, no shell
syntax; a conf that breaks it is refused before anything runs), and the command
quotes it (`| shell_quote`), as every value from params should be.
"""

from datetime import datetime
from pathlib import Path

from raftflow import DAG, Param, SSHTask

STAND_IN = str(Path(__file__).resolve().parent / "bin" / "spark-submit")
SPARK_SUBMIT = ("{{ params.spark_submit | shell_quote }} --master yarn --deploy-mode cluster "
                "s3://bucket_name/%s {{ ds }}")

with DAG(
    "mlexpert_ssh_dag",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup="none",
    is_paused_upon_creation=True,
    description="mlexpert_dag's Spark jobs, submitted on the Hadoop name node over SSH.",
    tags=["example", "spark", "ssh"],
    params={"spark_submit": Param(STAND_IN, type="string", pattern=r"^[^;&|`$<>\\\n]+$",
                                  description="the spark-submit program on the name node")},
    default_args={"retries": 1, "retry_delay": 5, "execution_timeout": 3600},
) as dag:
    t1 = SSHTask("aggregate_search_interaction", ssh_conn_id="spark_master",
                 command=SPARK_SUBMIT % "aggregate_search_interaction.py")
    t2 = SSHTask("aggregate_user_features", ssh_conn_id="spark_master",
                 command=SPARK_SUBMIT % "aggregate_user_features.py")
    t3 = SSHTask("generate_training_data", ssh_conn_id="spark_master",
                 command=SPARK_SUBMIT % "generate_training_data.py")

    [t1, t2] >> t3
