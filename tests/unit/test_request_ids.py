"""Client request ids (core/requests.py): a command proposed again with the same id is
answered with its first outcome and changes nothing; the memory of ids is bounded,
replicated (digest, validate, snapshots) and reaches the client through the envelope,
the twin and the API operations."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest

from core_support import HOUR, T0, World, dag_dict, fingerprint, iso, task
from raftflow.api import errors
from raftflow.api.operations import DagFile, Operations
from raftflow.core import commands as c, requests
from raftflow.core.digest import full_digest
from raftflow.core.requests import REMEMBER_SECONDS, REMEMBERED_REQUESTS, request_id_error
from raftflow.core.result import Code, Replay
from raftflow.core.state import State
from raftflow.core.states import RunState, TaskState
from raftflow.proto import command_pb2
from raftflow.raft.adapter import encode_envelope, read_entry, read_envelope
from raftflow.raft.memory import MemoryCluster
from raftflow.raft.replica import OutcomeUnknown

RID = "0b5d2c1e-6a4f-4d1e-9a57-3f0c2d9e8b71"


def _create(run_id: str, at: float = T0, dag_id: str = "d") -> c.CreateRun:
    when = iso(at)
    return c.CreateRun(run_id, dag_id, when, when, when, "manual", {}, at)


def _world() -> World:
    w = World()
    w.submit(dag_dict(tasks=[task("a"), task("b", upstream=["a"])]))
    return w


def _apply(w: World, cmd: c.Command, request_id: str, index: int = 0) -> Any:
    result = w.state.apply(cmd, index, "client", request_id)
    w.state.validate()
    return result


# ---------------------------------------------------------------- the format
@pytest.mark.parametrize("value, fragment", [
    ("", "non-empty"), ("x" * 65, "at most 64"), ("a b", "only letters"), ("ü", "only letters"), (7, "string"),
])
def test_a_malformed_request_id_is_named_and_applies_nothing(value: Any, fragment: str) -> None:
    assert fragment in request_id_error(value)
    w = _world()
    before = fingerprint(w.state)
    if isinstance(value, str) and value:
        result = w.state.apply(_create("r1"), 5, "client", value)
        assert result.code is Code.INVALID and fragment in result.reason
        assert fingerprint(w.state) == before and "r1" not in w.state.run_index


def test_uuids_and_the_longest_id_are_accepted() -> None:
    assert request_id_error(RID) == "" and request_id_error("a" * 64) == "" and request_id_error("n1:7.x_y") == ""


# ---------------------------------------------------------------- one change, one outcome
def test_a_repeated_trigger_returns_the_first_run_and_creates_no_second() -> None:
    w = _world()
    first = _apply(w, _create("manual__d__first", T0), RID, index=7)
    after_first = fingerprint(w.state)
    # The retry, through another node: a fresh time and run id, the same request id.
    again = _apply(w, _create("manual__d__second", T0 + 3), RID, index=9)
    assert first.ok and first.value == {"run_id": "manual__d__first"} and first.replay is None
    assert again.ok and again.value == first.value
    assert again.replay == Replay(index=7) and again.effects == ()
    assert list(w.state.runs_by_dag["d"]) == ["manual__d__first"]
    assert fingerprint(w.state) == after_first


def test_different_request_ids_make_two_runs() -> None:
    w = _world()
    assert _apply(w, _create("r1", T0), RID).ok
    assert _apply(w, _create("r2", T0 + 1), RID.replace("0b", "ff")).ok
    assert list(w.state.runs_by_dag["d"]) == ["r1", "r2"]
    assert len(w.state.requests) == 2


def test_a_rejection_is_answered_again_even_when_the_command_would_now_pass() -> None:
    w = World()
    first = _apply(w, _create("r1", dag_id="later"), RID, index=3)
    assert first.code is Code.NOT_FOUND
    w.submit(dag_dict("later"))
    before = fingerprint(w.state)
    again = _apply(w, _create("r1", dag_id="later"), RID, index=4)
    assert (again.code, again.reason, again.replay) == (first.code, first.reason, Replay(3))
    assert "r1" not in w.state.run_index and fingerprint(w.state) == before


def test_a_retried_clear_does_not_clear_twice() -> None:
    w = _world()
    w.trigger("r1")
    w.apply(c.StartRun("r1", T0))
    w.apply(c.MarkTask("r1", "a", "success", "by hand", T0))
    first = _apply(w, c.ClearTasks("r1", ("a",), True, "again", T0 + 1), RID, index=20)
    assert first.ok and first.value == {"cleared": ["a", "b"]}
    w.apply(c.MarkTask("r1", "a", "success", "by hand", T0 + 2))
    before = fingerprint(w.state)
    again = _apply(w, c.ClearTasks("r1", ("a",), True, "again", T0 + 3), RID, index=22)
    assert again.value == first.value and again.replay == Replay(20)
    assert w.ti("r1", "a").state is TaskState.SUCCESS and fingerprint(w.state) == before


def test_a_repeated_cancel_reports_the_attempts_the_first_one_stopped_and_stops_none() -> None:
    w = _world()
    w.trigger("r1")
    w.apply(c.StartRun("r1", T0))
    w.queue_and_assign("r1", "a")
    w.start("r1", "a")
    first = _apply(w, c.CancelRun("r1", "stop", T0 + 1), RID, index=30)
    assert first.stopped_attempts == 1 and w.run("r1").state is RunState.FAILED
    again = _apply(w, c.CancelRun("r1", "stop", T0 + 2), RID, index=31)
    assert again.ok and again.effects == () and again.stopped_attempts == 1


def test_a_repeated_delete_reports_the_runs_it_removed() -> None:
    w = _world()
    w.trigger("r1")
    w.apply(c.CancelRun("r1", "stop", T0))
    assert "r1" not in w.state.active     # (finished: a DAG with no unfinished runs may be deleted)
    first = _apply(w, c.DeleteDag("d", T0 + 1), RID, index=40)
    assert first.ok and first.runs_removed == 1
    again = _apply(w, c.DeleteDag("d", T0 + 2), RID, index=41)
    assert again.ok and again.runs_removed == 1 and again.effects == ()


def test_a_repeated_batch_answers_each_member_as_before() -> None:
    w = World()
    submit = c.Batch((c.SubmitDag(dag_dict("x"), "# x", "x.py", T0), c.SubmitDag(dag_dict("y"), "# y", "y.py", T0)))
    first = _apply(w, submit, RID, index=2)
    again = _apply(w, submit, RID, index=3)
    assert [r.value for r in again.value] == [r.value for r in first.value]
    assert [r.code for r in again.value] == [Code.OK, Code.OK]
    assert len(w.state.dags["x"].versions) == 1


def test_an_id_reused_for_another_command_is_refused() -> None:
    w = _world()
    assert _apply(w, _create("r1"), RID, index=5).ok
    before = fingerprint(w.state)
    result = _apply(w, c.SetPaused("d", True, T0), RID)
    assert result.code is Code.INVALID
    assert "already used for a create_run command (Raft index 5), not set_paused" in result.reason
    assert fingerprint(w.state) == before and not w.state.dags["d"].paused


def test_commands_without_a_request_id_are_not_remembered() -> None:
    w = _world()
    w.trigger("r1")
    assert len(w.state.requests) == 0


# ---------------------------------------------------------------- bounds
def test_the_memory_keeps_the_last_n_ids_and_forgets_the_oldest_first() -> None:
    state = State()
    for i in range(REMEMBERED_REQUESTS + 25):
        assert state.apply(c.SetPool("p", 1 + i % 7, T0 + i * 0.001), i + 1, "client", f"id-{i}").ok
        assert len(state.requests) <= REMEMBERED_REQUESTS
    assert len(state.requests) == REMEMBERED_REQUESTS
    assert "id-24" not in state.requests.entries and "id-25" in state.requests.entries
    state.validate()
    # A forgotten id is new again: it applies (and is remembered anew).
    assert state.apply(c.SetPool("p", 9, T0 + 100), 20_000, "client", "id-0").replay is None
    assert state.pools["p"] == 9


def test_ids_older_than_the_age_bound_leave_when_a_newer_request_arrives() -> None:
    state = State()
    state.apply(c.SetPool("p", 1, T0), 1, "client", "old")
    state.apply(c.SetPool("p", 2, T0 + 10), 2, "client", "recent")
    assert list(state.requests.entries) == ["old", "recent"]
    state.apply(c.SetPool("p", 3, T0 + REMEMBER_SECONDS + 5), 3, "client", "new")
    assert list(state.requests.entries) == ["recent", "new"]
    state.validate()


def test_the_bytes_of_remembered_outcomes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(requests, "REMEMBERED_BYTES", 2_000)
    w = World()
    w.submit(dag_dict("d", schedule="@hourly"))
    for i in range(6):       # each outcome lists 12 run ids: about 600 bytes, so 3 fit
        end, start = iso(T0 - i * 12 * HOUR), iso(T0 - (i + 1) * 12 * HOUR + 1)
        assert len(_apply(w, c.Backfill("d", start, end, T0), f"b-{i}", index=i + 2).value["created"]) == 12
        assert w.state.requests.size <= 2_000
    assert list(w.state.requests.entries) == ["b-3", "b-4", "b-5"]


# ---------------------------------------------------------------- replicated state
def test_the_digest_covers_the_memory_and_validate_finds_a_stale_sum() -> None:
    a, b = _world(), _world()
    _apply(a, _create("r1"), RID)
    b.state.apply(_create("r1"))
    assert a.state.run_index == b.state.run_index
    assert a.state.digest() != b.state.digest() and full_digest(a.state) != full_digest(b.state)
    a.state.requests.digest += 1
    with pytest.raises(AssertionError, match="running size or digest is stale"):
        a.state.validate()


def test_replicas_that_applied_the_same_log_agree_on_the_memory() -> None:
    log = [(_create("r1", T0), RID), (_create("r2", T0 + 1), RID), (c.SetPaused("d", True, T0 + 2), "p-1")]
    states = [_world().state, _world().state]
    for state in states:
        for i, (cmd, rid) in enumerate(log):
            state.apply(cmd, 10 + i, "client", rid)
    assert states[0].digest() == states[1].digest() and full_digest(states[0]) == full_digest(states[1])


def test_a_snapshot_keeps_the_memory_and_a_repeat_is_still_answered() -> None:
    w = _world()
    first = _apply(w, _create("r1"), RID, index=4)
    restored: State = pickle.loads(pickle.dumps(w.state))
    restored.validate()
    assert restored.digest() == w.state.digest() and full_digest(restored) == full_digest(w.state)
    again = restored.apply(_create("r2", T0 + 1), 9, "client", RID)
    assert again.value == first.value and "r2" not in restored.run_index


def test_a_snapshot_from_before_request_ids_loads_with_an_empty_memory() -> None:
    w = _world()
    w.trigger("r1")
    data = dict(w.state.__getstate__())
    del data["requests"]
    old = State.__new__(State)
    old.__setstate__(data)
    old.validate()
    assert len(old.requests) == 0
    assert old.apply(_create("r2", T0 + 1), 9, "client", RID).ok and len(old.requests) == 1
    old.validate()


# ---------------------------------------------------------------- the envelope
def test_the_envelope_carries_the_request_id_and_older_entries_have_none() -> None:
    command = _create("r1")
    assert read_entry(encode_envelope(command, "client", RID)) == (command, "client", RID)
    assert read_envelope(encode_envelope(command, "client", RID)) == (command, "client")
    older = command_pb2.CommandEnvelope()
    older.ParseFromString(encode_envelope(command, "n1"))
    assert not older.request_id and read_entry(older.SerializeToString())[2] == ""


# ---------------------------------------------------------------- the twin and the operations
def _ops(cluster: MemoryCluster, node_id: str, clock: list[float]) -> Operations:
    return Operations(cluster.replicas[node_id], node_id, clock=lambda: clock[0])


def _twin() -> tuple[MemoryCluster, list[float]]:
    cluster = MemoryCluster()
    for node_id in ("n1", "n2"):
        cluster.replica(node_id)
    cluster.elect("n1")
    clock = [T0]
    _ops(cluster, "n1", clock).submit_dags([DagFile("d.py", json.dumps(dag_dict("d", [task("a")])), "# d")])
    return cluster, clock


def test_a_trigger_whose_outcome_was_unknown_is_retried_with_its_id_and_answers_the_first_run() -> None:
    cluster, clock = _twin()
    n1 = cluster.replicas["n1"]
    n1.fail_next(OutcomeUnknown("outcome unknown: leadership changed"), commit=True)
    with pytest.raises(errors.OutcomeUnknown, match=f"request id {RID}: a retry with that id applies it at most once"):
        _ops(cluster, "n1", clock).trigger("d", request_id=RID)
    first_run = next(iter(n1.state.runs_by_dag["d"]))
    clock[0] += 2.5
    retried = _ops(cluster, "n1", clock).trigger("d", request_id=RID)
    assert retried.run_id == first_run and retried.logical_date == iso(T0)
    assert list(n1.state.runs_by_dag["d"]) == [first_run]


def test_a_retry_through_a_lagging_replica_is_de_duplicated_by_apply() -> None:
    cluster, clock = _twin()
    n2 = cluster.replicas["n2"]
    n2.lag()     # n2 has not applied the first attempt: its checks pass, and it proposes anew
    first = _ops(cluster, "n1", clock).trigger("d", request_id=RID)
    clock[0] += 1.0
    assert RID not in n2.state.requests.entries
    retried = _ops(cluster, "n2", clock).trigger("d", request_id=RID)
    assert retried.run_id == first.run_id
    assert [cmd.run_id for cmd in cluster.commands(c.CreateRun)] == [first.run_id, f"manual__d__{iso(T0 + 1)}"]
    for replica in cluster.replicas.values():
        assert list(replica.state.runs_by_dag["d"]) == [first.run_id]
        replica.state.validate()
    assert cluster.replicas["n1"].state.digest() == n2.state.digest()


def test_retried_writes_whose_checks_the_first_attempt_changed_get_the_first_answer() -> None:
    cluster, clock = _twin()
    ops = _ops(cluster, "n1", clock)
    run_id = ops.trigger("d").run_id
    cancel_id, delete_id = "cancel-1", "delete-1"
    first_cancel = ops.cancel_run(run_id, request_id=cancel_id)
    # The run has finished: a new cancel is refused, the retried one is answered.
    with pytest.raises(errors.Conflict):
        ops.cancel_run(run_id)
    assert ops.cancel_run(run_id, request_id=cancel_id) == first_cancel
    log_size = len(cluster.log)
    first_delete = ops.delete_dag("d", request_id=delete_id)
    assert first_delete.runs_removed == 1
    assert ops.delete_dag("d", request_id=delete_id) == first_delete   # (the DAG is gone: NotFound without the id)
    with pytest.raises(errors.NotFound):
        ops.delete_dag("d")
    assert len(cluster.log) == log_size + 1    # the answered retries proposed nothing


def test_an_operation_refuses_an_id_used_for_another_write() -> None:
    cluster, clock = _twin()
    ops = _ops(cluster, "n1", clock)
    ops.trigger("d", request_id=RID)
    with pytest.raises(errors.Invalid, match="already used for a create_run command"):
        ops.set_paused("d", True, request_id=RID)
    assert not cluster.replicas["n1"].state.dags["d"].paused


def test_a_replica_that_is_behind_answers_a_missing_dag_as_unavailable_not_not_found() -> None:
    cluster, clock = _twin()
    late = cluster.replica("n3")     # (applies the log so far as it joins)
    late.lag()
    _ops(cluster, "n1", clock).submit_dags([DagFile("e.py", json.dumps(dag_dict("e", [task("a")])), "# e")])
    with pytest.raises(errors.Unavailable, match="node n3 is catching up with the cluster .*no DAG 'e'"):
        _ops(cluster, "n3", clock).trigger("e", request_id=RID)
    late.catch_up()
    assert _ops(cluster, "n3", clock).trigger("e", request_id=RID).run_id.startswith("manual__e__")
    with pytest.raises(errors.NotFound, match="no DAG 'nope'"):     # up to date: the DAG really is missing
        _ops(cluster, "n3", clock).trigger("nope")
