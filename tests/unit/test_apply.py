"""State.apply: versioning, runs, the life of a task attempt, fencing, garbage, determinism."""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import pytest

from core_support import T0, World, dag_dict, diamond, fingerprint, iso, task
from raftflow.core import commands as c
from raftflow.core.effects import DropRunLogs, ReleasedAttempts, StopAttempt
from raftflow.core.model import LEADER_HISTORY_LIMIT, LOG_TAIL_LIMIT
from raftflow.core.planner import NodeInfo, plan
from raftflow.core.result import Code
from raftflow.core.state import State
from raftflow.core.states import RunState, TaskState
from raftflow.core.transitions import TASK_TRANSITIONS

S = TaskState


def running_world(spec: dict[str, Any] | None = None, run_id: str = "r1") -> World:
    """A world with DAG `d` submitted and run `run_id` created and started."""
    w = World()
    w.submit(spec or dag_dict(tasks=[task("a"), task("b", upstream=["a"])]))
    w.trigger(run_id)
    w.apply(c.StartRun(run_id, T0))
    return w


def assert_rejected(w: World, cmd: Any, code: Code | None = None, *fragments: str) -> None:
    """The command is rejected (with `code` if given), names what it must, and changes nothing."""
    before = fingerprint(w.state)
    result = w.state.apply(cmd)
    assert not result.ok, result
    if code is not None:
        assert result.code is code, result
    for fragment in fragments:
        assert fragment in result.reason, (fragment, result.reason)
    assert fingerprint(w.state) == before
    w.state.validate()


# -------------------------------------------------------------- submit
def test_first_submit_creates_version_1(world):
    result = world.submit(dag_dict(), source="v1 source")
    assert result.value == {"dag_id": "d", "version": 1, "changed": True}
    record = world.state.dags["d"]
    assert [v.version for v in record.versions] == [1]
    assert record.latest.source == "v1 source" and record.latest.submitted_at == T0
    assert record.paused is False


def test_identical_resubmit_creates_no_version(world):
    world.submit(dag_dict(), source="same")
    before = fingerprint(world.state)
    result = world.submit(dag_dict(), source="same", at=T0 + 60)
    assert result.value == {"dag_id": "d", "version": 1, "changed": False}
    assert len(world.state.dags["d"].versions) == 1
    assert fingerprint(world.state) == before


def test_spec_that_normalises_to_the_same_is_not_a_new_version(world):
    world.submit(dag_dict(start_date="2024-01-01", catchup=True), source="s")
    result = world.submit(dag_dict(start_date="2024-01-01T01:00:00+01:00", catchup="all"), source="s")
    assert result.value["changed"] is False


def test_changed_source_or_spec_creates_a_new_version(world):
    world.submit(dag_dict(), source="one")
    assert world.submit(dag_dict(), source="two").value == {"dag_id": "d", "version": 2, "changed": True}
    changed = dag_dict(tasks=[task("a", retries=3)])
    assert world.submit(changed, source="two").value == {"dag_id": "d", "version": 3, "changed": True}
    assert world.state.dags["d"].latest.spec.task("a").retries == 3


def test_a_run_keeps_the_version_it_started_with(world):
    world.submit(dag_dict(tasks=[task("a")]))
    world.trigger("old")
    world.submit(dag_dict(tasks=[task("a"), task("b", upstream=["a"])]), source="v2")
    world.trigger("new")
    assert world.run("old").dag_version == 1 and set(world.run("old").tasks) == {"a"}
    assert world.run("new").dag_version == 2 and set(world.run("new").tasks) == {"a", "b"}
    assert [t.task_id for t in world.state.dag_spec(world.run("old")).tasks] == ["a"]


def test_invalid_spec_is_rejected_with_the_spec_error(world):
    assert_rejected(world, c.SubmitDag(dag_dict(tasks=[task("a", upstream=["zz"])]), "", "f", T0),
                    Code.INVALID, "unknown task 'zz'")
    assert_rejected(world, c.SubmitDag("not a dict", "", "f", T0), Code.INVALID, "JSON object")
    assert world.state.dags == {}


def test_paused_upon_creation(world):
    world.submit(dag_dict(is_paused_upon_creation=True))
    assert world.state.dags["d"].paused is True
    # A later version does not re-pause an unpaused DAG.
    world.set_paused("d", False)
    world.submit(dag_dict(is_paused_upon_creation=True, description="v2"))
    assert world.state.dags["d"].paused is False


def test_pause_and_unpause(world):
    world.submit(dag_dict())
    world.set_paused("d", True, at=T0 + 1)
    assert world.state.dags["d"].paused is True
    world.set_paused("d", True, at=T0 + 2)  # idempotent
    world.set_paused("d", False, at=T0 + 3)
    record = world.state.dags["d"]
    assert record.paused is False and record.schedule_from == T0 + 3


def test_pause_unknown_dag_is_not_found(world):
    assert_rejected(world, c.SetPaused("ghost", True, T0), Code.NOT_FOUND, "'ghost'")


# ------------------------------------------------------------------ runs
def test_create_run(world):
    world.submit(diamond("d"))
    result = world.trigger("m1", conf={"k": [1, 2]}, logical_date="2024-01-10T13:00:00+01:00")
    assert result.value == {"run_id": "m1"}
    run = world.run("m1")
    assert run.state is RunState.QUEUED and run.trigger == "manual" and run.conf == {"k": [1, 2]}
    assert run.logical_date == "2024-01-10T12:00:00+00:00"  # normalised to UTC
    assert run.dag_version == 1 and run.created_at == T0
    assert world.task_states("m1") == {"a": S.PENDING, "b": S.PENDING, "c": S.PENDING}
    assert list(world.state.active) == ["m1"]


def test_duplicate_run_id_is_a_conflict_and_changes_nothing(world):
    world.submit(dag_dict())
    world.trigger("m1")
    assert_rejected(world, c.CreateRun("m1", "d", iso(T0 + 5), iso(T0), iso(T0), "manual", {"x": 1}, T0 + 5),
                    Code.CONFLICT, "'m1' already exists")
    assert world.run("m1").conf == {}


def test_create_run_for_unknown_dag_is_not_found(world):
    assert_rejected(world, c.CreateRun("m1", "ghost", iso(T0), iso(T0), iso(T0), "manual", {}, T0),
                    Code.NOT_FOUND, "'ghost'")


@pytest.mark.parametrize("field, value, fragment", [
    ("conf", None, "conf must be a JSON object"),
    ("conf", [1, 2], "conf must be a JSON object"),
    ("conf", "x=1", "conf must be a JSON object"),
    ("trigger", "backfill!", "unknown trigger"),
    ("logical_date", "not a date", "logical_date 'not a date'"),
    ("data_interval_end", "2024-13-01", "data_interval_end"),
])
def test_create_run_with_invalid_field_is_invalid(world, field, value, fragment):
    world.submit(dag_dict())
    good = c.CreateRun("m1", "d", iso(T0), iso(T0), iso(T0), "manual", {}, T0)
    assert_rejected(world, dataclasses.replace(good, **{field: value}), Code.INVALID, fragment)
    assert world.state.run_index == {}


