"""raftflow's Airflow layer (raftflow_cli.airflow_compat): what Airflow DAG files become.

The files under tests/airflow_dags/ run here in-process with the layer's finder
installed (removed again after each test, with every `airflow*` module), and their
DAGs' spec dicts and reports are checked field by field. Refusals are checked through
the real loader child, which must name the file and the line marked `# REFUSED:`."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pendulum
import pytest

from raftflow_cli import airflow_compat
from raftflow_cli.airflow_compat import _finder
from raftflow_cli.airflow_compat._schedule import ScheduleRefused, map_schedule, zone_name
from raftflow_cli.loader import inspect_file
from raftflow_cli.main import ignored_warnings

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "tests" / "airflow_dags"


@pytest.fixture
def load() -> Iterator[Any]:
    """load(path) -> ({dag_id: DAG}, [Refusal]): the file run as the loader child runs it."""
    before = list(sys.meta_path)

    def run(path: Path) -> tuple[dict[str, Any], list[Any]]:
        airflow_compat.install(path)
        runpy.run_path(str(path.resolve()), run_name="__raftflow_dag_file__")
        return {d.dag_id: d for d in airflow_compat.created_dags()}, airflow_compat.file_refusals()

    yield run
    sys.meta_path[:] = before
    for name in [m for m in sys.modules if m == "airflow" or m.startswith("airflow.")]:
        del sys.modules[name]


def tasks_of(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["task_id"]: t for t in spec["tasks"]}


# ---------------------------------------------------------------- the finder
ISSUE_PATHS = [
    "airflow", "airflow.models", "airflow.models.dag", "airflow.sdk", "airflow.decorators",
    "airflow.operators.bash", "airflow.operators.empty", "airflow.operators.dummy", "airflow.operators.python",
    "airflow.operators.trigger_dagrun", "airflow.providers.standard.operators.bash",
    "airflow.providers.standard.operators.empty", "airflow.providers.standard.operators.python",
    "airflow.providers.standard.operators.trigger_dagrun", "airflow.providers.ssh.operators.ssh",
    "airflow.utils.trigger_rule", "airflow.utils.task_group", "airflow.exceptions", "airflow.models.baseoperator",
    "airflow.models.xcom_arg", "airflow.utils.dates", "airflow.utils.timezone", "airflow.operators.bash_operator",
    "airflow.operators.dummy_operator", "airflow.operators.python_operator",
    "airflow.contrib.operators.ssh_operator",
]


def test_every_module_path_the_issue_names_imports_and_offers_its_names(load, tmp_path: Path) -> None:
    source = "\n".join(f"import {p}" for p in ISSUE_PATHS) + """
