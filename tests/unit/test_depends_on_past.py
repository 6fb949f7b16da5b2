"""depends_on_past and wait_for_downstream (#19): a task waits for its instance in the
previous run (by logical date) to have succeeded or been skipped, read from the active
run or, once that run is archived, from the DAG's bounded replicated memo
(core/past.py); the planner never reads the archive."""

from __future__ import annotations

import pickle

import pytest

from core_support import HOUR, T0, World, dag_dict, iso, nodes, task
from raftflow.core import commands as c
from raftflow.core.model import MAX_PAST_RUNS, DagRecord
from raftflow.core.planner import PlanMemo, plan
from raftflow.core.spec import DagSpec, SpecError
from raftflow.core.state import State
from raftflow.core.states import RunState, TaskState as S

N = nodes("n1", slots=8)


def dop_world(**extra: object) -> World:
    w = World()
    w.submit(dag_dict(tasks=[task("a", depends_on_past=True, **extra), task("b", upstream=["a"])],
                      max_active_runs=4))
    return w


def trigger(w: World, run_id: str, hours: int) -> None:
    w.trigger(run_id, at=T0, logical_date=iso(T0 + hours * HOUR))


def work(w: World, now: float, fail: frozenset[str] = frozenset()) -> None:
    """One leader step: plan, then every assigned task runs (those in `fail` exit 1)."""
    w.tick(now, N)
    for run in list(w.state.active.values()):
        for tid, ti in run.tasks.items():
            if ti.state is S.ASSIGNED:
                w.run_task(run.run_id, tid, 1 if f"{run.run_id}/{tid}" in fail else 0, at=now)


def test_the_first_run_has_no_previous_run_and_starts() -> None:
    w = dop_world()
    trigger(w, "r1", 1)
    work(w, T0 + 1)
    assert w.ti("r1", "a").state is S.SUCCESS


def test_a_task_waits_while_its_previous_instance_failed_and_says_why_until_it_is_marked() -> None:
    w = dop_world()
    trigger(w, "r1", 1)
    trigger(w, "r2", 2)
    for now in range(1, 6):
        work(w, T0 + now, fail=frozenset({"r1/a"}))
    assert w.run("r1").state is RunState.FAILED, "r1 finished: its states now live in the memo only"
    assert "r1" not in w.state.active and "r1" in w.state.dags["d"].past
    ti = w.ti("r2", "a")
    assert ti.state is S.PENDING
    assert ti.reason == "waiting for the previous run's a (depends_on_past): it is failed"
    w.apply(c.MarkTask("r1", "a", "success", "fixed by hand", T0 + 10))
    assert "r1" not in w.state.dags["d"].past, "a reopened run is read as active, not from the memo"
    for now in range(11, 16):
        work(w, T0 + now)
    assert w.task_states("r2") == {"a": S.SUCCESS, "b": S.SUCCESS}


def test_the_previous_run_is_the_one_before_by_logical_date_and_may_still_be_active() -> None:
    w = dop_world()
    trigger(w, "late", 5)
    trigger(w, "early", 1)      # created second, but earlier: it is late's previous run
    w.tick(T0 + 1, N)
    assert w.ti("early", "a").state is S.ASSIGNED
    assert w.ti("late", "a").state is S.PENDING
    assert w.ti("late", "a").reason == "waiting for the previous run's a (depends_on_past): it is pending"
    w.tick(T0 + 1.5, N)
    assert w.ti("late", "a").reason == "waiting for the previous run's a (depends_on_past): it is assigned"
    w.run_task("early", "a", 0, at=T0 + 2)
    w.tick(T0 + 3, N)
    assert w.ti("late", "a").state is S.ASSIGNED, "a success in the previous run lets it start"


def test_a_skipped_previous_instance_counts_as_done() -> None:
    w = dop_world(skip_on_exit_code=[99])
    trigger(w, "r1", 1)
    trigger(w, "r2", 2)
    w.tick(T0 + 1, N)
    w.run_task("r1", "a", 99, at=T0 + 2)
    w.tick(T0 + 3, N)
    assert w.ti("r2", "a").state is S.ASSIGNED