def test_start_run_twice_is_a_conflict(world):
    world.submit(dag_dict())
    world.trigger("m1")
    world.apply(c.StartRun("m1", T0 + 1))
    assert world.run("m1").state is RunState.RUNNING and world.run("m1").started_at == T0 + 1
    assert_rejected(world, c.StartRun("m1", T0 + 2), Code.CONFLICT, "m1: illegal transition running -> running")
    assert_rejected(world, c.StartRun("nope", T0), Code.NOT_FOUND)


# ------------------------------------------------------- a task attempt
def test_full_life_of_a_task_attempt():
    w = running_world()
    assert_rejected(w, c.AssignTask("r1", "a", "n1", 1, T0), Code.CONFLICT, "pending -> assigned")
    w.apply(c.QueueTask("r1", "a", T0 + 1))
    assert w.ti("r1", "a").state is S.QUEUED and w.ti("r1", "a").queued_at == T0 + 1

    result = w.apply(c.AssignTask("r1", "a", "n1", 1, T0 + 2))
    assert result.value == {"run_id": "r1", "task_id": "a", "attempt": 1, "node": "n1"}
    ti = w.ti("r1", "a")
    assert (ti.state, ti.attempt, ti.node) == (S.ASSIGNED, 1, "n1")
    assert w.state.node_load == {"n1": 1}

    w.apply(c.TaskStarted("r1", "a", 1, "n1", T0 + 3))
    assert w.ti("r1", "a").state is S.RUNNING and w.ti("r1", "a").started_at == T0 + 3
    assert w.state.node_load == {"n1": 1}

    w.apply(c.TaskFinished("r1", "a", 1, "n1", 0, T0 + 2.5, T0 + 9, "hello\n", "", T0 + 10))
    ti = w.ti("r1", "a")
    assert (ti.state, ti.exit_code, ti.log_tail, ti.ended_at) == (S.SUCCESS, 0, "hello\n", T0 + 9)
    assert ti.started_at == T0 + 3           # the start report wins over the result's copy
    assert ti.tries_failed == 0
    assert w.state.node_load == {}
    assert [f"{e.before.value}->{e.after.value}" for e in ti.story] == [
        "pending->queued", "queued->assigned", "assigned->running", "running->success"]


def test_duplicate_start_report_is_harmless():
    w = running_world()
    w.queue_and_assign("r1", "a")
    w.start("r1", "a", at=T0 + 1)
    before = fingerprint(w.state)
    w.apply(c.TaskStarted("r1", "a", 1, "n1", T0 + 5))
    assert fingerprint(w.state) == before
    assert w.ti("r1", "a").started_at == T0 + 1


@pytest.mark.parametrize("attempt", [0, 2, 7, -1, "x", None])
def test_stale_or_bogus_assign_attempt_is_a_conflict(attempt):
    w = running_world()
    w.apply(c.QueueTask("r1", "a", T0))
    assert_rejected(w, c.AssignTask("r1", "a", "n1", attempt, T0), Code.CONFLICT, "stale")
    assert w.ti("r1", "a").state is S.QUEUED and w.state.node_load == {}


def test_second_assignment_of_the_same_attempt_is_a_conflict():
    w = running_world()
    w.queue_and_assign("r1", "a", "n1")
    assert_rejected(w, c.AssignTask("r1", "a", "n2", 1, T0), Code.CONFLICT, "stale")
    assert_rejected(w, c.AssignTask("r1", "a", "n2", 2, T0), Code.CONFLICT, "assigned -> assigned")
    assert w.ti("r1", "a").node == "n1" and w.state.node_load == {"n1": 1}


@pytest.mark.parametrize("attempt, node", [(2, "n1"), (0, "n1"), (1, "n2"), ("1", "n1"), ("x", "n1"), (None, None)])
def test_result_for_a_non_current_attempt_or_node_changes_nothing(attempt, node):
    w = running_world()
    w.queue_and_assign("r1", "a", "n1")
    w.start("r1", "a")
    assert_rejected(w, c.TaskFinished("r1", "a", attempt, node, 0, T0, T0, "", "", T0), Code.CONFLICT,
                    "is not current", "current: attempt 1 on n1")
    assert_rejected(w, c.TaskStarted("r1", "a", attempt, node, T0), Code.CONFLICT, "is not current")
    assert w.ti("r1", "a").state is S.RUNNING


def test_duplicate_result_is_rejected():
    w = running_world()
    w.queue_and_assign("r1", "a")
    w.finish("r1", "a", 0, at=T0 + 5)
    assert_rejected(w, c.TaskFinished("r1", "a", 1, "n1", 1, T0, T0 + 6, "", "", T0 + 6), Code.CONFLICT,
                    "not current", "success")
    assert w.ti("r1", "a").exit_code == 0


def test_commands_for_unknown_runs_or_tasks_are_not_found():
    w = running_world()
    for cmd in (c.QueueTask("ghost", "a", T0), c.QueueTask("r1", "ghost", T0),
                c.AssignTask("r1", "ghost", "n1", 1, T0), c.TaskFinished("ghost", "a", 1, "n1", 0, T0, T0, "", "", T0),
                c.FailUpstream("r1", "ghost", "x", T0), c.FinishRun("ghost", "success", T0)):
        assert_rejected(w, cmd, Code.NOT_FOUND, "ghost")


def test_queue_task_needs_a_running_run(world):
    world.submit(dag_dict())
    world.trigger("m1")
    assert_rejected(world, c.QueueTask("m1", "a", T0), Code.CONFLICT, "is queued, not running")


def test_log_tail_is_truncated_to_its_end():
    w = running_world()
    w.queue_and_assign("r1", "a")
    w.finish("r1", "a", 0, log_tail="x" * LOG_TAIL_LIMIT + "THE END")
    tail = w.ti("r1", "a").log_tail
    assert len(tail) == LOG_TAIL_LIMIT and tail.endswith("THE END")


