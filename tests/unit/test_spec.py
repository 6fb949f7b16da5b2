"""DagSpec.from_dict validation and the authoring API (`with DAG(...)`, BashTask, >> <<)."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

import pytest

from core_support import dag_dict, task
from raftflow import DAG, BashTask, SSHTask, authoring
from raftflow.core.spec import SCHEDULE_PRESETS, DagSpec, SpecError, TaskSpec


def full_spec() -> dict:
    """A DAG using every field, in canonical form (what to_dict produces)."""
    return {
        "dag_id": "etl.daily-v2",
        "schedule": "*/15 * * * *",
        "timezone": "Europe/Berlin",
        "start_date": "2024-01-01T00:00:00+00:00",
        "end_date": "2024-12-31T00:00:00+00:00",
        "catchup": "all",
        "max_active_runs": 3,
        "max_active_tasks": 5,
        "description": "nightly load",
        "tags": ["etl", "nightly"],
        "is_paused_upon_creation": True,
        "keep_runs": 50,
        "keep_days": 7.5,
        "params": {"table": "orders", "limit": 10, "nested": {"a": [1, None]}},
        "dagrun_timeout": 3600.0,
        "param_schemas": {"table": {"type": "string", "enum": ["orders", "customers"]}},
        "max_queued_runs": 50,
        "doc_md": "# Nightly load\nLoads *orders*.",
        "tasks": [
            {"task_id": "extract", "kind": "bash", "command": "echo e", "upstream": [],
             "trigger_rule": "all_success", "retries": 2, "retry_delay": 30.0,
             "priority_weight": 5, "env": {"A": "1", "B": "2"}, "max_lost_attempts": 2,
             "execution_timeout": 600.0, "retry_exponential_backoff": True, "max_retry_delay": 300.0,
             "pool": "warehouse", "pool_slots": 2, "queue": "gpu", "python_callable": "", "op_kwargs": {},
             "ssh_conn_id": "", "get_pty": False},
            {"task_id": "load", "kind": "bash", "command": "echo l", "upstream": ["extract"],
             "trigger_rule": "all_success", "retries": 0, "retry_delay": 0.0,
             "priority_weight": 1, "env": {}, "max_lost_attempts": 3, "execution_timeout": None,
             "retry_exponential_backoff": False, "max_retry_delay": None,
             "pool": "default_pool", "pool_slots": 1, "queue": "default", "python_callable": "", "op_kwargs": {},
             "ssh_conn_id": "", "get_pty": False},
        ],
    }


def spec_error(raw) -> str:
    with pytest.raises(SpecError) as info:
        DagSpec.from_dict(raw)
    return str(info.value)


# --------------------------------------------------------------- valid specs
def test_valid_dag_round_trips_through_to_dict():
    spec = DagSpec.from_dict(full_spec())
    assert spec.to_dict() == full_spec()
    again = DagSpec.from_dict(spec.to_dict())
    assert again == spec
    assert again.to_dict() == spec.to_dict()
    assert again.task("load").upstream == ("extract",)
    assert again.downstream("extract") == ["load"]


def test_minimal_dag_gets_defaults():
    spec = DagSpec.from_dict({"dag_id": "d", "tasks": [{"task_id": "a", "command": "true"}]})
    assert spec.schedule is None and spec.cron is None
    assert (spec.timezone, spec.catchup, spec.max_active_runs) == ("UTC", "latest", 16)
    assert spec.tasks == (TaskSpec("a", "bash", "true"),)
    assert DagSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("preset", sorted(SCHEDULE_PRESETS))
def test_presets_expand_to_cron(preset):
    spec = DagSpec.from_dict(dag_dict(schedule=preset))
    assert spec.schedule == preset
    assert spec.cron == SCHEDULE_PRESETS[preset]


def test_daily_preset_is_midnight_cron():
    assert DagSpec.from_dict(dag_dict(schedule="@daily")).cron == "0 0 * * *"


def test_plain_cron_is_kept_and_trimmed():
    spec = DagSpec.from_dict(dag_dict(schedule="  */5 * * * *  "))
    assert spec.schedule == spec.cron == "*/5 * * * *"


@pytest.mark.parametrize("given, expected", [
    ("2024-01-01", "2024-01-01T00:00:00+00:00"),
    ("2024-01-01T01:30:00+01:00", "2024-01-01T00:30:00+00:00"),
    ("2024-06-01T12:00:00", "2024-06-01T12:00:00+00:00"),
])
def test_instants_are_normalised_to_utc(given, expected):
    assert DagSpec.from_dict(dag_dict(start_date=given)).start_date == expected


@pytest.mark.parametrize("given, expected", [(True, "all"), (False, "none"), ("latest", "latest")])
def test_catchup_booleans_map_to_policies(given, expected):
    assert DagSpec.from_dict(dag_dict(catchup=given)).catchup == expected


def test_duplicate_upstream_ids_are_collapsed_in_order():
    spec = DagSpec.from_dict(dag_dict(tasks=[task("a"), task("b"), task("c", upstream=["b", "a", "b"])]))
    assert spec.task("c").upstream == ("b", "a")


def test_env_is_sorted_for_a_canonical_spec():
    one = DagSpec.from_dict(dag_dict(tasks=[task("a", env={"Z": "1", "A": "2"})]))
    two = DagSpec.from_dict(dag_dict(tasks=[task("a", env={"A": "2", "Z": "1"})]))
    assert one == two
    assert one.task("a").env == (("A", "2"), ("Z", "1"))


# ------------------------------------------------------------------ errors
def cycle_path(message: str) -> list[str]:
    match = re.search(r"dependency cycle (.+)$", message)
    assert match, message
    return match.group(1).split(" -> ")


def assert_is_cycle_in_run_order(path: list[str], spec: dict) -> None:
    """`x -> y` in the message must mean "x runs before y" (x is upstream of y)."""
    ups = {t["task_id"]: set(t["upstream"]) for t in spec["tasks"]}
    assert path[0] == path[-1] and len(path) >= 3, path
    for x, y in zip(path, path[1:]):
        assert x in ups[y], f"{x} -> {y} is not an edge of {ups}"


def test_two_task_cycle_names_the_path():
    raw = dag_dict(tasks=[task("a", upstream=["b"]), task("b", upstream=["a"])])
    message = spec_error(raw)
    assert "DAG 'd'" in message
    assert "a -> b -> a" in message or "b -> a -> b" in message, message
    assert_is_cycle_in_run_order(cycle_path(message), raw)


def test_longer_cycle_names_every_task_on_it_in_run_order():
    raw = dag_dict(tasks=[task("start"), task("x", upstream=["start", "z"]),
                          task("y", upstream=["x"]), task("z", upstream=["y"]),
                          task("end", upstream=["z"])])
    path = cycle_path(spec_error(raw))
    assert set(path) == {"x", "y", "z"}
    assert_is_cycle_in_run_order(path, raw)


def test_self_dependency_is_reported():
    message = spec_error(dag_dict(tasks=[task("a", upstream=["a"])]))
    assert "'a'" in message and "itself" in message


@pytest.mark.parametrize("raw, fragments", [
    pytest.param(dag_dict(tasks=[task("a"), task("b", upstream=["a", "ghost"])]),
                 ["DAG 'd'", "task 'b'", "unknown task 'ghost'"], id="unknown-upstream"),
    pytest.param(dag_dict(tasks=[task("a"), task("b"), task("a")]),
                 ["DAG 'd'", "duplicate task id 'a'"], id="duplicate-task"),
    pytest.param(dag_dict("bad id!"), ["dag_id 'bad id!' is invalid", "A-Z"], id="dag-id-space"),
    pytest.param(dag_dict("../x"), ["dag_id '../x' is invalid"], id="dag-id-dotdot"),
    pytest.param(dag_dict("a/b"), ["dag_id 'a/b' is invalid"], id="dag-id-slash"),
    pytest.param(dag_dict("x" * 251), ["is invalid"], id="dag-id-too-long"),
    pytest.param({"tasks": [task("a")]}, ["dag_id None is invalid"], id="dag-id-missing"),
    pytest.param(dag_dict(tasks=[task("bad id!")]), ["DAG 'd'", "task_id 'bad id!' is invalid"], id="task-id-space"),
    pytest.param(dag_dict(tasks=[task("../x")]), ["DAG 'd'", "task_id '../x' is invalid"], id="task-id-dotdot"),
    pytest.param(dag_dict(tasks=[]), ["DAG 'd'", "at least one task"], id="no-tasks"),
    pytest.param({"dag_id": "d"}, ["DAG 'd'", "at least one task"], id="tasks-missing"),
    pytest.param(dag_dict(schedule="61 * * * *"), ["DAG 'd'", "'61 * * * *'", "not a valid cron"], id="cron-range"),
    pytest.param(dag_dict(schedule="* * *"), ["'* * *'", "not a valid cron"], id="cron-fields"),
    pytest.param(dag_dict(schedule="every day"), ["'every day'", "not a valid cron"], id="cron-words"),
    pytest.param(dag_dict(schedule=""), ["DAG 'd'", "schedule must be"], id="cron-empty"),
    pytest.param(dag_dict(schedule="@fortnightly"), ["unknown schedule preset '@fortnightly'", "@daily"],
                 id="unknown-preset"),
    pytest.param(dag_dict(timezone="Mars/Olympus_Mons"), ["DAG 'd'", "unknown timezone 'Mars/Olympus_Mons'"],
                 id="unknown-timezone"),
    pytest.param(dag_dict(timezone="../etc/passwd"), ["unknown timezone '../etc/passwd'"], id="timezone-path"),
    pytest.param(dag_dict(start_date="2024-02-01", end_date="2024-01-01"),
                 ["DAG 'd'", "end_date 2024-01-01T00:00:00+00:00 is before start_date 2024-02-01T00:00:00+00:00"],
                 id="end-before-start"),
    pytest.param(dag_dict(start_date="yesterday"), ["start_date 'yesterday' is not an ISO-8601"], id="bad-date"),
    pytest.param(dag_dict(schedule_interval="@daily"), ["DAG 'd'", "unknown field(s) schedule_interval"],
                 id="unknown-dag-field"),
    pytest.param(dag_dict(tasks=[task("a", bash_command="ls")]), ["task 'a'", "unknown field(s) bash_command"],
                 id="unknown-task-field"),
    pytest.param(dag_dict(tasks=[task("a", env={"PATH": "/bin", "RAFTFLOW_NODE": "x"})]),
                 ["task 'a'", "'RAFTFLOW_NODE'"], id="env-raftflow"),
    pytest.param(dag_dict(tasks=[task("a", env={"A": 1})]), ["task 'a'", "env must map strings"], id="env-type"),
    pytest.param(dag_dict(catchup="sometimes"), ["catchup must be one of", "'sometimes'"], id="catchup"),
    pytest.param(dag_dict(max_active_runs=0), ["max_active_runs must be an integer >= 1, got 0"], id="max-runs"),
    pytest.param(dag_dict(tasks=[task("a", retries=-1)]), ["task 'a'", "retries must be an integer >= 0"],
                 id="retries-negative"),
    pytest.param(dag_dict(tasks=[task("a", retries=True)]), ["retries must be an integer"], id="retries-bool"),
    pytest.param(dag_dict(tasks=[task("a", retry_delay=-5)]), ["task 'a'", "retry_delay"], id="retry-delay"),
    pytest.param(dag_dict(tasks=[task("a", priority_weight=0)]), ["priority_weight"], id="priority"),
    pytest.param(dag_dict(tasks=[task("a", max_lost_attempts=0)]), ["max_lost_attempts"], id="lost-cap"),
    pytest.param(dag_dict(keep_runs=0), ["keep_runs"], id="keep-runs"),
    pytest.param(dag_dict(keep_days=float("nan")), ["keep_days"], id="keep-days"),
    pytest.param(dag_dict(tasks=[task("a", kind="java")]), ["task 'a'", "unknown task kind 'java'"], id="kind"),
    pytest.param(dag_dict(tasks=[{"task_id": "p", "kind": "python", "python_callable": "os.system"}]),
                 ["task 'p'", "python_callable must be 'package.module:function'", "'os.system'"], id="callable"),
    pytest.param(dag_dict(tasks=[{"task_id": "p", "kind": "python", "python_callable": "m:f", "command": "ls"}]),
                 ["task 'p'", "takes no command"], id="python-command"),
    pytest.param(dag_dict(tasks=[task("a", op_kwargs={"x": 1})]),
                 ["task 'a'", "op_kwargs belongs to python tasks, not bash"], id="kwargs-on-bash"),
    pytest.param(dag_dict(tasks=[task("a", command="   ")]), ["task 'a'", "non-empty command"], id="empty-cmd"),
    pytest.param(dag_dict(tasks=[task("s", kind="ssh")]), ["task 's'", "an ssh task needs ssh_conn_id", "got ''"],
                 id="ssh-no-connection"),
    pytest.param(dag_dict(tasks=[task("s", kind="ssh", ssh_conn_id="spark master")]),
                 ["task 's'", "needs ssh_conn_id", "'spark master'"], id="ssh-bad-connection"),
    pytest.param(dag_dict(tasks=[task("s", kind="ssh", ssh_conn_id="spark", command="  ")]),
                 ["task 's'", "this ssh task needs a non-empty command"], id="ssh-empty-cmd"),
    pytest.param(dag_dict(tasks=[task("s", kind="ssh", ssh_conn_id="spark", get_pty="yes")]),
                 ["task 's'", "get_pty must be true or false, got 'yes'"], id="ssh-pty-type"),
    pytest.param(dag_dict(tasks=[task("s", kind="ssh", ssh_conn_id="spark", env={"MY-VAR": "1"})]),
                 ["task 's'", "env name 'MY-VAR' cannot be exported to the remote shell"], id="ssh-env-name"),
    pytest.param(dag_dict(tasks=[task("a", ssh_conn_id="spark")]),
                 ["task 'a'", "ssh_conn_id belongs to ssh tasks, not bash"], id="connection-on-bash"),
    pytest.param(dag_dict(tasks=[task("a", trigger_rule="one_pass")]), ["unknown trigger_rule 'one_pass'"],
                 id="trigger-rule"),
    pytest.param(dag_dict(tasks=[{"task_id": "a", "command": "x", "upstream": "b"}]),
                 ["task 'a'", "upstream must be a list"], id="upstream-type"),
    pytest.param(dag_dict(tags="etl"), ["tags must be a list of strings"], id="tags"),
    pytest.param(dag_dict(params=["x"]), ["DAG 'd'", "params must be a JSON object"], id="params-type"),
    pytest.param(dag_dict(params={"x": float("inf")}), ["params must be plain JSON values"], id="params-nan"),
    pytest.param(dag_dict(params={"x": "y" * 70000}), ["params is 70009 bytes of JSON, more than 65536"],
                 id="params-size"),
    pytest.param(dag_dict(dagrun_timeout=0), ["dagrun_timeout must be a positive number of seconds, got 0"],
                 id="dagrun-timeout"),
    pytest.param(dag_dict(tasks=[task("a", execution_timeout="1h")]),
                 ["task 'a'", "execution_timeout must be a positive number of seconds, got '1h'"], id="exec-timeout"),
    pytest.param(dag_dict(tasks=[task("a", retry_exponential_backoff="yes")]),
                 ["task 'a'", "retry_exponential_backoff must be true or false, got 'yes'"], id="backoff-type"),
    pytest.param(dag_dict(tasks=[task("a", max_retry_delay=-1)]),
                 ["task 'a'", "max_retry_delay must be a positive number of seconds"], id="max-retry-delay"),
    pytest.param(dag_dict(tasks=[task("a", trigger_rule="some_skipped")]), ["unknown trigger_rule 'some_skipped'",
                 "all_success, all_failed, all_done, one_success, one_failed, none_failed, none_skipped, always"],
                 id="trigger-rule-list"),
    pytest.param(dag_dict(tasks=[task("a", pool="my pool")]), ["task 'a'", "pool 'my pool' is invalid"], id="pool"),
    pytest.param(dag_dict(tasks=[task("a", pool_slots=0)]), ["pool_slots must be an integer >= 1"], id="pool-slots"),
    pytest.param(dag_dict(tasks=[task("a", queue="")]), ["task 'a'", "queue '' is invalid"], id="queue"),
    pytest.param(dag_dict(max_active_tasks=0), ["max_active_tasks must be an integer >= 1"], id="max-tasks"),
    pytest.param(dag_dict(tasks=[task("a", kind="empty", command="true")]),
                 ["task 'a'", "an empty task runs nothing, so it takes no command"], id="empty-with-command"),
    pytest.param(dag_dict(tasks=["a"]), ["each task must be a JSON object"], id="task-not-object"),
    pytest.param(["not", "a", "dict"], ["must be a JSON object, got list"], id="not-object"),
])
def test_invalid_spec_message_names_the_culprit(raw, fragments):
    message = spec_error(raw)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_too_many_tasks_is_rejected():
    message = spec_error(dag_dict(tasks=[task(f"t{i}") for i in range(10_001)]))
    assert "10001 tasks is more than the limit" in message


@pytest.mark.parametrize("where", ["dag", "task"])
def test_ids_with_a_trailing_newline_are_rejected(where):
    raw = dag_dict("etl\n") if where == "dag" else dag_dict(tasks=[task("a\n")])
    spec_error(raw)


@pytest.mark.parametrize("raw", [
    pytest.param(dag_dict(timezone="Europe"), id="timezone-directory"),
    pytest.param(dag_dict(start_date="0001-01-01T00:00:00+01:00"), id="instant-overflow"),
])
def test_from_dict_raises_only_spec_error(raw):
    spec_error(raw)


@pytest.mark.parametrize("delay", [float("nan"), float("inf")])
def test_non_finite_retry_delay_is_rejected(delay):
    spec_error(dag_dict(tasks=[task("a", retry_delay=delay)]))


def test_random_cron_fields_are_rejected():
    spec_error(dag_dict(schedule="R * * * *"))


def test_cron_that_never_fires_is_rejected():
    spec_error(dag_dict(schedule="0 0 30 2 *"))


# ------------------------------------------------------------- authoring API
def upstreams(dag: DAG) -> dict[str, list[str]]:
    return {t["task_id"]: t["upstream"] for t in dag.to_spec()["tasks"]}


def test_with_dag_collects_tasks_and_rshift_declares_order():
    with DAG("auth_rshift") as dag:
        a = BashTask("a", "echo a")
        b = BashTask("b", "echo b")
        c = BashTask("c", "echo c")
        returned = a >> b >> c
    assert returned is c
    assert [t.task_id for t in dag.tasks] == ["a", "b", "c"]
    assert upstreams(dag) == {"a": [], "b": ["a"], "c": ["b"]}
    spec = DagSpec.from_dict(dag.to_spec())
    assert spec.task("c").command == "echo c"
    assert spec.task("c").kind == "bash"


def test_lshift_declares_reverse_order():
    with DAG("auth_lshift") as dag:
        a = BashTask("a", "x")
        b = BashTask("b", "x")
        returned = b << a
    assert returned is a
    assert upstreams(dag) == {"a": [], "b": ["a"]}


def test_list_on_the_left_of_rshift():
    with DAG("auth_list_left") as dag:
        a, b, c = (BashTask(n, "x") for n in "abc")
        returned = [a, b] >> c
    assert returned is c
    assert upstreams(dag) == {"a": [], "b": [], "c": ["a", "b"]}


def test_list_on_the_right_of_lshift():
    with DAG("auth_list_lshift") as dag:
        a, b, c = (BashTask(n, "x") for n in "abc")
        c << [a, b]
    assert upstreams(dag) == {"a": [], "b": [], "c": ["a", "b"]}


def test_list_on_the_right_of_rshift():
    with DAG("auth_fan_out") as dag:
        a, b, c = (BashTask(n, "x") for n in "abc")
        returned = a >> [b, c]
    assert returned == [b, c]
    assert upstreams(dag) == {"a": [], "b": ["a"], "c": ["a"]}


def test_list_on_the_left_of_lshift():
    with DAG("auth_list_rlshift") as dag:
        a, b, c = (BashTask(n, "x") for n in "abc")
        [b, c] << a
    assert upstreams(dag) == {"a": [], "b": ["a"], "c": ["a"]}


def test_ssh_task_spec_names_its_connection_and_exports_its_environment():
    with DAG("auth_ssh", default_args={"retries": 2, "env": {"STAGE": "prod"}}) as dag:
        submit = SSHTask("submit", ssh_conn_id="spark_master", command="spark-submit job.py {{ ds }}",
                         environment={"QUEUE": "etl"}, get_pty=True, execution_timeout=60)
    spec = DagSpec.from_dict(dag.to_spec())
    t = spec.task("submit")
    assert (t.kind, t.ssh_conn_id, t.get_pty, t.command) == \
        ("ssh", "spark_master", True, "spark-submit job.py {{ ds }}")
    assert dict(t.env) == {"QUEUE": "etl"}, \
        "environment replaces default_args' env, as env= does"
    assert (t.retries, t.execution_timeout) == (2, 60.0)
    assert submit.to_spec()["kind"] == "ssh"


def test_repeated_dependency_is_recorded_once():
    with DAG("auth_repeat") as dag:
        a, b = BashTask("a", "x"), BashTask("b", "x")
        a >> b
        b << a
    assert upstreams(dag) == {"a": [], "b": ["a"]}


def test_diamond_built_with_operators_validates():
    with DAG("auth_diamond") as dag:
        start, left, right, end = (BashTask(n, "x") for n in ("start", "left", "right", "end"))
        start >> [left, right] >> end
    spec = DagSpec.from_dict(dag.to_spec())
    assert spec.task("end").upstream == ("left", "right")
    assert spec.downstream("start") == ["left", "right"]


def test_chaining_with_a_non_task_is_a_type_error():
    with DAG("auth_bad_chain"):
        a = BashTask("a", "x")
        with pytest.raises(TypeError, match="cannot chain a task with str"):
            a >> "b"


def test_default_args_apply_and_task_arguments_override_them():
    with DAG("auth_defaults", default_args={"retries": 3, "retry_delay": timedelta(minutes=5),
                                            "priority_weight": 7, "owner": "ignored"}) as dag:
        BashTask("a", "x")
        BashTask("b", "x", retries=1, retry_delay=timedelta(seconds=90))
        BashTask("c", "x", retries=None)  # None means "not given": the default applies
    tasks = {t["task_id"]: t for t in dag.to_spec()["tasks"]}
    assert (tasks["a"]["retries"], tasks["a"]["retry_delay"], tasks["a"]["priority_weight"]) == (3, 300.0, 7)
    assert (tasks["b"]["retries"], tasks["b"]["retry_delay"]) == (1, 90.0)
    assert tasks["c"]["retries"] == 3
    assert "owner" not in tasks["a"]
    spec = DagSpec.from_dict(dag.to_spec())
    assert spec.task("a").retry_delay == 300.0
    assert spec.task("b").retries == 1


def test_unknown_task_argument_is_a_type_error():
    with DAG("auth_unknown_arg"):
        with pytest.raises(TypeError, match="task 'a': unknown argument"):
            BashTask("a", "x", bash_command="ls")


def test_task_outside_a_dag_raises_a_clear_error():
    with pytest.raises(RuntimeError, match=r"task 'orphan' is not in a DAG.*with DAG"):
        BashTask("orphan", "echo")


def test_explicit_dag_argument_works_outside_a_with_block():
    dag = DAG("auth_explicit")
    BashTask("a", "x", dag=dag)
    assert [t["task_id"] for t in dag.to_spec()["tasks"]] == ["a"]


def test_with_block_exit_restores_the_outer_dag():
    with DAG("auth_outer") as outer:
        with DAG("auth_inner") as inner:
            BashTask("i", "x")
        BashTask("o", "x")
    assert [t.task_id for t in outer.tasks] == ["o"]
    assert [t.task_id for t in inner.tasks] == ["i"]
    with pytest.raises(RuntimeError):
        BashTask("after", "x")


def test_dag_level_arguments_reach_the_spec():
    with DAG("auth_args", schedule="@hourly", start_date=datetime(2024, 1, 1, 1, 0),
             end_date=date(2024, 2, 1), timezone="Europe/Berlin", catchup=False,
             max_active_runs=2, tags=("a", "b"), is_paused_upon_creation=True,
             description="desc") as dag:
        BashTask("t", "x", env={"K": "V"})
    spec = DagSpec.from_dict(dag.to_spec())
    assert spec.start_date == "2024-01-01T01:00:00+00:00"   # naive datetime: UTC
    assert spec.end_date == "2024-02-01T00:00:00+00:00"     # date: midnight UTC
    assert (spec.cron, spec.timezone, spec.catchup, spec.max_active_runs) == ("0 * * * *", "Europe/Berlin", "none", 2)
    assert spec.tags == ("a", "b") and spec.is_paused_upon_creation and spec.description == "desc"
    assert spec.task("t").env == (("K", "V"),)


def test_aware_start_date_is_converted_to_utc():
    berlin = timezone(timedelta(hours=1))
    with DAG("auth_aware", start_date=datetime(2024, 1, 1, 1, 0, tzinfo=berlin)) as dag:
        BashTask("t", "x")
    assert dag.to_spec()["start_date"] == "2024-01-01T00:00:00+00:00"


def test_created_dags_records_every_dag():
    dag = DAG("auth_registry")
    assert dag in authoring.created_dags()
    assert authoring.created_dags() is not authoring._created  # a copy


@pytest.mark.parametrize("modules, error", [
    ({"../evil.py": "x = 1"}, "must be a relative path of a .py file"),
    ({"/etc/evil.py": "x = 1"}, "must be a relative path of a .py file"),
    ({"notes.txt": "x"}, "must be a relative path of a .py file"),
    ({"big.py": "x" * (256 * 1024 + 1)}, "more than the limit of 262144"),
    ({f"m{i}.py": "" for i in range(65)}, "65 modules of the DAG's folder; the limit is 64"),
    ({"bad.py": "\udcff"}, "not valid Unicode"),
    (["helpers.py"], "modules must be an object of relative path: source"),
])
def test_the_dag_folders_modules_are_bounded_and_stay_inside_it(modules, error) -> None:
    with pytest.raises(SpecError) as raised:
        DagSpec.from_dict({"dag_id": "d", "tasks": [{"task_id": "a", "command": "true"}], "modules": modules})
    assert error in str(raised.value)