def test_wait_for_downstream_also_waits_for_the_previous_instances_downstream_tasks() -> None:
    w = World()
    w.submit(dag_dict(tasks=[task("a", wait_for_downstream=True), task("b", upstream=["a"])], max_active_runs=4))
    assert DagSpec.from_dict(dag_dict(tasks=[task("a", wait_for_downstream=True)])).task("a").depends_on_past, \
        "wait_for_downstream implies depends_on_past, as in Airflow"
    trigger(w, "r1", 1)
    trigger(w, "r2", 2)
    w.tick(T0 + 1, N)
    w.run_task("r1", "a", 0, at=T0 + 2)
    w.tick(T0 + 3, N)
    w.tick(T0 + 3.5, N)
    assert w.ti("r2", "a").state is S.PENDING
    assert w.ti("r2", "a").reason == ("waiting for the previous run's b, downstream of a (wait_for_downstream): "
                                      "it is assigned")
    w.run_task("r1", "b", 0, at=T0 + 4)
    w.tick(T0 + 5, N)
    assert w.ti("r2", "a").state is S.ASSIGNED


def test_the_memo_keeps_the_newest_runs_by_logical_date_and_forgets_pruned_ones() -> None:
    w = World()
    w.submit(dag_dict(tasks=[task("a", depends_on_past=True), task("free")], max_active_runs=1))
    for i in range(MAX_PAST_RUNS + 4):
        trigger(w, f"r{i:02d}", i)
    for now in range(1, 4 * (MAX_PAST_RUNS + 4) + 4):
        work(w, T0 + now)
    past = w.state.dags["d"].past
    assert len(past) == MAX_PAST_RUNS
    assert sorted(past) == [f"r{i:02d}" for i in range(4, MAX_PAST_RUNS + 4)]
    assert all(set(p.states) == {"a"} for p in past.values()), "only the tasks later runs wait for"
    w.apply(c.PruneRuns(("r10",), T0 + 500))
    assert "r10" not in w.state.dags["d"].past


def test_a_dag_without_such_tasks_keeps_only_outcomes_and_intervals_in_its_memo() -> None:
    w = World()
    w.submit(dag_dict(tasks=[task("a")]))
    trigger(w, "r1", 1)
    for now in range(1, 4):
        work(w, T0 + now)
    assert w.run("r1").state is RunState.SUCCESS
    entry = w.state.dags["d"].past["r1"]
    assert (entry.states, entry.succeeded, entry.data_interval_start) == ({}, True, iso(T0 + HOUR))


def test_the_memo_survives_a_snapshot_and_an_old_dag_record_loads_without_one() -> None:
    w = dop_world()
    trigger(w, "r1", 1)
    for now in range(1, 5):
        work(w, T0 + now)
    copy = pickle.loads(pickle.dumps(w.state))
    assert copy.dags["d"].past == w.state.dags["d"].past != {}
    record = copy.dags["d"]
    fields = record.__getstate__()
    assert "past" in fields
    del fields["past"]     # as a record pickled before the memo existed
    old = DagRecord.__new__(DagRecord)
    old.__setstate__(fields)
    assert old.past == {} and old.dag_id == "d"


def test_a_waiting_run_is_planned_again_with_the_planners_memo_when_the_previous_run_moves() -> None:
    w, memo = dop_world(), PlanMemo()
    trigger(w, "r1", 1)
    trigger(w, "r2", 2)
    for now in (1, 2):
        cmds = plan(w.state, T0 + now, N, memo)
        if cmds:
            w.apply(c.Batch(tuple(cmds)))
    assert w.ti("r2", "a").state is S.PENDING and "r2" not in memo.runs
    w.run_task("r1", "a", 0, at=T0 + 3)
    w.apply(c.Batch(tuple(plan(w.state, T0 + 4, N, memo))))
    assert w.ti("r2", "a").state is S.ASSIGNED
    assert plan(w.state, T0 + 5, N, memo) == plan(w.state, T0 + 5, N)


def test_the_new_task_fields_are_validated_and_left_out_of_the_spec_at_their_defaults() -> None:
    spec = DagSpec.from_dict(dag_dict(tasks=[task("a", group="etl.load", doc_md="Loads *it*."), task("b")],
                                      doc_md="# D"))
    assert (spec.task("a").group, spec.task("a").doc_md, spec.doc_md) == ("etl.load", "Loads *it*.", "# D")
    assert not {"depends_on_past", "wait_for_downstream", "group", "doc_md"} & set(spec.task("b").to_dict())
    assert DagSpec.from_dict(spec.to_dict()) == spec
    for bad, message in (({"depends_on_past": "yes"}, "depends_on_past must be true or false"),
                         ({"group": "a..b"}, "group 'a..b' is invalid"),
                         ({"doc_md": "x" * (64 * 1024 + 1)}, "doc_md is 65537 bytes; the limit is 65536")):
        with pytest.raises(SpecError, match=message):
            DagSpec.from_dict(dag_dict(tasks=[task("a", **bad)]))
    assert State  # (imported for the snapshot test's types)