# ---------------------------------------------------------------- retries
def test_retry_then_failure():
    w = running_world(dag_dict(tasks=[task("a", retries=1, retry_delay=30)]))
    w.queue_and_assign("r1", "a", "n1", at=T0)
    w.start("r1", "a", T0 + 1)
    w.finish("r1", "a", exit_code=2, at=T0 + 10)
    ti = w.ti("r1", "a")
    assert (ti.state, ti.retry_at, ti.tries_failed, ti.exit_code) == (S.UP_FOR_RETRY, T0 + 40, 1, 2)
    assert w.state.node_load == {}

    # The failed attempt's late reports are fenced off.
    assert_rejected(w, c.TaskFinished("r1", "a", 1, "n1", 0, T0, T0, "", "", T0 + 11), Code.CONFLICT)
    assert_rejected(w, c.AssignTask("r1", "a", "n2", 2, T0 + 11), Code.CONFLICT, "up_for_retry -> assigned")

    w.apply(c.QueueTask("r1", "a", T0 + 40))
    ti = w.ti("r1", "a")
    assert (ti.state, ti.retry_at, ti.node) == (S.QUEUED, None, None)
    assert_rejected(w, c.AssignTask("r1", "a", "n2", 1, T0 + 41), Code.CONFLICT, "stale")
    w.apply(c.AssignTask("r1", "a", "n2", 2, T0 + 41))
    ti = w.ti("r1", "a")
    assert (ti.state, ti.attempt, ti.node, ti.exit_code, ti.ended_at) == (S.ASSIGNED, 2, "n2", None, None)
    assert w.state.node_load == {"n2": 1}

    w.finish("r1", "a", exit_code=3, at=T0 + 50)
    ti = w.ti("r1", "a")
    assert (ti.state, ti.exit_code, ti.tries_failed, ti.attempt) == (S.FAILED, 3, 2, 2)
    assert w.state.node_load == {}


def test_no_retries_means_the_first_failure_is_final():
    w = running_world(dag_dict(tasks=[task("a", retry_delay=30)]))
    w.queue_and_assign("r1", "a")
    w.finish("r1", "a", exit_code=1, at=T0 + 5)
    assert w.ti("r1", "a").state is S.FAILED and w.ti("r1", "a").retry_at is None


def test_success_after_a_retry():
    w = running_world(dag_dict(tasks=[task("a", retries=2)]))
    w.queue_and_assign("r1", "a", "n1")
    w.finish("r1", "a", exit_code=1, at=T0 + 1)
    assert w.ti("r1", "a").retry_at == T0 + 1  # retry_delay 0: due at once
    w.queue_and_assign("r1", "a", "n1", at=T0 + 2)
    w.finish("r1", "a", exit_code=0, at=T0 + 3)
    assert w.ti("r1", "a").state is S.SUCCESS and w.ti("r1", "a").attempt == 2


# ------------------------------------------------------------- finishing
def test_finish_run_is_rejected_while_tasks_are_unfinished():
    w = running_world()
    w.queue_and_assign("r1", "a")
    assert_rejected(w, c.FinishRun("r1", "success", T0), Code.CONFLICT, "unfinished tasks: a, b")
    w.finish("r1", "a", 0)
    assert_rejected(w, c.FinishRun("r1", "failed", T0), Code.CONFLICT, "unfinished tasks: b")
    w.queue_and_assign("r1", "b")
    w.finish("r1", "b", 0, at=T0 + 9)
    w.apply(c.FinishRun("r1", "success", T0 + 10))
    run = w.run("r1")
    assert run.state is RunState.SUCCESS and run.ended_at == T0 + 10
    assert "r1" not in w.state.active
    assert_rejected(w, c.FinishRun("r1", "failed", T0 + 11), Code.CONFLICT, "has already finished")


def test_upstream_failed_then_finish_failed():
    w = running_world()
    w.queue_and_assign("r1", "a")
    w.finish("r1", "a", exit_code=1)
    w.apply(c.FailUpstream("r1", "b", "an upstream task failed", T0 + 1))
    ti = w.ti("r1", "b")
    assert (ti.state, ti.reason, ti.ended_at) == (S.UPSTREAM_FAILED, "an upstream task failed", T0 + 1)
    assert_rejected(w, c.FailUpstream("r1", "b", "again", T0 + 2), Code.CONFLICT, "upstream_failed -> upstream_failed")
    w.apply(c.FinishRun("r1", "failed", T0 + 3))
    assert w.run("r1").state is RunState.FAILED


def test_finish_queued_run_is_a_conflict(world):
    world.submit(dag_dict())
    world.trigger("m1")
    assert_rejected(world, c.FinishRun("m1", "success", T0), Code.CONFLICT, "queued -> success")


def test_finish_run_with_unknown_state_is_rejected():
    w = running_world()
    assert_rejected(w, c.FinishRun("r1", "cancelled", T0), None, "cancelled")
    assert_rejected(w, c.FinishRun("r1", "running", T0), Code.INVALID, "not 'running'")


# ------------------------------------------------------------- node load
def test_node_load_counts_active_attempts_per_node():
    spec = dag_dict(tasks=[task(t) for t in "abcd"])
    w = running_world(spec)
    w.queue_and_assign("r1", "a", "n1")
    w.queue_and_assign("r1", "b", "n1")
    w.queue_and_assign("r1", "c", "n2")
    assert w.state.node_load == {"n1": 2, "n2": 1}
    w.start("r1", "a")
    assert w.state.node_load == {"n1": 2, "n2": 1}  # RUNNING still holds the slot
    w.finish("r1", "a", 0)
    assert w.state.node_load == {"n1": 1, "n2": 1}
    w.finish("r1", "c", 1)
    assert w.state.node_load == {"n1": 1}  # a node with no load disappears from the map
    w.queue_and_assign("r1", "d", "n2")
    w.finish("r1", "b", 0)
    w.finish("r1", "d", 0)
    assert w.state.node_load == {}


# --------------------------------------------------------------- barrier
def test_barrier_records_leader_history_capped(world):
    for term in range(LEADER_HISTORY_LIMIT + 5):
        world.apply(c.Barrier(f"n{term % 3}", term, T0 + term))
    history = world.state.leader_history
    assert len(history) == LEADER_HISTORY_LIMIT
    newest = LEADER_HISTORY_LIMIT + 4
    assert history[-1] == (T0 + newest, f"n{newest % 3}", newest)
    assert history[0][2] == 5


def test_applied_counts_every_command(world):
    world.submit(dag_dict())
    world.state.apply(c.SetPaused("ghost", True, T0))
    world.apply(c.Batch((c.Barrier("n1", 1, T0), c.Barrier("n1", 2, T0))))
    assert world.state.applied == 3


# ------------------------------------------------------ garbage in, no raise
def wire(cmd: c.Command) -> c.Command:
    """What another replica sees: the command encoded, then decoded."""
    return c.decode(cmd.TYPE, cmd.VERSION, c.encode_payload(cmd))


@pytest.mark.parametrize("type_tag, version, payload, fragment", [
    ("launch_missiles", 1, b"{}", "unknown command type 'launch_missiles'"),
    ("create_run", 99, b"{}", "version 99 is newer"),
    ("create_run", 1, b"{not json", "not JSON"),
    ("create_run", 1, b"\xff\xfe", "not JSON"),
    ("create_run", 1, b"[1, 2]", "not a JSON object"),
    ("create_run", 1, b'{"run_id": "m1"}', "malformed create_run payload"),
    ("start_run", 1, b'{"run_id": "m1", "at": 1, "extra": true}', "malformed start_run payload"),
    ("batch", 1, b'{"commands": 5}', "malformed batch payload"),
    ("batch", 1, b'{"commands": [{"type": "start_run"}]}', "malformed batch payload"),
    ("batch", 1, b'{}', "malformed batch payload"),
    ("undecodable", 1, b'{"type_tag": "x", "version": 1, "error": "e"}', "unknown command type 'undecodable'"),
])
def test_undecodable_payloads_are_rejected_as_invalid(world, type_tag, version, payload, fragment):
    world.submit(dag_dict())
    cmd = c.decode(type_tag, version, payload)
    assert isinstance(cmd, c.Undecodable)
    assert fragment in cmd.error, cmd.error
    assert_rejected(world, cmd, Code.INVALID, fragment)