from airflow.models.baseoperator import chain, cross_downstream
from airflow.models import Variable, Param, DAG as ModelsDAG
from airflow.sdk import DAG, dag, task, TaskGroup, Param as SdkParam, Variable as SdkVariable
from airflow.utils.dates import days_ago
from airflow.exceptions import AirflowException, AirflowSkipException
from airflow.providers.ssh.operators.ssh import SSHOperator
from airflow.contrib.operators.ssh_operator import SSHOperator as OldSSH
import airflow
assert airflow.DAG is DAG is ModelsDAG
assert airflow.models.DAG is DAG and airflow.models.dag.DAG is DAG
assert airflow.utils.dates.days_ago is days_ago
assert airflow.operators.bash_operator.BashOperator is airflow.providers.standard.operators.bash.BashOperator
assert OldSSH is SSHOperator
"""
    path = tmp_path / "imports.py"
    path.write_text(source)
    load(path)


def test_an_unknown_airflow_module_fails_its_import_naming_it(load, tmp_path: Path) -> None:
    path = tmp_path / "s3.py"
    path.write_text("from airflow.providers.amazon.aws.operators.s3 import S3CreateBucketOperator\n")
    with pytest.raises(ModuleNotFoundError, match="airflow.providers.amazon' in raftflow's Airflow layer"):
        load(path)


def test_the_layer_is_never_a_top_level_airflow_package() -> None:
    # Outside the loader child nothing named airflow is importable (the layer is not installed as one).
    out = subprocess.run([sys.executable, "-c", "import importlib.util, sys; "
                          "print(importlib.util.find_spec('airflow') is None)"], capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stderr
    assert all(not name.startswith("airflow") for name in _finder.MODULES if "." not in name and name != "airflow")


# ---------------------------------------------------------------- what maps
def test_an_airflow_1_10_file_maps_its_defaults_and_lists_what_it_ignores(load) -> None:
    dags, refusals = load(DAGS / "airflow1_style.py")
    assert refusals == []
    dag = dags["airflow1_style"]
    spec = dag.to_spec()
    assert (spec["schedule"], spec["catchup"], spec["is_paused_upon_creation"]) == ("@daily", "latest", True)
    assert spec["description"] == "An Airflow 1.10 style DAG"
    start_date = datetime.fromisoformat(spec["start_date"])
    assert start_date.tzinfo is not None and start_date.time().isoformat() == "00:00:00"
    tasks = tasks_of(spec)
    assert tasks["start"] == {"task_id": "start", "kind": "empty", "upstream": []}
    assert tasks["extract"] == {"task_id": "extract", "kind": "bash", "upstream": ["start"], "retries": 1,
                                "retry_delay": 1.0, "execution_timeout": 300.0,
                                "command": "echo extracting {{ ds }}", "skip_on_exit_code": [99],
                                "push_last_line": True}   # (do_xcom_push: the last line is its return value)
    assert tasks["flaky"]["retries"] == 0 and tasks["flaky"]["upstream"] == ["start"]
    assert tasks["cleanup"]["trigger_rule"] == "all_done"
    assert tasks["cleanup"]["upstream"] == ["extract", "flaky"]
    assert tasks["report"]["upstream"] == ["extract"]
    report = dag.report()
    assert [i["argument"] for i in report["ignored"]] == ["email", "email_on_failure", "email_on_retry", "owner",
                                                          "provide_context"]
    assert all(i["where"] == "default_args" for i in report["ignored"])


def test_an_airflow_2_file_maps_dag_decorator_groups_chain_params_and_template_files(load) -> None:
    dags, refusals = load(DAGS / "airflow2_style.py")
    assert refusals == []
    spec = dags["airflow2_style"].to_spec()
    assert spec["schedule"] == "30 6 * * 1-5" and spec["timezone"] == "Europe/Berlin"
    assert spec["start_date"] == "2026-01-01T00:00:00+01:00"
    assert (spec["max_active_runs"], spec["dagrun_timeout"], spec["tags"]) == (1, 1800.0, ["compat", "airflow2"])
    assert spec["params"] == {"who": "team"}
    assert spec["param_schemas"] == {"who": {"type": "string", "minLength": 1}}
    assert spec["doc_md"] == "Weekday reports, grouped by stage."
    tasks = tasks_of(spec)
    assert list(tasks) == ["begin", "extract.orders", "extract.customers", "checks.maybe_skip", "checks.strict",
                           "greet", "after_skip", "tolerant", "done"]
    assert tasks["extract.orders"]["group"] == "extract" and tasks["extract.orders"]["upstream"] == ["begin"]
    assert tasks["greet"]["upstream"] == ["extract.orders", "extract.customers"]   # chain: the group's leaves
    # the .sh file's content, with the .sql file it includes inlined (nodes never see the DAG's folder)
    assert tasks["greet"]["command"] == (DAGS / "templates" / "greet.sh").read_text().replace(
        "{% include 'count.sql' %}", "SELECT count(*) FROM orders WHERE day = '{{ ds }}'")
    assert "include" not in tasks["greet"]["command"]
    assert tasks["checks.strict"]["upstream"] == ["extract.orders", "extract.customers"]   # cross_downstream
    assert tasks["checks.strict"]["skip_on_exit_code"] == []
    assert tasks["checks.maybe_skip"]["skip_on_exit_code"] == [99]
    assert tasks["tolerant"]["trigger_rule"] == "none_failed"
    assert tasks["tolerant"]["upstream"] == ["checks.maybe_skip", "greet"]
    assert tasks["done"] == {"task_id": "done", "kind": "empty", "trigger_rule": "all_done",
                             "upstream": ["after_skip", "tolerant", "checks.strict"]}
    assert all(t.get("retries") == 0 for t in tasks.values() if t["kind"] == "bash")
    ignored = dags["airflow2_style"].report()["ignored"]
    assert ignored == [{"argument": "owner", "where": "default_args"}, {"argument": "sla", "where": "default_args"}]


def test_an_airflow_3_file_maps_sdk_nested_groups_labels_and_doc_md(load) -> None:
    dags, refusals = load(DAGS / "airflow3_style.py")
    assert refusals == []
    spec = dags["airflow3_style"].to_spec()
    assert spec["is_paused_upon_creation"] is False and spec["schedule"] is None
    assert spec["doc_md"].startswith("# Airflow 3 style")
    assert spec["param_schemas"] == {"rows": {"type": "integer", "minimum": 0}} and spec["params"] == {"rows": 10}
    tasks = tasks_of(spec)
    assert tasks["outer.inner.deep"] == {"task_id": "outer.inner.deep", "kind": "bash", "upstream": ["outer.first"],
                                         "group": "outer.inner", "command": 'echo "stage=$STAGE"',
                                         "skip_on_exit_code": [99], "env": {"STAGE": "inner"}, "append_env": True,
                                         "push_last_line": True}
    assert tasks["outer.first"]["doc_md"] == "Prints the row count." and tasks["outer.first"]["group"] == "outer"
    assert tasks["outer.first"]["upstream"] == ["start"]
    assert tasks["report"]["upstream"] == ["outer.inner.deep"]   # through the Label: the group's leaf
    assert tasks["rescue"]["trigger_rule"] == "one_failed" and tasks["after_fail"]["upstream"] == ["fails"]


def test_trigger_dagrun_operator_maps_to_the_trigger_dagrun_kind(load) -> None:
    dags, refusals = load(DAGS / "airflow3_trigger.py")
    assert refusals == []
    tasks = tasks_of(dags["airflow3_trigger"].to_spec())
    assert tasks["trigger_target"] == {
        "task_id": "trigger_target", "kind": "trigger_dagrun", "upstream": [],
        "trigger_dag_id": "airflow3_target", "conf": {"note": "from {{ run_id }}"},
        "wait_for_completion": True, "poke_interval": 1.0}
    target = dags["airflow3_target"].to_spec()
    assert target["params"] == {"note": "default"} and tasks_of(target)["echo_conf"]["kind"] == "bash"


def test_the_origin_notes_mlexpert_dag_maps_to_ssh_tasks(load) -> None:
    dags, refusals = load(ROOT / "dags" / "mlexpert_dag.py")
    assert refusals == []
    dag = dags["mlexpert_dag"]
    spec = dag.to_spec()
    tasks = tasks_of(spec)
    assert {t["kind"] for t in tasks.values()} == {"ssh"}
    assert tasks["generate_training_data"]["upstream"] == ["aggregate_search_interaction", "aggregate_user_features"]
    assert all(t["ssh_conn_id"] == "spark_master" and t["retries"] == 1 for t in tasks.values())
    assert tasks["aggregate_user_features"]["command"] == \
        "spark-submit s3://bucket_name/aggregate_user_features.py {{ ds }}"
    assert spec["start_date"].startswith("2026-") and spec["is_paused_upon_creation"] is True
    assert {i["argument"] for i in dag.report()["ignored"]} == {"owner", "email"}


def test_default_args_reach_every_task_and_explicit_arguments_win(load, tmp_path: Path) -> None:
    path = tmp_path / "defaults.py"
    path.write_text("""
