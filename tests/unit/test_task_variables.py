"""Variables from a python task's callable (worker/taskvars.py, core/variables.py
task_changes): reads see the Variables as the attempt started, with its own changes;
changes are committed with the attempt's outcome, checked at commit, and never by an
attempt that is no longer current."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core_support import T0, World, dag_dict, nodes, task
from raftflow.core import commands as c
from raftflow.core.result import Code
from raftflow.core.states import TaskState
from raftflow.core.variables import MAX_TASK_CHANGES, MAX_VARIABLES
from raftflow.worker import taskvars

WORKERS = nodes("n1", slots=4)


def started(retries: int = 0) -> World:
    w = World()
    w.submit(dag_dict("d", [task("a", retries=retries), task("b", upstream=["a"])]))
    w.trigger("r1", "d")
    w.tick(T0 + 1, WORKERS)
    return w


def finish_a(w: World, changes: Any, exit_code: int = 0, expect: Code = Code.OK, attempt: int | None = None) -> None:
    ti = w.ti("r1", "a")
    if ti.state is TaskState.ASSIGNED:
        w.apply(c.TaskStarted("r1", "a", ti.attempt, ti.node, T0 + 2))
    text = changes if isinstance(changes, str) else json.dumps(changes)
    w.apply(c.TaskFinished("r1", "a", attempt or ti.attempt, ti.node, exit_code, T0 + 2, T0 + 3, "", "", T0 + 3,
                           variables=text), expect)


def test_changes_are_set_and_deleted_with_the_outcome_whatever_it_is() -> None:
    w = started()
    w.apply(c.SetVariable("old", "1", T0))
    w.apply(c.SetVariable("gone", "x", T0))
    finish_a(w, {"old": "2", "new": '{"rows": 3}', "gone": None, "never_was": None}, exit_code=1)
    assert w.ti("r1", "a").state is TaskState.FAILED
    assert w.state.variables == {"old": "2", "new": '{"rows": 3}'}
    assert w.state.variable_bytes == len("2") + len('{"rows": 3}')


@pytest.mark.parametrize("changes, error", [
    ({"bad key!": "1"}, "variable key 'bad key!' is invalid"),
    ({"k": 1}, "a JSON object of key: text (null to delete)"),
    ({f"k{i}": "v" for i in range(MAX_TASK_CHANGES + 1)}, f"at most {MAX_TASK_CHANGES} variables"),
    ({"k": "x" * (64 * 1024 + 1)}, "the limit is 65536"),
    ("[1]", "a JSON object of key: text"),
    ("{nope", "not JSON"),
    ('{"k": "\\udcff.csv"}', "not valid Unicode (a lone surrogate)"),   # (a file name that is not UTF-8)
])
def test_malformed_changes_are_refused_at_commit_and_change_nothing(changes: Any, error: str) -> None:
    w = started()
    before = w.ti("r1", "a").state
    ti = w.ti("r1", "a")
    w.apply(c.TaskStarted("r1", "a", ti.attempt, ti.node, T0 + 2))
    text = changes if isinstance(changes, str) else json.dumps(changes)
    result = w.apply(c.TaskFinished("r1", "a", ti.attempt, ti.node, 0, T0 + 2, T0 + 3, "", "", T0 + 3,
                                    variables=text), Code.INVALID)
    assert error in result.reason
    assert w.state.variables == {} and before is TaskState.ASSIGNED and w.ti("r1", "a").state is TaskState.RUNNING


def test_changes_past_the_clusters_bounds_fail_the_attempt_and_set_nothing() -> None:
    w = started(retries=1)
    w.apply(c.ImportVariables({f"v{i}": "x" for i in range(MAX_VARIABLES)}, T0))
    finish_a(w, {"one_more": "1", "v0": "changed"})
    ti = w.ti("r1", "a")
    assert ti.state is TaskState.UP_FOR_RETRY and ti.exit_code == 1
    assert f"the limit is {MAX_VARIABLES}" in ti.reason
    assert "one_more" not in w.state.variables and w.state.variables["v0"] == "x"


def test_a_report_of_an_attempt_no_longer_current_changes_no_variable() -> None:
    w = started()
    ti = w.ti("r1", "a")
    w.apply(c.TaskStarted("r1", "a", ti.attempt, ti.node, T0 + 2))
    w.apply(c.LoseAttempt("r1", "a", ti.attempt, ti.node, "node gone", T0 + 3))
    w.apply(c.TaskFinished("r1", "a", ti.attempt, ti.node, 0, T0 + 2, T0 + 3, "", "", T0 + 4,
                           variables='{"k": "v"}'), Code.CONFLICT)
    assert w.state.variables == {}


def test_an_older_task_finished_without_the_field_still_decodes() -> None:
    payload = {"run_id": "r1", "task_id": "a", "attempt": 1, "node": "n1", "exit_code": 0, "started_at": 1.0,
               "ended_at": 2.0, "log_tail": "", "reason": "", "at": 2.0, "result": "", "xcoms": ""}
    cmd = c.from_dict(c.TaskFinished.TYPE, 3, payload)
    assert isinstance(cmd, c.TaskFinished) and cmd.variables == ""


@pytest.fixture
def in_task():
    taskvars.begin({"table": "orders", "cfg": '{"limit": 3}'})
    yield
    taskvars._current = None


def test_a_callable_reads_as_airflow_does_and_sees_its_own_changes(in_task) -> None:
    from raftflow import Variable

    assert Variable.get("table") == "orders" and Variable.get("cfg", deserialize_json=True) == {"limit": 3}
    assert Variable.get("missing", default_var=None) is None
    with pytest.raises(KeyError, match="Variable missing does not exist"):
        Variable.get("missing")
    Variable.set("cfg", {"limit": 4}, serialize_json=True)
    Variable.set("count", 7)
    assert Variable.delete("table") == 1 and Variable.delete("never") == 0
    assert Variable.get("cfg", deserialize_json=True) == {"limit": 4} and Variable.get("count") == "7"
    assert Variable.get("table", "gone") == "gone"
    assert taskvars.changes() == {"cfg": '{\n  "limit": 4\n}', "count": "7", "table": None, "never": None}


def test_a_bad_change_raises_in_the_callable_and_is_not_kept(in_task) -> None:
    with pytest.raises(ValueError, match="variable key 'a b' is invalid"):
        taskvars.set("a b", "1")
    for i in range(MAX_TASK_CHANGES):
        taskvars.set(f"k{i}", "v")
    with pytest.raises(ValueError, match=f"at most {MAX_TASK_CHANGES} variables"):
        taskvars.set("one_too_many", "v")
    taskvars.set("k0", "again")   # (a key already changed is no new change)
    assert len(taskvars.changes()) == MAX_TASK_CHANGES


def test_outside_a_task_every_call_says_where_to_read_them() -> None:
    with pytest.raises(taskvars.NoVariables, match="not while a DAG file loads"):
        taskvars.get("table")


def test_a_lone_surrogate_is_refused_where_the_callable_sets_it(in_task) -> None:
    with pytest.raises(ValueError, match="not valid Unicode"):
        taskvars.set("name", "\udcff.csv")
    assert taskvars.changes() == {}


def test_a_deeply_nested_variable_fails_nothing_but_its_own_var_json() -> None:
    from raftflow.core.context import parse_published, template_context

    w = started()
    w.apply(c.ImportVariables({"deep": "[" * 30_000 + "]" * 30_000, "flat": '{"a": 1}'}, T0))
    run = w.run("r1")
    context = parse_published(template_context(run, w.state.dag_spec(run), "a", 1, "n1",
                                                variables=w.state.variables, raw_published=True))
    assert context["var"]["json"] == {"flat": {"a": 1}}
    assert context["var"]["value"]["deep"].startswith("[[[")