def test_decoded_create_run_with_null_conf_is_invalid(world):
    world.submit(dag_dict())
    payload = json.dumps({"run_id": "m1", "dag_id": "d", "logical_date": iso(T0), "data_interval_start": iso(T0),
                          "data_interval_end": iso(T0), "trigger": "manual", "conf": None, "at": T0}).encode()
    cmd = c.decode("create_run", 1, payload)
    assert isinstance(cmd, c.Undecodable) and "conf must be dict" in cmd.error
    assert_rejected(world, cmd, Code.INVALID, "conf")


@pytest.mark.parametrize("cmd", [
    None, "create_run", 42, {"type": "create_run"}, c.Command(),
], ids=["none", "str", "int", "dict", "base-command"])
def test_non_commands_are_rejected(world, cmd):
    world.submit(dag_dict())
    assert_rejected(world, cmd, Code.INVALID, "no handler")


@pytest.mark.parametrize("cmd", [
    c.CreateRun("m1", "d", 5, iso(T0), iso(T0), "manual", {}, T0),
    c.CreateRun("m1", "d", None, None, None, "manual", {}, T0),
    c.CreateRun(["m1"], "d", iso(T0), iso(T0), iso(T0), "manual", {}, T0),
    c.CreateRun("m1", ["d"], iso(T0), iso(T0), iso(T0), "manual", {}, T0),
    c.CreateRun("m1", "d", iso(T0), iso(T0), iso(T0), ["manual"], {}, T0),
    c.SetPaused(None, True, T0),
    c.SetPaused({}, True, T0),
    c.StartRun(["r1"], T0),
    c.QueueTask("r1", None, T0),
    c.FinishRun("r1", None, T0),
    c.FinishRun("r1", 7, T0),
    c.AssignTask("r1", "a", "n1", "x", T0),
    c.TaskFinished("r1", "a", "x", "n1", 0, T0, T0, "", "", T0),
    c.TaskStarted("r1", ["a"], 1, "n1", T0),
    c.SubmitDag(None, "", "", T0),
    c.SubmitDag({"dag_id": "d", "tasks": "abc"}, "", "", T0),
    c.Batch(None),
], ids=lambda cmd: type(cmd).__name__)
def test_commands_with_wrong_field_types_are_rejected_and_change_nothing(cmd):
    w = running_world()
    w.queue_and_assign("r1", "a", "n1")
    assert_rejected(w, cmd)


def test_batch_applies_each_command_alone():
    w = running_world()
    batch = c.Batch((
        c.QueueTask("r1", "a", T0),                      # ok
        c.QueueTask("r1", "a", T0),                      # conflict: already queued
        c.CreateRun("m2", "ghost", iso(T0), iso(T0), iso(T0), "manual", {}, T0),  # not found
        c.CreateRun("m2", "d", iso(T0), iso(T0), iso(T0), "manual", None, T0),    # invalid
        c.Undecodable("zap", 1, "unknown command type 'zap'"),                    # invalid
        c.AssignTask("r1", "a", "n1", 5, T0),            # stale
        c.AssignTask("r1", "a", "n1", 1, T0),            # ok
        c.Batch((c.Barrier("n1", 1, T0), c.StartRun("r1", T0))),  # nested batch: refused whole
    ))
    result = w.apply(batch)
    codes = [r.code for r in result.value]
    assert codes[:7] == [Code.OK, Code.CONFLICT, Code.NOT_FOUND, Code.INVALID, Code.INVALID, Code.CONFLICT, Code.OK]
    assert result.value[7].code is Code.INVALID and "may not contain a batch" in result.value[7].reason
    assert w.ti("r1", "a").state is S.ASSIGNED and w.state.node_load == {"n1": 1}
    assert "m2" not in w.state.run_index and len(w.state.leader_history) == 0

    # The same batch through the wire gives the same results and the same state.
    other = running_world()
    other_result = other.apply(wire(batch))
    assert [r.code for r in other_result.value] == codes
    assert other.state.digest() == w.state.digest()


def test_decoded_batch_with_an_unknown_member_still_applies_the_rest():
    w = running_world()
    payload = json.dumps({"commands": [
        {"type": "queue_task", "version": 1, "payload": {"run_id": "r1", "task_id": "a", "at": T0}},
        {"type": "from_the_future", "version": 1, "payload": {}},
        {"type": "assign_task", "version": 2, "payload": {}},
    ]}).encode()
    cmd = c.decode("batch", 1, payload)
    assert isinstance(cmd, c.Batch)
    result = w.apply(cmd)
    assert [r.code for r in result.value] == [Code.OK, Code.INVALID, Code.INVALID]
    assert w.ti("r1", "a").state is S.QUEUED


def test_rejected_command_leaves_digest_unchanged(world):
    world.submit(dag_dict())
    world.trigger("m1")
    before = world.state.digest()
    assert not world.state.apply(c.CreateRun("m1", "d", iso(T0), iso(T0), iso(T0), "manual", {}, T0)).ok
    assert world.state.digest() == before


# Type-confused commands (as a buggy or hostile proposer could send) are rejected
# without corrupting anything; these once left half-applied state behind.
def _assigned() -> World:
    w = running_world()
    w.queue_and_assign("r1", "a", "n1")
    w.start("r1", "a")
    return w


def _queued() -> World:
    w = running_world()
    w.apply(c.QueueTask("r1", "a", T0))
    return w


def _finished(**bad: Any) -> c.TaskFinished:
    return dataclasses.replace(c.TaskFinished("r1", "a", 1, "n1", 1, T0, T0, "", "", T0), **bad)


@pytest.mark.parametrize("make, cmd", [
    pytest.param(_assigned, _finished(exit_code="x"), id="finished-exit-code-str"),
    pytest.param(_assigned, _finished(exit_code=None), id="finished-exit-code-null"),
    pytest.param(_assigned, _finished(log_tail=None), id="finished-log-tail-null"),
    pytest.param(_assigned, _finished(at="x"), id="finished-at-str"),
    pytest.param(_queued, c.AssignTask("r1", "a", ["n1"], 1, T0), id="assign-node-list"),
    pytest.param(_queued, c.AssignTask("r1", "a", None, 1, T0), id="assign-node-null"),
    pytest.param(_queued, c.CreateRun(5, "d", iso(T0), iso(T0), iso(T0), "manual", {}, T0), id="run-id-int"),
    pytest.param(lambda: World(), c.SubmitDag(dag_dict(schedule="@daily"), "", "f", "x"), id="submit-at-str"),
    pytest.param(lambda: World(), c.SubmitDag(dag_dict(schedule="0 0 30 2 *"), "", "f", T0), id="submit-feb-30"),
])
def test_type_confused_command_is_rejected_without_corrupting_state(make, cmd):
    w = make()
    before = fingerprint(w.state)
    result = w.state.apply(cmd)
    assert not result.ok, result
    assert fingerprint(w.state) == before
    w.state.validate()
    w.state.digest()