from datetime import datetime, timedelta
from airflow import DAG
from airflow.operators.bash import BashOperator
from airflow.operators.empty import EmptyOperator
with DAG("defaults", start_date=datetime(2026, 1, 1), schedule=None, default_args={
        "retries": 2, "retry_delay": timedelta(minutes=1), "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10), "pool": "etl", "pool_slots": 2, "priority_weight": 5,
        "queue": "gpu", "depends_on_past": True, "wait_for_downstream": True, "trigger_rule": "all_done",
        "execution_timeout": timedelta(hours=1), "owner": "x", "on_failure_callback": print}):
    BashOperator(task_id="a", bash_command="true")
    BashOperator(task_id="b", bash_command="true", retries=0, pool="other", owner="y", sla=timedelta(1))
    EmptyOperator(task_id="e")
""")
    dags, refusals = load(path)
    assert refusals == []
    tasks = tasks_of(dags["defaults"].to_spec())
    common = {"retries": 2, "retry_delay": 60.0, "retry_exponential_backoff": True, "max_retry_delay": 600.0,
              "pool": "etl", "pool_slots": 2, "priority_weight": 5, "queue": "gpu", "depends_on_past": True,
              "wait_for_downstream": True, "trigger_rule": "all_done", "execution_timeout": 3600.0}
    assert {k: tasks["a"][k] for k in common} == common
    assert (tasks["b"]["retries"], tasks["b"]["pool"]) == (0, "other")
    assert tasks["e"] == {"task_id": "e", "kind": "empty", "upstream": [], "trigger_rule": "all_done",
                          "depends_on_past": True, "callbacks": {"failure": "__dag_file__:print"}}
    assert tasks["a"]["callbacks"] == {"failure": "__dag_file__:print"}, "default_args' callbacks reach each task"
    report = dags["defaults"].report()
    assert {i["argument"] for i in report["ignored"]} == {"owner"}
    assert next(t for t in report["tasks"] if t["task_id"] == "b")["ignored"] == ["owner", "sla"]


def test_ssh_operator_maps_environment_get_pty_and_cmd_timeout(load, tmp_path: Path) -> None:
    (tmp_path / "remote.sh").write_text("echo remote {{ ds }}\n")
    path = tmp_path / "ssh.py"
    path.write_text("""
