"""Tasks that decide what runs after them (core/branching.py through the TaskFinished
handler): branches, short circuits, and python tasks that end themselves skipped or
failed without retry. Airflow's verdicts for the same DAG shapes are the expected ones."""

from __future__ import annotations

from typing import Any

import pytest

from core_support import T0, World, dag_dict, nodes, task
from raftflow.core import commands as c
from raftflow.core.result import Code
from raftflow.core.states import RunState, TaskState
from raftflow.kinds.base import InvalidArgs
from raftflow.kinds.python import KIND as PYTHON
from raftflow.worker.pyrunner import EXIT_FAILED_NO_RETRY, EXIT_SKIPPED

S = TaskState
WORKERS = nodes("n1", slots=8)


def py(task_id: str, upstream: tuple[str, ...] = (), **kw: Any) -> dict[str, Any]:
    return {"task_id": task_id, "kind": "python", "python_callable": "steps:decide", "upstream": list(upstream), **kw}


def branch_dag(**branch_kw: Any) -> dict[str, Any]:
    """br chooses among a and b (b in task group "g"); join waits for both as Airflow
    advises after a branch (none_failed_min_one_success); after_a follows a."""
    return dag_dict("d", [
        py("br", branch=True, **branch_kw),
        task("a", upstream=["br"]),
        {**task("b", upstream=["br"]), "group": "g"},
        task("after_a", upstream=["a"]),
        task("join", upstream=["a", "b"], trigger_rule="none_failed_min_one_success"),
    ])


def finish(w: World, task_id: str, exit_code: int = 0, result: Any = None, at: float = T0 + 5) -> None:
    """The worker's start claim and result for the current attempt of `task_id` in run r1."""
    import json

    ti = w.ti("r1", task_id)
    w.apply(c.TaskStarted("r1", task_id, ti.attempt, ti.node, at - 1))
    w.apply(c.TaskFinished("r1", task_id, ti.attempt, ti.node, exit_code, at - 1, at, "", "", at,
                           "" if result is None else json.dumps(result)))


def run_to_end(w: World, results: dict[str, Any], at: float = T0 + 10) -> None:
    """Plan and finish every assigned task (with its result from `results`) until the run ends."""
    for step in range(50):
        w.tick(at + step, WORKERS)
        assigned = [t for t, ti in w.run("r1").tasks.items() if ti.state is S.ASSIGNED]
        if not assigned and w.run("r1").state is not RunState.RUNNING:
            return
        for task_id in assigned:
            finish(w, task_id, result=results.get(task_id), at=at + step + 0.5)
    raise AssertionError(f"run did not end: {w.task_states('r1')}")


def started(spec: dict[str, Any]) -> World:
    w = World()
    w.submit(spec)
    w.trigger("r1", "d")
    w.tick(T0 + 1, WORKERS)
    return w


def test_a_branch_skips_the_direct_downstream_tasks_it_did_not_choose() -> None:
    w = started(branch_dag())
    finish(w, "br", result="a")
    assert w.ti("r1", "b").state is S.SKIPPED
    assert w.ti("r1", "b").reason == "branch 'br' followed 'a'"
    assert w.ti("r1", "a").state is S.PENDING and w.ti("r1", "after_a").state is S.PENDING
    run_to_end(w, {})
    assert w.task_states("r1") == {"br": S.SUCCESS, "a": S.SUCCESS, "b": S.SKIPPED, "after_a": S.SUCCESS,
                                   "join": S.SUCCESS}
    assert w.run("r1").state is RunState.SUCCESS


@pytest.mark.parametrize("chosen, skipped", [
    (["a", "b"], set()),
    ("g", {"a"}),                 # a task group follows its tasks
    (None, {"a", "b"}),           # None follows nothing
    ([], {"a", "b"}),
])
def test_what_a_branch_follows(chosen: Any, skipped: set[str]) -> None:
    w = started(branch_dag())
    finish(w, "br", result=chosen)
    assert {t for t in ("a", "b") if w.ti("r1", t).state is S.SKIPPED} == skipped
    assert w.ti("r1", "br").state is S.SUCCESS


def test_a_branch_that_follows_nothing_skips_the_join_and_the_run_succeeds() -> None:
    """Airflow: every upstream skipped -> none_failed_min_one_success skips; a run whose
    leaves were all skipped succeeded."""
    w = started(branch_dag())
    finish(w, "br", result=None)
    run_to_end(w, {})
    assert w.task_states("r1")["join"] is S.SKIPPED and w.task_states("r1")["after_a"] is S.SKIPPED
    assert w.run("r1").state is RunState.SUCCESS


@pytest.mark.parametrize("chosen, error", [
    ("zzz", "branch 'br' chose 'zzz': no such task or task group in DAG 'd'"),
    (5, "branch 'br' must return a task id, a list of task ids or None; it returned 5"),
    (["a", 1], "branch 'br' must return a task id, a list of task ids or None; it returned [\"a\", 1]"),
])
def test_a_branch_that_chooses_what_does_not_exist_fails_and_skips_nothing(chosen: Any, error: str) -> None:
    w = started(branch_dag())
    finish(w, "br", result=chosen)
    br = w.ti("r1", "br")
    assert br.state is S.FAILED and br.reason == error and br.exit_code == 0
    assert w.ti("r1", "a").state is S.PENDING and w.ti("r1", "b").state is S.PENDING
    run_to_end(w, {})
    assert w.task_states("r1")["a"] is S.UPSTREAM_FAILED and w.run("r1").state is RunState.FAILED