def test_fail_upstream_needs_a_running_run():
    w = World()
    w.submit(dag_dict(tasks=[task("a"), task("b", upstream=["a"])]))
    w.trigger("m1")
    before = fingerprint(w.state)
    result = w.state.apply(c.FailUpstream("m1", "b", "stale", T0))
    assert result.code is Code.CONFLICT, result
    assert fingerprint(w.state) == before
    w.state.validate()


def test_deeply_nested_batch_payload_decodes_to_undecodable():
    depth = 400  # about 22 KB
    payload = '{"commands":[{"type":"batch","version":1,"payload":' * depth + '{"commands":[]}' + "}]}" * depth
    cmd = c.decode("batch", 1, payload.encode())
    assert isinstance(cmd, (c.Undecodable, c.Batch))


def test_a_batch_inside_a_batch_is_refused(world):
    cmd = c.Batch((c.Barrier("n1", 1, T0), c.Batch((c.Barrier("n1", 2, T0),))))
    decoded = wire(cmd)
    assert decoded.commands[0] == cmd.commands[0]
    assert isinstance(decoded.commands[1], c.Undecodable) and "may not contain a batch" in decoded.commands[1].error
    for form in (cmd, decoded):
        result = World().apply(form)
        assert [r.code for r in result.value] == [Code.OK, Code.INVALID]


# ------------------------------------------------------------ encode/decode
ALL_COMMANDS = [
    c.Barrier("n1", 3, T0),
    c.SubmitDag(diamond(), "src", "diamond.py", T0),
    c.SetPaused("d", True, T0),
    c.SkipTicks("d", T0 + 300.0, T0),
    c.CreateScheduledRuns(iso(T0), iso(T0 - 300), iso(T0), ("d", "e"), T0),
    c.Backfill("d", iso(T0 - 86400), iso(T0), T0),
    c.SetPool("warehouse", 4, T0),
    c.NoteWaiting("m1", "a", "waiting: pool full", T0),
    c.CompleteEmpty("m1", "a", T0),
    c.QueueDagCallback("m1", "success", T0),
    c.SkipTask("m1", "a", "an upstream task was skipped", T0),
    c.CancelRun("m1", "cancelled by alice", T0),
    c.ClearTasks("m1", ("a", "b"), True, "rerun after the fix", T0),
    c.MarkTask("m1", "a", "success", "done by hand", T0),
    c.DeleteDag("d", T0),
    c.CreateRun("m1", "d", iso(T0), iso(T0 - 60), iso(T0), "manual", {"a": [1, {"b": None}], "c": 1.5}, T0),
    c.StartRun("m1", T0),
    c.FinishRun("m1", "success", T0),
    c.QueueTask("m1", "a", T0),
    c.FailUpstream("m1", "a", "why", T0),
    c.AssignTask("m1", "a", "n1", 1, T0),
    c.TaskStarted("m1", "a", 1, "n1", T0 + 0.25),
    c.TaskFinished("m1", "a", 1, "n1", 137, T0, T0 + 1e-3, "tail\u00e9\n", "killed", T0 + 1),
    c.LoseAttempt("m1", "a", 1, "n1", "node n1 stopped heartbeating", T0 + 2),
    c.NodeStarted("n1", T0 + 3),
    c.JoinWorker("w1", "127.0.0.1:7001", "127.0.0.1:7002", "", T0 + 3),
    c.LeaveWorker("w1", "drained", T0 + 3),
    c.AddVoter("n4", "127.0.0.1:7004", "127.0.0.1:7104", "127.0.0.1:7204", T0 + 3),
    c.RemoveVoter("n4", "127.0.0.1:7004", "127.0.0.1:7104", "127.0.0.1:7204", T0 + 3),
    c.PruneRuns(("m1", "m2"), T0 + 4),
    c.CreateToken("ci", "operator", "ab" * 32, T0 + 86400, "admin", T0),
    c.RevokeToken("ci", T0 + 5),
    c.TokensUsed({"ci": T0 + 6, "viewer-1": T0 + 7.5}, T0 + 8),
    c.SetVariable("db_password", "s3cr\u00e9t", T0 + 9),
    c.DeleteVariable("db_password", T0 + 10),
    c.ImportVariables({"a": "1", "b.c": "{\"x\": [1]}"}, T0 + 11),
    c.Batch((c.QueueTask("m1", "a", T0), c.StartRun("m1", T0))),
]


@pytest.mark.parametrize("cmd", ALL_COMMANDS, ids=lambda cmd: cmd.TYPE)
def test_every_command_round_trips_through_the_wire(cmd):
    assert wire(cmd) == cmd
    assert c.encode_payload(wire(cmd)) == c.encode_payload(cmd)


def test_every_command_type_is_covered_by_the_round_trip_test():
    assert {cmd.TYPE for cmd in ALL_COMMANDS} == set(c.COMMAND_TYPES)


def test_encoding_is_canonical():
    one = c.CreateRun("m1", "d", "x", "x", "x", "manual", {"b": 1, "a": 2}, T0)
    two = c.CreateRun("m1", "d", "x", "x", "x", "manual", {"a": 2, "b": 1}, T0)
    assert c.encode_payload(one) == c.encode_payload(two)
    assert b" " not in c.encode_payload(one)


# ------------------------------------------------------------- determinism
DETERMINISM_DAGS = [
    dag_dict("sched", [task("x", retries=1, retry_delay=45), task("y", upstream=["x"])],
             schedule="*/5 * * * *", start_date=iso(T0 - 40 * 60), catchup="all", max_active_runs=3),
    dag_dict("latest", [task("p", priority_weight=3), task("q", skip_on_exit_code=[2]), task("r", upstream=["p", "q"])],
             schedule="*/10 * * * *", start_date=iso(T0 - 3600), catchup="latest"),
    dag_dict("man", [task("a"), task("b", retries=2, retry_delay=30, skip_on_exit_code=[2]),
                     task("c", upstream=["a", "b"]),
                     task("d", upstream=["c"], retries=1)], max_active_runs=2),
    dag_dict("hollow", [task("a"), {"task_id": "gate", "kind": "empty", "upstream": ["a"]},
                        task("z", upstream=["gate"])]),
    dag_dict("flaky", [task("f", retries=3, retry_delay=60, retry_exponential_backoff=True, skip_on_exit_code=[137]),
                       task("g", upstream=["f"], trigger_rule="all_done")]),
]


