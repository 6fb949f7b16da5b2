"""skip_on_exit_code: an attempt exiting with one of them ends its task SKIPPED, from
running (Airflow's BashOperator, default [99] there, [] for raftflow's own tasks)."""

from __future__ import annotations

import pytest

from core_support import T0, World, dag_dict, nodes, task
from raftflow.core.spec import DagSpec, SpecError
from raftflow.core.states import RunState, TaskState as S


def world(**bash: object) -> World:
    w = World()
    w.submit(dag_dict(tasks=[task("a", retries=2, **bash), task("b", upstream=["a"]),
                             task("c", upstream=["a"], trigger_rule="none_failed")]))
    w.trigger("r1")
    w.tick(T0 + 1, nodes("n1", slots=8))
    return w


def test_an_exit_code_in_skip_on_exit_code_ends_the_task_skipped_without_a_retry() -> None:
    w = world(skip_on_exit_code=[99, 100])
    w.run_task("r1", "a", 99, at=T0 + 2)
    ti = w.ti("r1", "a")
    assert ti.state is S.SKIPPED and ti.exit_code == 99 and ti.tries_failed == 0
    assert ti.story[-1].before is S.RUNNING and "skip_on_exit_code" in ti.story[-1].reason
    for now in (T0 + 3, T0 + 4, T0 + 5):
        w.tick(now, nodes("n1", slots=8))
        for tid, t in w.run("r1").tasks.items():
            if t.state is S.ASSIGNED:
                w.run_task("r1", tid, 0, at=now)
    assert w.task_states("r1") == {"a": S.SKIPPED, "b": S.SKIPPED, "c": S.SUCCESS}
    assert w.run("r1").state is RunState.SUCCESS, "leaves skipped or succeeded: the run succeeds"


def test_other_exit_codes_fail_as_before_and_the_default_skips_nothing() -> None:
    w = world(skip_on_exit_code=[99])
    w.run_task("r1", "a", 98, at=T0 + 2)
    assert w.ti("r1", "a").state is S.UP_FOR_RETRY
    plain = world()
    plain.run_task("r1", "a", 99, at=T0 + 2)
    assert plain.ti("r1", "a").state is S.UP_FOR_RETRY, "raftflow's own bash tasks skip on no exit code"


def test_skip_on_exit_code_is_validated_and_kept_out_of_the_spec_at_its_default() -> None:
    spec = DagSpec.from_dict(dag_dict(tasks=[task("a", skip_on_exit_code=99), task("b")]))
    assert spec.task("a").arg("skip_on_exit_code") == [99], "one int is a list of one, as in Airflow"
    assert spec.task("b").args == {} and spec.task("b").arg("skip_on_exit_code") == []
    assert "skip_on_exit_code" not in spec.task("b").to_dict()
    assert DagSpec.from_dict(spec.to_dict()) == spec
    for bad in ([0], [256], ["99"], [True], "99"):
        with pytest.raises(SpecError, match="skip_on_exit_code must be a list of exit codes from 1 to 255"):
            DagSpec.from_dict(dag_dict(tasks=[task("a", skip_on_exit_code=bad)]))
    with pytest.raises(SpecError, match="skip_on_exit_code belongs to bash tasks, not ssh"):
        DagSpec.from_dict(dag_dict(tasks=[task("a", kind="ssh", ssh_conn_id="c", skip_on_exit_code=[99])]))


def test_bash_cwd_and_append_env_and_ssh_cmd_timeout_are_validated() -> None:
    spec = DagSpec.from_dict(dag_dict(tasks=[task("a", cwd="/tmp", append_env=False),
                                             task("s", kind="ssh", ssh_conn_id="c", cmd_timeout=5)]))
    assert (spec.task("a").arg("cwd"), spec.task("a").arg("append_env")) == ("/tmp", False)
    assert spec.task("s").arg("cmd_timeout") == 5.0
    for bad, message in (({"append_env": "no"}, "append_env must be true or false"),
                         ({"cwd": 3}, "cwd must be a path"),
                         ({"kind": "ssh", "ssh_conn_id": "c", "cmd_timeout": -1},
                          "cmd_timeout must be a positive number of seconds or null")):
        with pytest.raises(SpecError, match=message):
            DagSpec.from_dict(dag_dict(tasks=[task("a", **bad)]))
