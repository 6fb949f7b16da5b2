"""An Airflow 2.x DAG file: airflow.operators.*, the @dag decorator, TaskGroup, chain,
cross_downstream, Param with a schema, a .sh template file on template_searchpath,
skip_on_exit_code (99: skipped) and trigger rules as enums."""

from datetime import timedelta

import pendulum
from airflow.decorators import dag
from airflow.models.baseoperator import chain, cross_downstream
from airflow.models.param import Param
from airflow.operators.bash import BashOperator
from airflow.operators.empty import EmptyOperator
from airflow.utils.task_group import TaskGroup
from airflow.utils.trigger_rule import TriggerRule


@dag(
    schedule="30 6 * * 1-5",
    start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Berlin"),
    catchup=False,
    tags=["compat", "airflow2"],
    params={"who": Param("team", type="string", minLength=1)},
    template_searchpath=["templates"],
    default_args={"owner": "analytics", "retries": 0, "sla": timedelta(hours=1)},
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=30),
)
def airflow2_style():
    """Weekday reports, grouped by stage."""
    begin = EmptyOperator(task_id="begin")
    with TaskGroup("extract") as extract:
        a = BashOperator(task_id="orders", bash_command="echo orders {{ ds }}")
        b = BashOperator(task_id="customers", bash_command="echo customers")
    with TaskGroup("checks"):
        maybe = BashOperator(task_id="maybe_skip", bash_command="echo nothing new; exit 99")
        strict = BashOperator(task_id="strict", bash_command="exit 99", skip_on_exit_code=None)
    greet = BashOperator(task_id="greet", bash_command="greet.sh")
    after_skip = BashOperator(task_id="after_skip", bash_command="echo after")
    tolerant = BashOperator(task_id="tolerant", bash_command="echo tolerant",
                            trigger_rule=TriggerRule.NONE_FAILED)
    done = EmptyOperator(task_id="done", trigger_rule=TriggerRule.ALL_DONE)

    chain(begin, extract, greet)
    cross_downstream([a, b], [maybe, strict])
    maybe >> after_skip
    [maybe, greet] >> tolerant
    [after_skip, tolerant, strict] >> done


airflow2_style()

# Airflow's final states: maybe_skip exits 99 -> skipped, so after_skip (all_success) is
# skipped and tolerant (none_failed) runs; strict exits 99 with skip_on_exit_code=None ->
# failed; done (all_done) succeeds, so the run succeeds (its only leaf succeeded).
EXPECTED = {"begin": "success", "extract.orders": "success", "extract.customers": "success",
            "checks.maybe_skip": "skipped", "checks.strict": "failed", "greet": "success",
            "after_skip": "skipped", "tolerant": "success", "done": "success"}
EXPECTED_RUN = "success"