class Fuzzer:
    """Seeded generator of plausible and implausible commands, driven by one replica's state.

    Steps are either a Command or ("wire", type_tag, version, bytes) for raw garbage.
    FailUpstream is generated only for RUNNING runs and type confusion only of the kinds
    apply already rejects safely: the other cases are the xfail tests above.
    """

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = T0
        self.manual = 0
        self.submits = 0

    def _active_tis(self, state: State) -> list[tuple[str, str, Any]]:
        return [(run.run_id, tid, ti) for run in state.active.values()
                for tid, ti in run.tasks.items() if ti.state in (S.ASSIGNED, S.RUNNING)]

    def _any_ti(self, state: State) -> tuple[str, str, Any] | None:
        pairs = [(run.run_id, tid, ti) for run in state.iter_runs() for tid, ti in run.tasks.items()]
        return self.rng.choice(pairs) if pairs else None

    def _nodes(self) -> list[NodeInfo]:
        rng = self.rng
        return [NodeInfo(n, rng.random() < 0.8, rng.randint(0, 3), lease_expired=rng.random() < 0.1,
                         leader=n == "n1") for n in ("n1", "n2", "n3") if rng.random() < 0.9]

    def step(self, state: State) -> Any:
        rng = self.rng
        self.now += rng.choice([0, 0.5, 1, 7, 30, 61, 300])
        roll = rng.random()
        retrying = sorted(r.run_id for r in state.active.values()
                          if any(t.state is S.UP_FOR_RETRY for t in r.tasks.values()))
        if retrying and rng.random() < 0.05:   # a user cancels a run while a task waits to retry
            return c.CancelRun(rng.choice(retrying), "cancelled during a retry delay", self.now)
        if rng.random() < 0.12 and (picked := self._any_ti(state)) is not None:   # a user's hand
            run_id, tid, _ti = picked
            waiting = [(r.run_id, t) for r in state.active.values() for t, ti in r.tasks.items()
                       if ti.state is S.UP_FOR_RETRY]
            if waiting and rng.random() < 0.3:   # often on a task waiting to retry: rare otherwise
                run_id, tid = rng.choice(sorted(waiting))
            if rng.random() < 0.5:
                return c.ClearTasks(run_id, (tid,), rng.random() < 0.5, "cleared by fuzz", self.now)
            return c.MarkTask(run_id, tid, rng.choice(["success", "failed"]), "", self.now)
        if roll < 0.30:
            return c.Batch(tuple(plan(state, self.now, self._nodes())))
        if roll < 0.55:
            active = self._active_tis(state)
            if active:
                run_id, tid, ti = rng.choice(active)
                attempt, node = ti.attempt, ti.node
                if rng.random() < 0.2:  # a stale or misdirected report
                    attempt, node = rng.choice([(attempt - 1, node), (attempt + 1, node), (attempt, "n9")])
                # A worker claims the start before anything else (sometimes it is refused).
                if ti.state is S.ASSIGNED and rng.random() < 0.8 or rng.random() < 0.1:
                    return c.TaskStarted(run_id, tid, attempt, node, self.now)
                if rng.random() < 0.1:  # the worker fenced its attempt (lease lost)
                    return c.LoseAttempt(run_id, tid, attempt, node, "lease lost", self.now)
                if rng.random() < 0.05:  # its node restarted
                    return c.NodeStarted(node, self.now)
                if rng.random() < 0.04:  # a user cancels the run (or its dagrun_timeout passed)
                    return c.CancelRun(run_id, "cancelled by fuzz", self.now)
                if rng.random() < 0.05:  # retention: usually finished runs; an active one is refused whole
                    done = sorted(r.run_id for r in state.iter_runs() if r.state.terminal)
                    pool = done if done and rng.random() < 0.8 else sorted(state.run_index)
                    return c.PruneRuns(tuple(rng.sample(pool, min(2, len(pool)))), self.now)
                code = rng.choice([0, 0, 0, 0, 0, 0, 1, 2, 137])   # most attempts succeed
                return c.TaskFinished(run_id, tid, attempt, node, code, self.now - 1, self.now,
                                      f"log {rng.random()}", "", self.now)
            if active_runs := sorted(state.active):
                return c.CancelRun(rng.choice(active_runs), "cancelled while nothing ran", self.now)
            return c.Barrier("n1", 1, self.now)
        if roll < 0.63:
            self.manual += 1
            kind = rng.random()
            run_id = f"manual_{self.manual}" if kind < 0.8 else rng.choice(list(state.run_index) or ["manual_0"])
            dag_id = rng.choice(["man", "man", "hollow", "flaky", "flaky", "sched", "latest", "ghost"])
            conf = rng.choice([{}, {"k": self.manual}, {"nested": {"l": [1, 2.5, None]}}])
            return c.CreateRun(run_id, dag_id, iso(self.now), iso(self.now), iso(self.now), "manual", conf, self.now)
        if roll < 0.67:
            self.submits += 1
            spec = json.loads(json.dumps(rng.choice(DETERMINISM_DAGS)))
            if rng.random() < 0.5:
                spec["description"] = f"v{self.submits % 3}"
            if rng.random() < 0.15:
                spec["tasks"][0]["upstream"] = ["nope"]  # invalid
            return c.SubmitDag(spec, f"source {self.submits % 2}", f"{spec['dag_id']}.py", self.now)
        if roll < 0.71:
            return c.SetPaused(rng.choice(["man", "sched", "latest", "ghost"]), rng.random() < 0.4, self.now)
        if roll < 0.73:
            return c.Barrier(rng.choice(["n1", "n2", "n3"]), rng.randint(1, 9), self.now)
        if roll < 0.80:  # plausible-looking but mostly illegal moves
            picked = self._any_ti(state)
            if picked is None:
                return c.Barrier("n1", 1, self.now)
            run_id, tid, ti = picked
            choice = rng.randrange(9)
            if choice == 7:   # a user re-runs tasks, with or without their downstream tasks
                return c.ClearTasks(run_id, (tid,), rng.random() < 0.5, "cleared by fuzz", self.now)
            if choice == 8:   # a user marks a task by hand
                return c.MarkTask(run_id, tid, rng.choice(["success", "failed", "running"]), "", self.now)
            if choice == 5:
                return c.CancelRun(run_id, "late cancel", self.now)
            if choice == 6:
                return c.CompleteEmpty(run_id, tid, self.now)
            if choice == 0:
                attempt = ti.attempt + rng.choice([0, 1, 1, 2])
                return c.AssignTask(run_id, tid, rng.choice(["n1", "n2"]), attempt, self.now)
            if choice == 1:
                return c.QueueTask(run_id, tid, self.now)
            if choice == 2:
                return c.FinishRun(run_id, rng.choice(["success", "failed"]), self.now)
            if choice == 3:
                return c.StartRun(run_id, self.now)
            if state.run(run_id).state is RunState.RUNNING:
                return c.FailUpstream(run_id, tid, "fuzz", self.now)
            return c.QueueTask(run_id, tid, self.now)
        if roll < 0.88:  # type confusion that apply must reject
            picked = self._any_ti(state)
            run_id, tid = (picked[0], picked[1]) if picked else ("r", "t")
            return rng.choice([
                c.CreateRun(f"bad_{self.manual}", "man", iso(self.now), iso(self.now), iso(self.now), "manual",
                            None, self.now),
                c.CreateRun(f"bad_{self.manual}", "man", "someday", iso(self.now), iso(self.now), "manual", {},
                            self.now),
                c.CreateRun(f"bad_{self.manual}", "man", iso(self.now), iso(self.now), iso(self.now), "cron", {},
                            self.now),
                c.AssignTask(run_id, tid, "n1", "x", self.now),
                c.TaskFinished(run_id, tid, "x", "n1", 0, self.now, self.now, "", "", self.now),
                c.TaskStarted(run_id, tid, None, None, self.now),
                c.FinishRun(run_id, "bogus", self.now),
                c.SubmitDag(["not", "a", "spec"], "", "", self.now),
                c.Batch((c.QueueTask(run_id, tid, self.now), c.CreateRun("x", "ghost", "", "", "", "", {}, 0))),
            ])
        # raw garbage off the wire
        return rng.choice([
            ("wire", "launch_missiles", 1, b"{}"),
            ("wire", "create_run", 7, b"{}"),
            ("wire", "create_run", 1, b"{truncated"),
            ("wire", "assign_task", 1, b'{"run_id": "x"}'),
            ("wire", "batch", 1, b'{"commands": [{"type": "zzz", "version": 1, "payload": {}}]}'),
            ("wire", "task_finished", 1, b"null"),
        ])