import pendulum
from airflow.providers.ssh.operators.ssh import SSHOperator
from airflow.sdk import DAG
with DAG("ssh", schedule="@hourly", start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=True):
    SSHOperator(task_id="s", ssh_conn_id="box", command="remote.sh", environment={"A": "1"}, get_pty=True,
                cmd_timeout=30, conn_timeout=5)
""")
    dags, refusals = load(path)
    assert refusals == []
    spec = dags["ssh"].to_spec()
    assert spec["catchup"] == "all"
    assert tasks_of(spec)["s"] == {"task_id": "s", "kind": "ssh", "upstream": [], "command": "echo remote {{ ds }}\n",
                                   "ssh_conn_id": "box", "env": {"A": "1"}, "get_pty": True, "cmd_timeout": 30.0}
    assert dags["ssh"].report()["tasks"][0]["ignored"] == ["conn_timeout"]


# ---------------------------------------------------------------- schedules
START = datetime(2026, 1, 5, 3, 15, tzinfo=timezone.utc)   # a Monday


@pytest.mark.parametrize("value, cron", [
    (None, None), ("@daily", "@daily"), ("0 2 * * *", "0 2 * * *"), ("@quarterly", "0 0 1 */3 *"),
    (timedelta(days=1), "15 3 * * *"), (timedelta(hours=6), "15 3,9,15,21 * * *"),
    (timedelta(minutes=20), "15,35,55 * * * *"), (timedelta(weeks=1), "15 3 * * 1"),
    (timedelta(minutes=30), "15,45 * * * *"),
])
def test_schedules_that_map_to_cron(value: Any, cron: str | None) -> None:
    assert map_schedule(value, START, "UTC").cron == cron


def test_once_is_a_single_tick_at_start_date_in_the_dags_zone() -> None:
    start = pendulum.datetime(2026, 3, 1, 9, 30, tz="Europe/Berlin")
    mapped = map_schedule("@once", start, "Europe/Berlin")
    assert (mapped.cron, mapped.timezone, mapped.end_date) == ("30 9 1 3 *", "Europe/Berlin", start)


@pytest.mark.parametrize("value, start, message", [
    (timedelta(minutes=90), START, "only intervals that divide an hour or a day"),
    (timedelta(hours=5), START, "5 hours does not divide a day"),
    (timedelta(minutes=7), START, "7 minutes does not divide an hour"),
    (timedelta(seconds=30), START, "not a whole number of minutes"),
    (timedelta(days=1), None, "needs a start_date"),
    ("@once", None, "needs a start_date"),
    ("@continuous", START, "no raftflow form"),
    (object(), START, "custom timetable"),
    (["dataset"], START, "data-aware schedule"),
])
def test_schedules_raftflow_cannot_express_are_refused_with_why(value: Any, start: Any, message: str) -> None:
    with pytest.raises(ScheduleRefused, match=message):
        map_schedule(value, start, "UTC")


def test_zone_names_come_from_pendulum_zoneinfo_and_whole_hour_offsets() -> None:
    assert zone_name(pendulum.timezone("Asia/Tokyo")) == "Asia/Tokyo"
    assert zone_name(timezone.utc) == "UTC" and zone_name(None) == "UTC"
    assert zone_name(timezone(timedelta(hours=2))) == "Etc/GMT-2"
    assert zone_name(timezone(timedelta(hours=5, minutes=30))) is None


# ---------------------------------------------------------------- refusals, through the real loader
def refused_lines(path: Path) -> list[tuple[int, str]]:
    return [(n, line.split("# REFUSED:")[1].strip()) for n, line in enumerate(path.read_text().splitlines(), 1)
            if "# REFUSED:" in line]


@pytest.mark.parametrize("name", sorted(p.name for p in (DAGS / "refused").glob("*.py")))
def test_what_cannot_be_honoured_fails_the_load_naming_file_line_and_feature(name: str) -> None:
    path = DAGS / "refused" / name
    result = inspect_file(path)
    assert result["ok"] is False and result["dags"] == []
    expected = refused_lines(path)
    assert expected, f"{name} marks no # REFUSED: line"
    errors = result["report"]["errors"]
    for line, feature in expected:
        assert any(e.startswith(f"{path}: line {line}:") and feature in e for e in errors), (line, feature, errors)


def test_a_template_file_that_is_not_there_is_refused(load, tmp_path: Path) -> None:
    path = tmp_path / "missing.py"
    path.write_text("from datetime import datetime\nfrom airflow import DAG\n"
                    "from airflow.operators.bash import BashOperator\n"
                    "with DAG('m', start_date=datetime(2026, 1, 1), schedule=None):\n"
                    "    BashOperator(task_id='t', bash_command='run.sh')\n")
    _, refusals = load(path)
    assert [(r.line, r.feature) for r in refusals] == [(5, "bash_command template file 'run.sh'")]
    assert "end it with a space" in refusals[0].why


def test_an_include_that_is_not_there_is_refused(load, tmp_path: Path) -> None:
    path = tmp_path / "include.py"
    path.write_text("from datetime import datetime\nfrom airflow import DAG\n"
                    "from airflow.operators.bash import BashOperator\n"
                    "with DAG('i', start_date=datetime(2026, 1, 1), schedule=None):\n"
                    "    BashOperator(task_id='t', bash_command='psql -c \"{% include \\'gone.sql\\' %}\"')\n")
    _, refusals = load(path)
    assert [(r.line, r.feature) for r in refusals] == [(5, "bash_command includes 'gone.sql'")]


def test_variable_get_at_load_time_is_refused_with_the_template_to_use(tmp_path: Path) -> None:
    path = tmp_path / "var.py"
    path.write_text("from airflow.models import Variable\nBUCKET = Variable.get('bucket')\n")
    result = inspect_file(path)
    assert result["ok"] is False
    assert result["error"] == (f"{path}: line 2: not supported: Variable.get('bucket') while the DAG file loads: "
                               "raftflow loads DAG files away from the cluster; read it in a templated field "
                               "instead: {{ var.value.bucket }}, or in the task's callable")


def test_unknown_arguments_are_refused_not_dropped(load, tmp_path: Path) -> None:
    path = tmp_path / "unknown.py"
    path.write_text("from datetime import datetime\nfrom airflow import DAG\n"
                    "from airflow.operators.bash import BashOperator\n"
                    "with DAG('u', start_date=datetime(2026, 1, 1), schedule=None, colour='red'):\n"
                    "    BashOperator(task_id='t', bash_command='true', bash_colour=1)\n")
    _, refusals = load(path)
    assert [(r.line, r.feature) for r in refusals] == [(4, "DAG argument 'colour'"),
                                                       (5, "BashOperator argument 'bash_colour'")]


# ---------------------------------------------------------------- the CLI
def test_dags_check_prints_tasks_kinds_ignored_and_refused_and_exits_2_on_refusal() -> None:
    out = subprocess.run([sys.executable, "-m", "raftflow_cli.main", "dags", "check", str(DAGS / "refused")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "custom operator HelloOperator" in out.stdout and "0 of 4 file(s) load; 4 refused" in out.stdout
    as_json = subprocess.run([sys.executable, "-m", "raftflow_cli.main", "dags", "check", "--json",
                              str(DAGS / "refused" / "custom_operator.py")], capture_output=True, text=True,
                             timeout=60)
    report = json.loads(as_json.stdout)
    assert (report["loaded"], report["failed"]) == (0, 1)
    tasks = {t["task_id"]: t for t in report["files"][0]["dags"][0]["tasks"]}
    assert tasks["hello"] == {"task_id": "hello", "operator": "HelloOperator", "kind": "-", "line": 16,
                              "ignored": [], "refused": ["custom operator HelloOperator"]}
    assert tasks["pod"]["kind"] == "bash" and tasks["pod"]["refused"] == ["executor_config"]


def test_submit_warns_of_every_ignored_argument() -> None:
    reports = [{"file": "f.py", "dags": [{"dag_id": "d", "ignored": [{"argument": "owner", "where": "default_args"}],
                                          "tasks": [{"task_id": "t", "ignored": ["sla", "owner"]}]}]}]
    assert ignored_warnings(reports) == [
        "DAG 'd' (f.py): accepted but not acted on by raftflow: owner (default_args, task t); sla (task t). "
        "`raftflow dags check f.py` lists them"]
    assert ignored_warnings([{"file": "g.py", "dags": [{"dag_id": "g", "ignored": [], "tasks": []}]}]) == []


def test_dag_decorator_params_task_group_decorator_and_unprefixed_groups(load, tmp_path: Path) -> None:
    path = tmp_path / "decorators.py"
    path.write_text("""
