"""Python tasks on a real 3-node cluster: callables installed on the nodes and defined in
the DAG file, TaskFlow functions passing values, branches chosen by the run's conf
(raftflow's own DAG file and Airflow's), a short circuit, and callables that skip their
task or fail it without retry."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from support import Cli, running_cluster

pytestmark = pytest.mark.integration

STEPS = '''
from raftflow import FailTask, SkipTask

def pick(params):
    print("taking the", params["path"], "path")
    return params["path"]

def nothing_new():
    return []

def skip_me():
    raise SkipTask("no new files today")

def give_up():
    raise FailTask("the credentials are wrong")
'''

NATIVE = r'''
from raftflow import DAG, BashTask, EmptyTask, PythonTask

with DAG("branchy", params={"path": "fast"}):
    choose = PythonTask("choose", python_callable="steps:pick", branch=True)
    fast, slow = BashTask("fast", command="echo fast"), BashTask("slow", command="echo slow")
    join = BashTask("join", command="echo joined", trigger_rule="none_failed_min_one_success")
    choose >> [fast, slow]
    [fast, slow] >> join

with DAG("gated"):
    gate = PythonTask("gate", python_callable="steps:nothing_new", short_circuit=True)
    gate >> BashTask("load", command="echo load") >> BashTask("report", command="echo report")

with DAG("ending"):
    PythonTask("skipper", python_callable="steps:skip_me", retries=2) >> BashTask("after", command="true")
    PythonTask("quitter", python_callable="steps:give_up", retries=2)
'''

AIRFLOW = r'''
from datetime import datetime
from airflow import DAG
from airflow.operators.bash import BashOperator
from airflow.operators.python import BranchPythonOperator
from steps import pick

with DAG("airflow_branch", start_date=datetime(2026, 1, 1), schedule=None, params={"path": "slow"}):
    choose = BranchPythonOperator(task_id="choose", python_callable=pick)
    choose >> [BashOperator(task_id="fast", bash_command="echo fast"),
               BashOperator(task_id="slow", bash_command="echo slow")]
'''

# Code in the DAG file itself: each task's process loads the file (its print shows in the log).
AIRFLOW_INFILE = r'''
from datetime import datetime
from airflow import DAG
from airflow.exceptions import AirflowSkipException
from airflow.operators.bash import BashOperator
from airflow.operators.python import BranchPythonOperator, PythonOperator

print("loading the DAG file")


def weekday_or_weekend(logical_date):
    return "weekend" if logical_date.weekday() >= 5 else "weekday"


def count(ds, table):
    print("counting", table, "on", ds)
    return {"table": table, "rows": 7}


def nothing_to_do():
    raise AirflowSkipException("nothing to do")


with DAG("in_file", start_date=datetime(2026, 1, 1), schedule=None, is_paused_upon_creation=False):
    which = BranchPythonOperator(task_id="which", python_callable=weekday_or_weekend)
    which >> [BashOperator(task_id="weekday", bash_command="echo weekday"),
              BashOperator(task_id="weekend", bash_command="echo weekend")]
    PythonOperator(task_id="count", python_callable=count, op_kwargs={"table": "orders"}) >> \
        BashOperator(task_id="report", bash_command="echo reported")
    PythonOperator(task_id="idle", python_callable=nothing_to_do)
'''

TASKFLOW = r'''
import pendulum
from airflow.sdk import dag, task, get_current_context


@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1), is_paused_upon_creation=False)
def taskflow():
    @task(multiple_outputs=True)
    def extract():
        return {"orders": [3, 4, 5], "region": "eu"}

    @task
    def total(orders, region):
        run_id = get_current_context()["run_id"]
        print("summing", region, "for", run_id.split("__")[0])
        return sum(orders)

    @task.branch
    def size(amount):
        return "big" if amount > 10 else "small"

    @task
    def big(amount):
        return f"big: {amount}"

    @task
    def small():
        return "small"

    @task
    def stamp(text, dag_run=None):
        return f"{text} by {dag_run.run_id.split('__')[0]}"

    data = extract()
    amount = total(data["orders"], region=data["region"])
    size(amount) >> [big(amount), small()]
    stamp("day {{ ds }}")


taskflow()
'''

# XComs pushed by key and pulled by callables and by a template (as Airflow's tutorial does).
XCOMS = r'''
import json
import pendulum
from airflow.sdk import DAG
from airflow.providers.standard.operators.python import PythonOperator
from airflow.providers.standard.operators.bash import BashOperator


def extract(**kwargs):
    kwargs["ti"].xcom_push("order_data", json.dumps({"a1": 10.5, "a2": 4.5}))


def transform(ti):
    orders = json.loads(ti.xcom_pull(task_ids="extract", key="order_data"))
    ti.xcom_push("total", sum(orders.values()))


with DAG("xcoms", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), is_paused_upon_creation=False):
    PythonOperator(task_id="extract", python_callable=extract) >> \
        PythonOperator(task_id="transform", python_callable=transform) >> \
        BashOperator(task_id="load", bash_command="echo total={{ ti.xcom_pull(task_ids='transform', key='total') }}")
'''

# Variables read and changed by callables; the next task sees the change, in its callable and its template.
VARIABLES = r'''
import pendulum
from airflow.sdk import DAG, Variable, task
from airflow.providers.standard.operators.bash import BashOperator

with DAG("variables", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
         is_paused_upon_creation=False):
    @task
    def count():
        runs = int(Variable.get("runs_seen", default_var=0)) + 1
        Variable.set("runs_seen", runs)
        Variable.delete("scratch")
        return runs

    @task
    def read():
        return Variable.get("runs_seen")

    count() >> read() >> BashOperator(task_id="show", bash_command="echo seen={{ var.value.runs_seen }}")
'''

# Only the latest scheduled run publishes (a backfilled one skips it); a branch operator of the file's own.
LATEST = r'''
import pendulum
from airflow.sdk import DAG
from airflow.operators.branch import BaseBranchOperator
from airflow.operators.latest_only import LatestOnlyOperator
from airflow.providers.standard.operators.bash import BashOperator


class ByConf(BaseBranchOperator):
    def choose_branch(self, context):
        return context["dag_run"].conf.get("go", "left")


with DAG("latest", schedule="@daily", start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False,
         is_paused_upon_creation=False):
    LatestOnlyOperator(task_id="latest_only") >> BashOperator(task_id="publish", bash_command="echo published") \
        >> BashOperator(task_id="notify", bash_command="echo notified", trigger_rule="all_done")
    ByConf(task_id="route") >> [BashOperator(task_id="left", bash_command="echo left"),
                                BashOperator(task_id="right", bash_command="echo right")]
'''

# Isolated Python and @task.bash on the nodes: the virtualenv is built by pip on whichever node runs it.
ISOLATED = r'''
import pendulum
from airflow.sdk import DAG, task

with DAG("isolated", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), is_paused_upon_creation=False):
    @task.virtualenv(requirements=["six==1.16.0"], system_site_packages=False)
    def in_venv(n):
        import sys
        import six
        return {"n": n + 1, "six": six.__version__, "isolated": sys.prefix != sys.base_prefix}

    @task.bash
    def report(result):
        return f"echo got {result['n']} with six {result['six']}"

    report(in_venv(41))
'''

# Operators of the file's own: execute(context) runs as a python task, template_fields rendered.
CUSTOM = r'''
import pendulum
from airflow.exceptions import AirflowSkipException
from airflow.models.baseoperator import BaseOperator
from airflow.sdk import DAG


class GreetOperator(BaseOperator):
    template_fields = ("greeting",)

    def __init__(self, greeting, **kwargs):
        super().__init__(**kwargs)
        self.greeting = greeting

    def execute(self, context):
        print(self.greeting, "from", context["task"].task_id)
        return self.greeting


class SkipOperator(BaseOperator):
    def execute(self, context):
        raise AirflowSkipException


with DAG("custom", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), is_paused_upon_creation=False):
    GreetOperator(task_id="greet", greeting="hello {{ dag_run.conf.get('who', 'nobody') }}") >> \
        SkipOperator(task_id="skip")
'''


def _run(cli: Cli, dag_id: str, *extra: str) -> tuple[dict, dict[str, dict]]:
    proc = cli("dags", "trigger", dag_id, "--wait", "--json", *extra)
    assert proc.returncode in (0, 1), proc.stderr
    run = json.loads(proc.stdout)
    tasks = {t["task_id"]: t for t in cli.json("runs", "show", run["run_id"])["tasks"]}
    return run, tasks


def _states(tasks: dict[str, dict]) -> dict[str, str]:
    return {task_id: t["state"] for task_id, t in tasks.items()}


def test_python_tasks_installed_in_file_taskflow_branches_and_skips(tmp_path: Path) -> None:
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "steps.py").write_text(STEPS)
    with running_cluster(tmp_path / "cluster", extra_env={"PYTHONPATH": str(modules)},
                         scratch_dir=tmp_path / "scratch") as cluster:   # (its virtualenvs go there too)
        cli = Cli(cluster)
        cli.env["PYTHONPATH"] = str(modules)   # (the Airflow file imports its callable as it loads)
        (tmp_path / "native.py").write_text(NATIVE)
        (tmp_path / "airflow_branch.py").write_text(AIRFLOW)
        assert cli("dags", "submit", str(tmp_path / "native.py")).returncode == 0
        submitted = cli("dags", "submit", str(tmp_path / "airflow_branch.py"))
        assert submitted.returncode == 0, submitted.stderr

        run, tasks = _run(cli, "branchy")
        assert run["state"] == "success"
        assert _states(tasks) == {"choose": "success", "fast": "success", "slow": "skipped", "join": "success"}
        assert tasks["choose"]["result"] == "fast"
        assert tasks["slow"]["reason"] == "branch 'choose' followed 'fast'"
        assert cli("tasks", "logs", run["run_id"], "choose").stdout == "taking the fast path\n"

        run, tasks = _run(cli, "branchy", "--conf", json.dumps({"path": "nowhere"}))
        assert run["state"] == "failed"
        assert tasks["choose"]["state"] == "failed"
        assert "no such task or task group in DAG 'branchy'" in tasks["choose"]["reason"]
        assert {tasks[t]["state"] for t in ("fast", "slow", "join")} == {"upstream_failed"}

        assert cli("dags", "unpause", "airflow_branch").returncode == 0   # (created paused, as Airflow does)
        run, tasks = _run(cli, "airflow_branch")
        assert run["state"] == "success" and _states(tasks) == {"choose": "success", "fast": "skipped",
                                                               "slow": "success"}

        (tmp_path / "in_file.py").write_text(AIRFLOW_INFILE)
        submitted = cli("dags", "submit", str(tmp_path / "in_file.py"))
        assert submitted.returncode == 0, submitted.stderr
        run, tasks = _run(cli, "in_file")
        logical = datetime.fromisoformat(run["logical_date"])
        taken, other = ("weekend", "weekday") if logical.weekday() >= 5 else ("weekday", "weekend")
        assert run["state"] == "success", tasks
        assert _states(tasks) == {"which": "success", taken: "success", other: "skipped",
                                  "count": "success", "report": "success", "idle": "skipped"}
        assert tasks["count"]["result"] == {"table": "orders", "rows": 7}
        assert cli("tasks", "logs", run["run_id"], "count").stdout == \
            f"loading the DAG file\ncounting orders on {logical.date().isoformat()}\n"

        (tmp_path / "taskflow.py").write_text(TASKFLOW)
        submitted = cli("dags", "submit", str(tmp_path / "taskflow.py"))
        assert submitted.returncode == 0, submitted.stderr
        run, tasks = _run(cli, "taskflow")
        assert run["state"] == "success", tasks
        assert _states(tasks) == {"extract": "success", "total": "success", "size": "success", "big": "success",
                                  "small": "skipped", "stamp": "success"}
        assert tasks["stamp"]["result"] == f"day {run['logical_date'][:10]} by manual", "arguments are templates"
        assert (tasks["total"]["result"], tasks["big"]["result"]) == (12, "big: 12")
        assert cli("tasks", "logs", run["run_id"], "total").stdout == "summing eu for manual\n"

        (tmp_path / "xcoms.py").write_text(XCOMS)
        submitted = cli("dags", "submit", str(tmp_path / "xcoms.py"))
        assert submitted.returncode == 0, submitted.stderr
        run, tasks = _run(cli, "xcoms")
        assert run["state"] == "success", tasks
        assert tasks["extract"]["xcoms"] == {"order_data": json.dumps({"a1": 10.5, "a2": 4.5})}
        assert tasks["transform"]["xcoms"] == {"total": 15.0} and tasks["load"]["xcoms"] == {}
        assert cli("tasks", "logs", run["run_id"], "load").stdout == "total=15.0\n"

        (tmp_path / "variables.py").write_text(VARIABLES)
        assert cli("variables", "set", "scratch", "temporary").returncode == 0
        submitted = cli("dags", "submit", str(tmp_path / "variables.py"))
        assert submitted.returncode == 0, submitted.stderr
        for expected in (1, 2):
            run, tasks = _run(cli, "variables")
            assert run["state"] == "success", tasks
            assert (tasks["count"]["result"], tasks["read"]["result"]) == (expected, str(expected))
            assert cli("tasks", "logs", run["run_id"], "show").stdout == f"seen={expected}\n"
        listed = {v["key"]: v["value"] for v in cli.json("variables", "list")["variables"]}
        assert listed == {"runs_seen": "2"}, "set by the callable, and `scratch` deleted by it"

        (tmp_path / "latest.py").write_text(LATEST)
        submitted = cli("dags", "submit", str(tmp_path / "latest.py"))
        assert submitted.returncode == 0, submitted.stderr
        run, tasks = _run(cli, "latest", "--conf", json.dumps({"go": "right"}))
        assert run["state"] == "success", tasks
        assert _states(tasks) == {"latest_only": "success", "publish": "success", "notify": "success",
                                  "route": "success", "left": "skipped", "right": "success"}
        created = cli.json("dags", "backfill", "latest", "--start", "2026-02-01", "--end", "2026-02-01")["created"]
        assert len(created) == 1
        backfilled = cli("runs", "watch", created[0])
        assert backfilled.returncode == 0, backfilled.stdout + backfilled.stderr
        tasks = {t["task_id"]: t for t in cli.json("runs", "show", created[0])["tasks"]}
        assert _states(tasks) == {"latest_only": "success", "publish": "skipped", "notify": "success",
                                  "route": "success", "left": "success", "right": "skipped"}, \
            "a backfilled run is not the latest: publish is skipped, notify (all_done) runs"
        assert "not the latest run" in cli("tasks", "logs", created[0], "latest_only").stdout

        (tmp_path / "isolated.py").write_text(ISOLATED)
        submitted = cli("dags", "submit", str(tmp_path / "isolated.py"))
        assert submitted.returncode == 0, submitted.stderr
        run, tasks = _run(cli, "isolated")
        assert run["state"] == "success", tasks
        assert tasks["in_venv"]["result"] == {"n": 42, "six": "1.16.0", "isolated": True}
        assert tasks["report"]["result"] == "got 42 with six 1.16.0"

        (tmp_path / "custom.py").write_text(CUSTOM)
        submitted = cli("dags", "submit", str(tmp_path / "custom.py"))
        assert submitted.returncode == 0, submitted.stderr
        run, tasks = _run(cli, "custom", "--conf", json.dumps({"who": "ops"}))
        assert run["state"] == "success", tasks
        assert _states(tasks) == {"greet": "success", "skip": "skipped"}
        assert tasks["greet"]["result"] == "hello ops"
        assert cli("tasks", "logs", run["run_id"], "greet").stdout == "hello ops from greet\n"

        run, tasks = _run(cli, "gated")
        assert run["state"] == "success"
        assert _states(tasks) == {"gate": "success", "load": "skipped", "report": "skipped"}

        run, tasks = _run(cli, "ending")
        assert run["state"] == "failed"
        assert _states(tasks) == {"skipper": "skipped", "after": "skipped", "quitter": "failed"}
        assert tasks["skipper"]["attempt"] == 1 and tasks["quitter"]["attempt"] == 1, "no retry was used"
        assert "the task is skipped (no new files today)" in cli("tasks", "logs", run["run_id"], "skipper").stdout