def codes(result: Any) -> Any:
    """A Result's code, or for a Batch the nested list of its members' codes."""
    if isinstance(result.value, list):
        return [codes(r) for r in result.value]
    return result.code


def flat_codes(result: Any) -> list[Code]:
    if isinstance(result.value, list):
        return [code for r in result.value for code in flat_codes(r)]
    return [result.code]


SEEDS = range(10)
STEPS = 300


def wire_pair(step: Any) -> tuple[c.Command, c.Command]:
    """(what the proposer's replica applies, what a replica reading the wire applies)."""
    if isinstance(step, tuple):
        _, type_tag, version, payload = step
        return c.decode(type_tag, version, payload), c.decode(type_tag, version, payload)
    remote = c.decode(step.TYPE, step.VERSION, c.encode_payload(step))
    if remote == step:
        return step, remote   # the codec is lossless for well-typed commands
    # An ill-typed command is refused at decode, as every replica (the proposer's too)
    # applies the decoded envelope in production.
    members = remote.commands if isinstance(remote, c.Batch) else (remote,)
    assert any(isinstance(m, c.Undecodable) for m in members), (step, remote)
    return remote, remote


@pytest.mark.parametrize("seed", SEEDS)
def test_replicas_applying_the_same_log_stay_identical(seed):
    """Invariants 1 and 2 under a seeded random log: two replicas, one of which sees every
    command only after encode_payload/decode, have equal digests after every step; the
    indexes stay valid; a rejected command changes nothing."""
    fuzz = Fuzzer(seed)
    local, remote = State(), State()
    seen = {"ok": 0, "rejected": 0}
    for i in range(STEPS):
        for_local, for_remote = wire_pair(fuzz.step(local))
        before = fingerprint(local)
        result_local = local.apply(for_local)
        result_remote = remote.apply(for_remote)

        assert codes(result_local) == codes(result_remote), (i, for_local, result_local, result_remote)
        assert local.digest() == remote.digest(), (i, for_local)
        local.validate()
        remote.validate()
        if not isinstance(for_local, c.Batch) and not result_local.ok:
            assert fingerprint(local) == before, (i, for_local, result_local)
        for code in flat_codes(result_local):
            seen["ok" if code is Code.OK else "rejected"] += 1
    assert seen["ok"] > 100 and seen["rejected"] > 30, seen  # the log was not degenerate


def test_the_random_logs_exercise_the_interesting_paths():
    """Guards the determinism test above: across its seeds, the generated logs reach every
    task transition, finish runs both ways, create scheduled runs and prune some (runs
    are observed after every step, since pruned ones leave the state)."""
    story: set[str] = set()
    run_states: set[RunState] = set()
    scheduled: set[str] = set()
    pruned = 0
    for seed in SEEDS:
        fuzz, state = Fuzzer(seed), State()
        for _ in range(STEPS):
            command = wire_pair(fuzz.step(state))[0]
            result = state.apply(command)
            if isinstance(command, c.PruneRuns) and result.ok:
                pruned += sum(len(e.run_ids) for e in result.effects_of(DropRunLogs))
            story |= {f"{e.before.value}->{e.after.value}" for r in state.iter_runs() for ti in r.tasks.values()
                      for e in ti.story}
            run_states |= {r.state for r in state.iter_runs()}
            scheduled |= {f"{seed}/{r.run_id}" for r in state.iter_runs() if r.trigger == "schedule"}
    by_hand = {(a, b) for a in S for b in (S.PENDING, S.SUCCESS, S.FAILED) if a is not b}
    automatic = TASK_TRANSITIONS - (by_hand - AUTOMATIC_AND_MANUAL)
    every_move = {f"{a.value}->{b.value}" for a, b in automatic}
    assert every_move <= story, every_move - story
    manual_seen = {f"{a.value}->{b.value}" for a, b in by_hand} & story
    assert len(manual_seen) >= 12, manual_seen   # each one: test_every_manual_move_applies
    assert set(RunState) <= run_states
    assert len(scheduled) >= 10
    assert pruned >= 3


# Moves the scheduler itself makes that are also among the by-hand ones.
AUTOMATIC_AND_MANUAL = {(S.RUNNING, S.SUCCESS), (S.RUNNING, S.FAILED), (S.ASSIGNED, S.FAILED),
                        (S.PENDING, S.SUCCESS)}