import pendulum
from airflow.decorators import dag, task_group
from airflow.operators.bash import BashOperator
from airflow.utils.task_group import TaskGroup

@dag(dag_id="decorated", schedule="@once", start_date=pendulum.datetime(2026, 2, 3, 4, 5, tz="UTC"))
def make(table="orders", limit=5):
    @task_group(group_id="load")
    def load_group():
        BashOperator(task_id="copy", bash_command="echo {{ params.table }}")
    with TaskGroup("flat", prefix_group_id=False, default_args={"retries": 4}):
        BashOperator(task_id="plain", bash_command="true")
    load_group()

make()
""")
    dags, refusals = load(path)
    assert refusals == []
    spec = dags["decorated"].to_spec()
    assert spec["params"] == {"table": "orders", "limit": 5}
    assert (spec["schedule"], spec["end_date"]) == ("5 4 3 2 *", "2026-02-03T04:05:00+00:00")   # @once
    tasks = tasks_of(spec)
    assert tasks["load.copy"]["group"] == "load"
    assert (tasks["plain"]["group"], tasks["plain"]["retries"]) == ("flat", 4)


def test_branch_and_short_circuit_operators_map_to_python_tasks_that_decide_downstream(
        load, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a callable the nodes can import; Airflow's `AirflowSkipException` inside one is
    known by name at run time (worker/pyrunner.py)."""
    (tmp_path / "choosers.py").write_text("def pick(**context):\n    return 'fast'\n\n"
                                          "def has_rows():\n    return 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "branchy.py"
    path.write_text("""
from datetime import datetime
from airflow import DAG
from airflow.operators.python import BranchPythonOperator, ShortCircuitOperator, PythonOperator
from airflow.operators.empty import EmptyOperator
from choosers import pick, has_rows
with DAG("branchy", start_date=datetime(2026, 1, 1), schedule=None):
    choose = BranchPythonOperator(task_id="choose", python_callable=pick)
    gate = ShortCircuitOperator(task_id="gate", python_callable=has_rows, ignore_downstream_trigger_rules=False)
    plain = PythonOperator(task_id="plain", python_callable=has_rows)
    choose >> [EmptyOperator(task_id="fast"), EmptyOperator(task_id="slow")]
    gate >> plain
""")
    dags, refusals = load(path)
    assert refusals == []
    tasks = tasks_of(dags["branchy"].to_spec())
    assert tasks["choose"] == {"task_id": "choose", "kind": "python", "upstream": [],
                               "python_callable": "choosers:pick", "op_kwargs": {}, "branch": True}
    assert {k: tasks["gate"][k] for k in ("python_callable", "short_circuit", "ignore_downstream_trigger_rules")} \
        == {"python_callable": "choosers:has_rows", "short_circuit": True, "ignore_downstream_trigger_rules": False}
    assert "branch" not in tasks["plain"] and "short_circuit" not in tasks["plain"]


def test_a_callable_defined_in_the_dag_file_is_named_for_the_tasks_process(tmp_path: Path) -> None:
    """Airflow's PythonOperator / BranchPythonOperator and raftflow's PythonTask with a
    function of the DAG file, nested or a lambda too: "__dag_file__:NAME" (the task's
    process runs the DAG file and takes the task's function, worker/pyrunner.py)."""
    path = tmp_path / "infile.py"
    path.write_text("""
from datetime import datetime
from airflow import DAG
from airflow.operators.python import BranchPythonOperator, PythonOperator
from airflow.operators.empty import EmptyOperator

def extract(ds):
    return {"day": ds}

def choose():
    return "a"

with DAG("infile", start_date=datetime(2026, 1, 1), schedule=None):
    BranchPythonOperator(task_id="choose", python_callable=choose) >> [EmptyOperator(task_id="a"),
                                                                       EmptyOperator(task_id="b")]
    PythonOperator(task_id="extract", python_callable=extract, op_kwargs={"n": 1})
""")
    result = inspect_file(path)
    assert result["ok"], result
    tasks = tasks_of(json.loads(result["dags"][0]["spec_json"]))
    assert (tasks["extract"]["python_callable"], tasks["extract"]["op_kwargs"]) == ("__dag_file__:extract", {"n": 1})
    assert (tasks["choose"]["python_callable"], tasks["choose"]["branch"]) == ("__dag_file__:choose", True)

    native = tmp_path / "native.py"
    native.write_text("from raftflow import DAG, PythonTask\n"
                      "def load(ds):\n    return 1\n"
                      "with DAG('native'):\n    PythonTask('load', python_callable=load)\n")
    result = inspect_file(native)
    assert result["ok"], result
    assert tasks_of(json.loads(result["dags"][0]["spec_json"]))["load"]["python_callable"] == "__dag_file__:load"

    nested = tmp_path / "nested.py"
    nested.write_text("from raftflow import DAG, PythonTask\n"
                      "def outer():\n    def inner():\n        return 1\n    return inner\n"
                      "with DAG('nested'):\n    PythonTask('t', python_callable=outer())\n"
                      "    PythonTask('l', python_callable=lambda: 1)\n")
    result = inspect_file(nested)
    assert result["ok"], result
    tasks = tasks_of(json.loads(result["dags"][0]["spec_json"]))
    assert (tasks["t"]["python_callable"], tasks["l"]["python_callable"]) == ("__dag_file__:inner",
                                                                               "__dag_file__:function")


def test_taskflow_functions_become_python_tasks_passing_results(tmp_path: Path) -> None:
    """@dag with @task functions inside it (nested: found through the DAG by the task's
    process), return values passed on (the producer becomes upstream; a key of it too),
    a function called twice (f, f__1), .override, @task.branch, op_args of PythonOperator."""
    from raftflow.worker.pyrunner import RESULT_REF

    path = tmp_path / "flow.py"
    path.write_text("""
import pendulum
from airflow.sdk import dag, task
from airflow.operators.python import PythonOperator

@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1))
def flow():
    @task(multiple_outputs=True)
    def extract():
        return {"orders": 3, "day": "mon"}

    @task
    def double(n, factor=2):
        return n * factor

    @task.branch
    def route(total):
        return "big" if total > 5 else "small"

    data = extract()
    first = double(data["orders"])
    second = double.override(task_id="again")(first, factor=3)
    double(7)
    route(second) >> [PythonOperator(task_id="big", python_callable=print, op_args=[first]),
                      PythonOperator(task_id="small", python_callable=lambda: None)]

flow()
""")
    result = inspect_file(path)
    assert result["ok"], result
    tasks = tasks_of(json.loads(result["dags"][0]["spec_json"]))
    assert set(tasks) == {"extract", "double", "again", "double__1", "route", "big", "small"}
    assert {t["kind"] for t in tasks.values()} == {"python"}
    assert tasks["extract"]["python_callable"] == "__dag_file__:extract"
    assert tasks["double"]["op_args"] == [{RESULT_REF: ["extract", "orders"]}] and tasks["double"]["upstream"] == \
        ["extract"]
    assert (tasks["again"]["op_args"], tasks["again"]["op_kwargs"]) == ([{RESULT_REF: ["double"]}], {"factor": 3})
    assert tasks["again"]["upstream"] == ["double"]
    assert (tasks["double__1"]["op_args"], tasks["double__1"]["upstream"]) == ([7], [])
    assert tasks["route"]["branch"] is True and tasks["route"]["upstream"] == ["again"]
    assert tasks["big"]["upstream"] == ["double", "route"] and tasks["big"]["op_args"] == [{RESULT_REF: ["double"]}]
    assert tasks["big"]["python_callable"] == "builtins:print"


def test_bash_output_is_the_return_value_unless_do_xcom_push_is_false_and_an_xcomarg_renders_as_its_pull(
        load, tmp_path: Path) -> None:
    path = tmp_path / "bashxcom.py"
    path.write_text("""
from datetime import datetime
from airflow import DAG
from airflow.models.xcom_arg import XComArg
from airflow.operators.bash import BashOperator
with DAG("bashxcom", start_date=datetime(2026, 1, 1), schedule=None):
    push = BashOperator(task_id="push", bash_command="echo value")
    BashOperator(task_id="quiet", bash_command="echo x", do_xcom_push=False)
    BashOperator(task_id="pull", bash_command="echo $V", env={"V": str(XComArg(push))}) << push
""")
    dags, refusals = load(path)
    assert refusals == []
    tasks = tasks_of(dags["bashxcom"].to_spec())
    assert tasks["push"]["push_last_line"] is True and "push_last_line" not in tasks["quiet"]
    assert tasks["pull"]["env"] == {
        "V": "{{ task_instance.xcom_pull(task_ids='push', dag_id='bashxcom', key='return_value') }}"}
    assert [t["ignored"] for t in dags["bashxcom"].report()["tasks"]] == [[], [], []], "do_xcom_push is acted on"


def test_a_task_function_from_a_helper_module_is_found_through_the_dag_and_operator_subclasses_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "helpers.py").write_text("from airflow.sdk import task\n@task\ndef shared():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "uses_helper.py"
    path.write_text("""
import pendulum
from airflow.sdk import DAG
from airflow.operators.bash import BashOperator
from helpers import shared

class LoudBash(BashOperator):
    def execute(self, context):
        print("loud")

with DAG("uses_helper", schedule=None, start_date=pendulum.datetime(2026, 1, 1)):
    shared()
    LoudBash(task_id="loud", bash_command="echo")
""")
    result = inspect_file(path)
    assert not result["ok"]
    assert "custom operator LoudBash" in result["error"] and "a subclass of BashOperator" in result["error"]
    path.write_text(path.read_text().replace('    LoudBash(task_id="loud", bash_command="echo")\n', ""))
    result = inspect_file(path)
    assert result["ok"], result
    assert tasks_of(json.loads(result["dags"][0]["spec_json"]))["shared"]["python_callable"] == "__dag_file__:shared"