def test_a_branch_reason_names_a_few_ids_whatever_the_result_holds() -> None:
    """A 64 KiB result of ids must not become a 64 KiB reason on every skipped task."""
    w = started(branch_dag())
    finish(w, "br", result=["a"] * 6000)
    assert w.ti("r1", "b").reason == "branch 'br' followed 'a'"
    w = started(branch_dag())
    finish(w, "br", result=[f"missing{i}" for i in range(3000)])
    reason = w.ti("r1", "br").reason
    assert reason.startswith("branch 'br' chose 'missing0', 'missing1', 'missing2', 'missing3', 'missing4' and "
                             "2995 more: no such task") and len(reason) < 300


def test_a_bad_branch_choice_uses_the_tasks_retries() -> None:
    w = started(branch_dag(retries=1))
    finish(w, "br", result="zzz")
    assert w.ti("r1", "br").state is S.UP_FOR_RETRY


def test_a_branch_skips_only_tasks_that_have_not_started() -> None:
    """b runs whatever happens (trigger rule always): the branch leaves it alone."""
    spec = branch_dag()
    spec["tasks"][2]["trigger_rule"] = "always"
    w = started(spec)
    assert w.ti("r1", "b").state is S.ASSIGNED
    finish(w, "br", result="a")
    assert w.ti("r1", "b").state is S.ASSIGNED


def short_dag(**kw: Any) -> dict[str, Any]:
    """sc -> a -> b; c after a whatever it did (all_done)."""
    return dag_dict("d", [py("sc", short_circuit=True, **kw), task("a", upstream=["sc"]),
                          task("b", upstream=["a"]), task("c", upstream=["a"], trigger_rule="all_done")])


@pytest.mark.parametrize("value", [True, 1, "yes", [0], {"k": 0}])
def test_a_short_circuit_with_a_true_value_changes_nothing(value: Any) -> None:
    w = started(short_dag())
    finish(w, "sc", result=value)
    run_to_end(w, {})
    assert set(w.task_states("r1").values()) == {S.SUCCESS}


@pytest.mark.parametrize("value", [None, False, 0, "", [], {}])
def test_a_short_circuit_with_a_false_value_skips_everything_after_it(value: Any) -> None:
    w = started(short_dag())
    finish(w, "sc", result=value)
    assert {t: s for t, s in w.task_states("r1").items()} == {"sc": S.SUCCESS, "a": S.SKIPPED, "b": S.SKIPPED,
                                                             "c": S.SKIPPED}
    assert w.ti("r1", "c").reason.startswith("short circuit 'sc' returned ")
    run_to_end(w, {})
    assert w.run("r1").state is RunState.SUCCESS


def test_a_short_circuit_that_respects_trigger_rules_skips_only_the_next_tasks() -> None:
    w = started(short_dag(ignore_downstream_trigger_rules=False))
    finish(w, "sc", result=False)
    assert w.ti("r1", "a").state is S.SKIPPED and w.ti("r1", "b").state is S.PENDING
    run_to_end(w, {})
    assert w.task_states("r1") == {"sc": S.SUCCESS, "a": S.SKIPPED, "b": S.SKIPPED, "c": S.SUCCESS}


def test_a_python_task_ends_itself_skipped_or_failed_without_using_retries() -> None:
    w = started(dag_dict("d", [py("s", retries=3), py("f", retries=3), py("x", retries=3),
                               task("after_s", upstream=["s"])]))
    finish(w, "s", exit_code=EXIT_SKIPPED)
    finish(w, "f", exit_code=EXIT_FAILED_NO_RETRY)
    finish(w, "x", exit_code=1)
    assert w.ti("r1", "s").state is S.SKIPPED
    assert "the callable raised SkipTask or AirflowSkipException" in w.ti("r1", "s").story[-1].reason
    assert w.ti("r1", "f").state is S.FAILED and "failed without retry" in w.ti("r1", "f").story[-1].reason
    assert w.ti("r1", "x").state is S.UP_FOR_RETRY
    w.tick(T0 + 6, WORKERS)
    assert w.ti("r1", "after_s").state is S.SKIPPED


def test_a_bash_task_exiting_with_the_python_codes_is_just_a_failure() -> None:
    w = started(dag_dict("d", [task("b1", retries=1), task("b2")]))
    finish(w, "b1", exit_code=EXIT_SKIPPED)
    finish(w, "b2", exit_code=EXIT_FAILED_NO_RETRY)
    assert w.ti("r1", "b1").state is S.UP_FOR_RETRY and w.ti("r1", "b2").state is S.FAILED


@pytest.mark.parametrize("fields, error", [
    ({"branch": True, "short_circuit": True}, "a python task is a branch or a short circuit, not both"),
    ({"branch": "yes"}, "branch must be true or false, got 'yes'"),
    ({"ignore_downstream_trigger_rules": 0}, "ignore_downstream_trigger_rules must be true or false, got 0"),
])
def test_bad_branch_fields_are_refused_with_the_reason(fields: dict[str, Any], error: str) -> None:
    with pytest.raises(InvalidArgs, match=error.replace("(", r"\(").replace(")", r"\)")):
        PYTHON.parse({"python_callable": "m:f", **fields}, {})
    w = World()
    result = w.submit(dag_dict("d", [py("br", **fields)]), expect=Code.INVALID)
    assert error in result.reason


def test_a_plain_python_task_spec_is_unchanged_by_the_new_fields() -> None:
    """Fields left at their defaults are not stored: specs submitted before them keep
    their digest."""
    w = World()
    w.submit(dag_dict("d", [py("p")]))
    assert w.state.dags["d"].latest.spec.task("p").args == {}