def _task_in(state_wanted: S) -> World:
    """A running run whose task `a` is in `state_wanted` (b waits on a)."""
    w = running_world(dag_dict(tasks=[task("a", retries=1, retry_delay=600), task("b", upstream=["a"])]))
    if state_wanted is S.PENDING:
        return w
    if state_wanted is S.SKIPPED:
        w.apply(c.CancelRun("r1", "gone", T0 + 1))
        return w
    w.apply(c.QueueTask("r1", "a", T0))
    if state_wanted is S.QUEUED:
        return w
    w.apply(c.AssignTask("r1", "a", "n1", 1, T0))
    if state_wanted is S.ASSIGNED:
        return w
    w.apply(c.TaskStarted("r1", "a", 1, "n1", T0))
    if state_wanted is S.RUNNING:
        return w
    code = 0 if state_wanted is S.SUCCESS else 1
    w.apply(c.TaskFinished("r1", "a", 1, "n1", code, T0, T0 + 1, "", "", T0 + 1))
    if state_wanted in (S.SUCCESS, S.UP_FOR_RETRY):
        return w
    w.apply(c.QueueTask("r1", "a", T0 + 700))
    w.apply(c.AssignTask("r1", "a", "n1", 2, T0 + 700))
    w.apply(c.TaskStarted("r1", "a", 2, "n1", T0 + 700))
    w.apply(c.TaskFinished("r1", "a", 2, "n1", 1, T0 + 700, T0 + 701, "", "", T0 + 701))
    if state_wanted is S.UPSTREAM_FAILED:   # (a is failed now: look at b)
        w.apply(c.FailUpstream("r1", "b", "an upstream task failed", T0 + 702))
    return w


@pytest.mark.parametrize("start", list(S), ids=[s.value for s in S])
def test_every_manual_move_applies(start):
    """clear (-> pending) and mark (-> success / failed) from every state: replicas agree,
    the indexes stay true, a running attempt is named for its node to kill."""
    for target in (S.PENDING, S.SUCCESS, S.FAILED):
        if target is start:
            continue
        w = _task_in(start)
        tid = "b" if start is S.UPSTREAM_FAILED else "a"
        assert w.ti("r1", tid).state is start
        if target is S.PENDING:
            result = w.apply(c.ClearTasks("r1", (tid,), False, "rerun", T0 + 800))
        else:
            result = w.apply(c.MarkTask("r1", tid, target.value, "", T0 + 800))
        assert w.ti("r1", tid).state is target
        assert bool(result.effects_of(StopAttempt)) == (start in (S.ASSIGNED, S.RUNNING))
        w.state.validate()


def test_state_pickles_for_raft_snapshots_and_keeps_applying():
    """Snapshots carry the pickled in-memory State beside the archive's records: a
    copy given the same records has the same digest and applies the next command
    exactly like the original (test_snapshot_file covers the file itself)."""
    import pickle

    from raftflow.core.archive import MemoryArchive

    w = running_world()
    w.queue_and_assign("r1", "a", "n1")
    copy = pickle.loads(pickle.dumps(w.state))
    archive = MemoryArchive()
    archive.replace_all(w.state.archive.view()())
    copy.attach_archive(archive)
    assert copy.digest() == w.state.digest()
    nxt = c.TaskStarted("r1", "a", 1, "n1", T0 + 1)
    assert copy.apply(nxt).ok and w.state.apply(nxt).ok
    assert copy.digest() == w.state.digest()
    copy.validate()


# ------------------------------------------------------------ lost attempts
def test_a_lost_attempt_is_queued_again_without_using_retries():
    w = running_world(dag_dict(tasks=[task("a", retries=0, max_lost_attempts=3)]))
    w.queue_and_assign("r1", "a", "n1")
    w.start("r1", "a")
    assert w.apply(c.LoseAttempt("r1", "a", 1, "n1", "node n1 stopped heartbeating", T0 + 5)).ok
    ti = w.ti("r1", "a")
    assert ti.state is S.QUEUED and ti.node is None and ti.tries_failed == 0 and ti.lost_attempts == 1
    assert "attempt 1 lost: node n1 stopped heartbeating" in ti.reason
    assert w.state.node_load == {}
    # The stale attempt's result, arriving late, is ignored.
    late = c.TaskFinished("r1", "a", 1, "n1", 0, T0, T0 + 6, "", "", T0 + 6)
    assert w.state.apply(late).code is Code.CONFLICT
    # It runs again as attempt 2 and may succeed.
    w.apply(c.AssignTask("r1", "a", "n2", 2, T0 + 7))
    assert w.apply(c.TaskStarted("r1", "a", 2, "n2", T0 + 7)).ok
    assert w.apply(c.TaskFinished("r1", "a", 2, "n2", 0, T0 + 7, T0 + 8, "", "", T0 + 8)).ok
    assert w.ti("r1", "a").state is S.SUCCESS


def test_a_task_lost_max_lost_attempts_times_fails_with_node_lost():
    w = running_world(dag_dict(tasks=[task("a", max_lost_attempts=2)]))
    for attempt, node in ((1, "n1"), (2, "n2")):
        if attempt == 1:
            w.queue_and_assign("r1", "a", node)
        else:
            w.apply(c.AssignTask("r1", "a", node, attempt, T0 + attempt))
        assert w.apply(c.LoseAttempt("r1", "a", attempt, node, f"node {node} stopped heartbeating", T0 + attempt)).ok
    ti = w.ti("r1", "a")
    assert ti.state is S.FAILED and ti.reason.startswith("node lost:") and ti.tries_failed == 0


def test_losing_an_attempt_that_is_not_current_is_rejected():
    w = running_world()
    w.queue_and_assign("r1", "a", "n1")
    before = w.state.digest()
    for stale in (c.LoseAttempt("r1", "a", 2, "n1", "x", T0), c.LoseAttempt("r1", "a", 1, "n2", "x", T0)):
        assert w.state.apply(stale).code is Code.CONFLICT
    assert w.state.digest() == before


def test_a_restarted_node_releases_the_attempts_of_its_previous_process():
    w = running_world(dag_dict(tasks=[task("a"), task("b"), task("c")]))
    w.queue_and_assign("r1", "a", "n1")
    w.start("r1", "a")
    w.queue_and_assign("r1", "b", "n1")
    w.queue_and_assign("r1", "c", "n2")
    result = w.apply(c.NodeStarted("n1", T0 + 9))
    assert result.effects == (ReleasedAttempts("n1", ("r1/a", "r1/b")),)
    for task_id in "ab":
        ti = w.ti("r1", task_id)
        assert ti.state is S.QUEUED and ti.lost_attempts == 1 and "node n1 restarted" in ti.reason
    assert w.ti("r1", "c").state is S.ASSIGNED and w.state.node_load == {"n2": 1}
    # The dead process's late report of attempt 1 is stale.
    assert w.state.apply(c.TaskFinished("r1", "a", 1, "n1", 0, T0, T0 + 9, "", "", T0 + 9)).code is Code.CONFLICT
    # Started again with nothing assigned: releases nothing.
    assert w.apply(c.NodeStarted("n1", T0 + 10)).effects == (ReleasedAttempts("n1", ()),)


def test_a_result_needs_a_committed_start_claim():
    """Workers commit TaskStarted before running anything; a result for an attempt that
    never claimed its start (so never ran) is refused."""
    w = running_world()
    w.queue_and_assign("r1", "a", "n1")
    before = w.state.digest()
    result = w.state.apply(c.TaskFinished("r1", "a", 1, "n1", 0, T0, T0 + 1, "", "", T0 + 1))
    assert result.code is Code.CONFLICT and "no start claim committed" in result.reason
    assert w.state.digest() == before
