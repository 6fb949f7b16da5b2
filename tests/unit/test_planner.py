"""plan(state, now, nodes): run lifecycle, slots and placement, schedules and catchup."""

from __future__ import annotations

import math

from core_support import HOUR, MINUTE, T0, World, dag_dict, diamond, epoch, fingerprint, iso, nodes, of_type, task
from raftflow.core import commands as c
from raftflow.core.effects import DropRunLogs
from raftflow.core.planner import MAX_CATCHUP_RUNS_PER_PLAN, NodeInfo, PlanMemo, plan
from raftflow.core.result import Code
from raftflow.core.run_ids import scheduled_run_id
from raftflow.core.states import RunState, TaskState

S = TaskState
TWO_BY_TWO = nodes("n1", "n2", slots=2)
ONE_SLOT = nodes("n1", slots=1)


def assigned(cmds: list[c.Command]) -> list[tuple[str, str, int]]:
    """(task_id, node, attempt) of every AssignTask in a plan, in order."""
    return [(a.task_id, a.node, a.attempt) for a in of_type(cmds, c.AssignTask)]


def queued(cmds: list[c.Command]) -> list[str]:
    return [q.task_id for q in of_type(cmds, c.QueueTask)]


def creations(cmds: list[c.Command]) -> list[tuple[str, str, str]]:
    """(dag_id, logical date, data interval start) of every scheduled run a plan asks for."""
    return [(dag_id, x.logical_date, x.data_interval_start)
            for x in of_type(cmds, c.CreateScheduledRuns) for dag_id in x.dag_ids]


def created(cmds: list[c.Command]) -> list[str]:
    return [logical for _dag_id, logical, _start in creations(cmds)]


def finish_assigned(world: World, run_id: str, cmds: list[c.Command], exit_code: int = 0, at: float = T0) -> None:
    for task_id, _node, _attempt in assigned(cmds):
        world.run_task(run_id, task_id, exit_code, at)


# ----------------------------------------------------------- purity
def test_plan_changes_nothing_and_is_repeatable(world):
    world.submit(diamond("d", schedule="*/5 * * * *", start_date=iso(T0 - HOUR), catchup="all"))
    world.trigger("m1")
    before, applied = fingerprint(world.state), world.state.applied
    first = plan(world.state, T0 + 1, TWO_BY_TWO)
    second = plan(world.state, T0 + 1, TWO_BY_TWO)
    assert first == second and first
    assert fingerprint(world.state) == before and world.state.applied == applied


def test_nothing_to_do_plans_nothing(world):
    assert plan(world.state, T0, TWO_BY_TWO) == []
    world.submit(diamond("d"))
    assert plan(world.state, T0 + 1, TWO_BY_TWO) == []


# ----------------------------------------------------- a manual diamond
def test_diamond_runs_a_and_b_in_parallel_then_c(world):
    world.submit(diamond("d"))
    world.trigger("m1", at=T0)

    cmds = world.tick(T0 + 1, TWO_BY_TWO)
    assert cmds[0] == c.StartRun("m1", T0 + 1)
    assert queued(cmds) == ["a", "b"]
    placement = assigned(cmds)
    assert [(t, attempt) for t, _n, attempt in placement] == [("a", 1), ("b", 1)]
    assert {n for _t, n, _a in placement} == {"n1", "n2"}  # spread over both nodes
    assert world.run("m1").state is RunState.RUNNING
    assert world.task_states("m1") == {"a": S.ASSIGNED, "b": S.ASSIGNED, "c": S.PENDING}

    assert world.tick(T0 + 2, TWO_BY_TWO) == []  # nothing new while a and b run
    world.run_task("m1", "a", 0, T0 + 3)
    assert world.tick(T0 + 5, TWO_BY_TWO) == []  # c still waits for b
    world.run_task("m1", "b", 0, T0 + 6)

    cmds = world.tick(T0 + 8, TWO_BY_TWO)
    assert queued(cmds) == ["c"] and [t for t, _n, _a in assigned(cmds)] == ["c"]
    world.run_task("m1", "c", 0, T0 + 9)

    assert world.tick(T0 + 11, TWO_BY_TWO) == [c.FinishRun("m1", "success", T0 + 11)]
    run = world.run("m1")
    assert run.state is RunState.SUCCESS and run.ended_at == T0 + 11
    assert list(world.state.active) == [] and world.state.node_load == {}
    assert world.tick(T0 + 12, TWO_BY_TWO) == []


def test_upstream_failure_fails_c_and_the_run(world):
    world.submit(diamond("d"))
    world.trigger("m1")
    world.tick(T0 + 1, TWO_BY_TWO)
    world.run_task("m1", "a", exit_code=1, at=T0 + 2)

    cmds = world.tick(T0 + 3, TWO_BY_TWO)
    assert cmds == [c.FailUpstream("m1", "c", "an upstream task failed", T0 + 3)]
    assert world.ti("m1", "c").state is S.UPSTREAM_FAILED
    assert world.run("m1").state is RunState.RUNNING  # b is still running

    world.run_task("m1", "b", exit_code=0, at=T0 + 4)
    assert world.tick(T0 + 5, TWO_BY_TWO) == [c.FinishRun("m1", "failed", T0 + 5)]
    assert world.run("m1").state is RunState.FAILED
    assert world.task_states("m1") == {"a": S.FAILED, "b": S.SUCCESS, "c": S.UPSTREAM_FAILED}


def test_upstream_failure_cascades_down_a_chain(world):
    world.submit(dag_dict(tasks=[task("a"), task("b", ["a"]), task("c", ["b"]), task("side")]))
    world.trigger("m1")
    world.tick(T0, TWO_BY_TWO)
    world.run_task("m1", "a", exit_code=1)
    world.run_task("m1", "side", exit_code=0)
    for step in range(1, 10):
        world.tick(T0 + step, TWO_BY_TWO)
        if world.run("m1").state.terminal:
            break
    assert world.run("m1").state is RunState.FAILED
    assert world.task_states("m1") == {"a": S.FAILED, "b": S.UPSTREAM_FAILED, "c": S.UPSTREAM_FAILED,
                                       "side": S.SUCCESS}


def test_every_task_succeeding_finishes_the_run_successfully(world):
    world.submit(dag_dict(tasks=[task("a"), task("b", ["a"]), task("c", ["a"]), task("d", ["b", "c"])]))
    world.trigger("m1")
    for step in range(10):
        cmds = world.tick(T0 + step, TWO_BY_TWO)
        finish_assigned(world, "m1", cmds, 0, T0 + step)
        if world.run("m1").state.terminal:
            break
    assert world.run("m1").state is RunState.SUCCESS
    assert set(world.task_states("m1").values()) == {S.SUCCESS}


# ------------------------------------------------------------ slots
def test_one_slot_means_one_assignment(world):
    world.submit(dag_dict(tasks=[task("a"), task("b"), task("c")]))
    world.trigger("m1")
    cmds = world.tick(T0, ONE_SLOT)
    assert queued(cmds) == ["a", "b", "c"]
    assert assigned(cmds) == [("a", "n1", 1)]
    assert world.tick(T0 + 1, ONE_SLOT) == []  # the slot is taken; queued tasks wait
    world.run_task("m1", "a", 0, T0 + 2)
    assert assigned(world.tick(T0 + 3, ONE_SLOT)) == [("b", "n1", 1)]


def test_unhealthy_nodes_never_get_work(world):
    world.submit(dag_dict(tasks=[task(t) for t in "abcd"]))
    world.trigger("m1")
    sick = [NodeInfo("n1", False, 8), NodeInfo("n2", True, 1)]
    cmds = world.tick(T0, sick)
    assert assigned(cmds) == [("a", "n2", 1)]
    assert assigned(world.tick(T0 + 1, nodes("n1", "n2", slots=8, healthy=False))) == []
    assert assigned(world.tick(T0 + 2, [])) == []
    assert world.task_states("m1") == {"a": S.ASSIGNED, "b": S.QUEUED, "c": S.QUEUED, "d": S.QUEUED}


def test_nodes_without_slots_get_nothing(world):
    world.submit(dag_dict(tasks=[task("a")]))
    world.trigger("m1")
    assert assigned(world.tick(T0, nodes("n1", slots=0))) == []


def test_work_spreads_to_the_least_loaded_node(world):
    world.submit(dag_dict(tasks=[task(t) for t in "abcd"]))
    world.trigger("m1")
    assert [n for _t, n, _a in assigned(world.tick(T0, nodes("n1", "n2", slots=4)))] == ["n1", "n2", "n1", "n2"]


def test_existing_load_counts_when_placing(world):
    world.submit(dag_dict("busy", tasks=[task("x"), task("y")]))
    world.trigger("old", dag_id="busy")
    world.tick(T0, nodes("n1", slots=4))              # x and y now hold two slots on n1
    assert world.state.node_load == {"n1": 2}
    world.submit(dag_dict(tasks=[task(t) for t in "abc"]))
    world.trigger("m1")
    cmds = world.tick(T0 + 1, nodes("n1", "n2", slots=4))
    assert [n for _t, n, _a in assigned(cmds)] == ["n2", "n2", "n1"]  # n2 until the loads tie, then by id


def test_placement_uses_the_share_of_slots_in_use(world):
    world.submit(dag_dict(tasks=[task(t) for t in "abcde"]))
    world.trigger("m1")
    cmds = world.tick(T0, [NodeInfo("big", True, 4), NodeInfo("small", True, 1)])
    assert [n for _t, n, _a in assigned(cmds)] == ["big", "small", "big", "big", "big"]


def test_priority_weight_decides_who_goes_first_when_slots_are_scarce(world):
    world.submit(dag_dict(tasks=[task("low"), task("high", priority_weight=10), task("mid", priority_weight=5),
                                 task("mid2", priority_weight=5)]))
    world.trigger("m1")
    order = []
    for step in range(8):
        cmds = world.tick(T0 + step, ONE_SLOT)
        order += [t for t, _n, _a in assigned(cmds)]
        finish_assigned(world, "m1", cmds, 0, T0 + step)
    assert order == ["high", "mid", "mid2", "low"]  # equal weights keep declaration order


def test_older_runs_go_first_at_equal_priority(world):
    world.submit(dag_dict(tasks=[task("a")]))
    world.trigger("newer", at=T0, logical_date="2024-01-10T12:00:00+00:00")
    world.trigger("older", at=T0, logical_date="2024-01-09T12:00:00+00:00")
    cmds = world.tick(T0 + 1, ONE_SLOT)
    assert [(a.run_id, a.task_id) for a in of_type(cmds, c.AssignTask)] == [("older", "a")]


# ---------------------------------------------------- retries in time
def test_up_for_retry_is_requeued_only_once_retry_at_is_reached(world):
    world.submit(dag_dict(tasks=[task("a", retries=1, retry_delay=60)]))
    world.trigger("m1")
    world.tick(T0, TWO_BY_TWO)
    world.run_task("m1", "a", exit_code=1, at=T0 + 9)         # finishes at T0 + 10
    assert world.ti("m1", "a").retry_at == T0 + 70
    assert world.tick(T0 + 69, TWO_BY_TWO) == []
    cmds = world.tick(T0 + 70, TWO_BY_TWO)
    assert queued(cmds) == ["a"]
    assert [(t, a) for t, _n, a in assigned(cmds)] == [("a", 2)]
    world.run_task("m1", "a", exit_code=1, at=T0 + 80)
    assert world.ti("m1", "a").state is S.FAILED
    assert world.tick(T0 + 200, TWO_BY_TWO) == [c.FinishRun("m1", "failed", T0 + 200)]


# ------------------------------------------------- runs and their DAGs
def test_manual_run_of_a_paused_dag_stays_queued(world):
    world.submit(diamond("d", is_paused_upon_creation=True))
    world.trigger("m1")
    for step in range(3):
        assert world.tick(T0 + step, TWO_BY_TWO) == []
    assert world.run("m1").state is RunState.QUEUED
    world.set_paused("d", False, at=T0 + 10)
    cmds = world.tick(T0 + 11, TWO_BY_TWO)
    assert cmds[0] == c.StartRun("m1", T0 + 11) and queued(cmds) == ["a", "b"]


def test_max_active_runs_keeps_the_second_run_queued(world):
    world.submit(dag_dict(tasks=[task("a")], max_active_runs=1))
    world.trigger("m1", at=T0)
    world.trigger("m2", at=T0 + 1)
    cmds = world.tick(T0 + 2, TWO_BY_TWO)
    assert of_type(cmds, c.StartRun) == [c.StartRun("m1", T0 + 2)]
    assert world.run("m2").state is RunState.QUEUED

    world.run_task("m1", "a", 0, T0 + 3)
    started_at = None
    for step in range(5, 10):
        world.tick(T0 + step, TWO_BY_TWO)
        running = [r for r in world.state.iter_runs() if r.state is RunState.RUNNING]
        assert len(running) <= 1
        if world.run("m2").state is RunState.RUNNING:
            started_at = T0 + step
            break
    assert world.run("m1").state is RunState.SUCCESS
    assert started_at is not None and world.run("m1").ended_at <= started_at


def test_max_active_runs_counts_per_dag(world):
    world.submit(dag_dict("one", tasks=[task("a")], max_active_runs=1))
    world.submit(dag_dict("two", tasks=[task("a")], max_active_runs=2))
    for run_id, dag_id in (("o1", "one"), ("o2", "one"), ("t1", "two"), ("t2", "two"), ("t3", "two")):
        world.trigger(run_id, dag_id=dag_id)
    cmds = world.tick(T0, [])
    assert [s.run_id for s in of_type(cmds, c.StartRun)] == ["o1", "t1", "t2"]


# ------------------------------------------------------- schedules
def every_5(catchup: str, start: float, **kw) -> dict:
    return dag_dict("s5", [task("a")], schedule="*/5 * * * *", start_date=iso(start), catchup=catchup,
                    max_active_runs=100, **kw)


def test_catchup_all_creates_every_missed_tick_in_bounded_batches(world):
    world.submit(every_5("all", T0 - 3 * HOUR), at=T0)
    expected = [iso(T0 - 3 * HOUR + i * 5 * MINUTE) for i in range(37)]  # 3 h of ticks, both ends included

    first = plan(world.state, T0, [])
    assert len(creations(first)) == MAX_CATCHUP_RUNS_PER_PLAN
    assert all(isinstance(cmd, c.CreateScheduledRuns) and cmd.dag_ids == ("s5",) for cmd in first)
    world.apply(c.Batch(tuple(first)))
    second = plan(world.state, T0, [])
    world.apply(c.Batch(tuple(second)))
    assert created(plan(world.state, T0, [])) == []

    assert created(first + second) == expected
    for logical in expected:
        run = world.run(scheduled_run_id("s5", logical))
        assert run.run_id == f"scheduled__s5__{logical}"
        assert run.trigger == "schedule" and run.dag_id == "s5" and run.conf == {}
        assert run.data_interval_end == run.logical_date == logical
        assert epoch(run.data_interval_end) - epoch(run.data_interval_start) == 5 * MINUTE
    stored = world.run(f"scheduled__s5__{iso(T0)}")
    assert (stored.logical_date, stored.data_interval_start) == (iso(T0), iso(T0 - 5 * MINUTE))
    assert world.state.dags["s5"].next_tick_at == T0 + 5 * MINUTE


def test_scheduled_runs_wait_while_the_dag_has_max_queued_runs_queued(world):
    """A catchup="all" DAG far behind its schedule, whose runs cannot start, stops
    creating runs at max_queued_runs; its cursor waits, and the next tick is created
    once a queued run has left the queue."""
    world.submit(dag_dict("s5", [task("a")], schedule="*/5 * * * *", start_date=iso(T0 - 3 * HOUR),
                          catchup="all", max_active_runs=1, max_queued_runs=5), at=T0)
    first = plan(world.state, T0, [])
    assert created(first) == [iso(T0 - 3 * HOUR + i * 5 * MINUTE) for i in range(5)]
    world.apply(c.Batch(tuple(first)))
    assert created(plan(world.state, T0, [])) == []        # 5 queued: none more
    world.apply(c.StartRun(scheduled_run_id("s5", created(first)[0]), T0))   # one leaves the queue
    again = plan(world.state, T0, [])
    assert created(again) == [iso(T0 - 3 * HOUR + 5 * 5 * MINUTE)]


def test_a_re_proposed_tick_creates_nothing_twice(world):
    world.submit(every_5("all", T0 - HOUR), at=T0)
    creates = plan(world.state, T0, [])
    world.apply(c.Batch(tuple(creates)))
    runs_before = len(world.state.run_index)
    # A new leader with a stale view proposes the same ticks again: every one is a conflict.
    result = world.apply(c.Batch(tuple(creates)))
    assert {r.code for r in result.value} == {Code.CONFLICT}
    assert len(world.state.run_index) == runs_before == 13
    world.apply(creates[0], expect=Code.CONFLICT)


def test_one_command_creates_a_ticks_runs_of_many_dags_each_refused_alone(world):
    """Issue 16: the DAGs due at one tick share one CreateScheduledRuns; a DAG that cannot
    get its run (deleted meanwhile, or its run exists) is refused without the others."""
    for name in ("a", "b", "c"):
        world.submit(dict(every_5("latest", T0 - HOUR), dag_id=name), at=T0 - HOUR)
    cmds = plan(world.state, T0 + 1, [])
    assert [(type(x), x.dag_ids, x.logical_date, x.data_interval_start) for x in cmds] == \
        [(c.CreateScheduledRuns, ("a", "b", "c"), iso(T0), iso(T0 - 5 * MINUTE))]
    world.apply(c.CreateRun(scheduled_run_id("b", iso(T0)), "b", iso(T0), iso(T0 - 5 * MINUTE), iso(T0),
                            "schedule", {}, T0))
    with_missing = c.CreateScheduledRuns(cmds[0].logical_date, cmds[0].data_interval_start,
                                         cmds[0].data_interval_end, ("a", "b", "gone", "c"), T0 + 1)
    result = world.apply(with_missing)
    exists = f"run {scheduled_run_id('b', iso(T0))!r} already exists"
    assert result.value == {"created": [scheduled_run_id("a", iso(T0)), scheduled_run_id("c", iso(T0))],
                            "backfilled": [], "refused": [["b", exists], ["gone", "no DAG 'gone'"]]}
    for name in ("a", "b", "c"):
        run = world.run(scheduled_run_id(name, iso(T0)))
        assert (run.trigger, run.triggered_by) == ("schedule", "scheduler")
        assert run.data_interval_start == iso(T0 - 5 * MINUTE)
        assert world.state.dags[name].next_tick_at == T0 + 5 * MINUTE
    world.state.validate()
    again = world.apply(with_missing, expect=Code.CONFLICT)
    assert "already exists (and 3 more DAGs)" in again.reason


def test_a_ticks_dags_are_split_into_commands_of_bounded_size(world, monkeypatch):
    from raftflow.core import planner

    monkeypatch.setattr(planner, "MAX_DAGS_PER_CREATION", 2)
    for name in ("a", "b", "c", "d", "e"):
        world.submit(dict(every_5("latest", T0 - HOUR), dag_id=name), at=T0 - HOUR)
    cmds = plan(world.state, T0 + 1, [])
    assert [x.dag_ids for x in cmds] == [("a", "b"), ("c", "d"), ("e",)]
    assert {(x.logical_date, x.data_interval_start) for x in cmds} == {(iso(T0), iso(T0 - 5 * MINUTE))}


def test_a_create_scheduled_runs_is_bounded_and_its_instants_checked(world):
    from raftflow.core.handlers_dags import MAX_SCHEDULED_RUNS_PER_COMMAND

    world.submit(every_5("latest", T0 - HOUR), at=T0 - HOUR)
    cursor = world.state.dags["s5"].next_tick_at
    too_many = c.CreateScheduledRuns(iso(T0), iso(T0 - 5 * MINUTE), iso(T0),
                                     ("s5",) * (MAX_SCHEDULED_RUNS_PER_COMMAND + 1), T0)
    assert "at most" in world.apply(too_many, expect=Code.INVALID).reason
    bad = c.CreateScheduledRuns("yesterday", iso(T0 - 5 * MINUTE), iso(T0), ("s5",), T0)
    assert "logical_date" in world.apply(bad, expect=Code.INVALID).reason
    assert not world.state.active and world.state.dags["s5"].next_tick_at == cursor


def test_catchup_latest_creates_only_the_newest_missed_tick(world):
    world.submit(every_5("latest", T0 - 3 * HOUR), at=T0 - 3 * HOUR)
    assert created(world.tick(T0 + 2 * MINUTE)) == [iso(T0)]
    run = world.run(f"scheduled__s5__{iso(T0)}")
    assert run.data_interval_start == iso(T0 - 5 * MINUTE)
    assert created(world.tick(T0 + 3 * MINUTE)) == []
    assert created(world.tick(T0 + 5 * MINUTE)) == [iso(T0 + 5 * MINUTE)]
    assert created(world.tick(T0 + 17 * MINUTE)) == [iso(T0 + 15 * MINUTE)]  # 10 and 15 collapse
    assert sum(1 for r in world.state.iter_runs() if r.trigger == "schedule") == 3


def test_catchup_none_never_runs_ticks_before_the_submit(world):
    submitted = T0 + 2 * MINUTE
    world.submit(every_5("none", T0 - 3 * HOUR), at=submitted)
    assert created(world.tick(T0 + 3 * MINUTE)) == []
    assert created(world.tick(T0 + 5 * MINUTE)) == [iso(T0 + 5 * MINUTE)]
    assert all(epoch(r.logical_date) >= submitted for r in world.state.iter_runs())


def test_downtime_latest_runs_the_newest_missed_tick_and_none_runs_none(world):
    """The whole cluster was down from 12:01 to 12:17: `latest` runs the 12:15 tick
    once; `none` skips 12:05-12:15 (its cursor moves on without a run) and runs 12:20."""
    world.submit(every_5("latest", T0), at=T0)
    world.submit(dict(every_5("none", T0), dag_id="n5"), at=T0)
    assert sorted(created(world.tick(T0 + 1))) == [iso(T0), iso(T0)]
    back = T0 + 17 * MINUTE
    decisions = world.tick(back)
    assert [(dag_id, logical) for dag_id, logical, _ in creations(decisions)] == [("s5", iso(T0 + 15 * MINUTE))]
    assert [(x.dag_id, x.through) for x in of_type(decisions, c.SkipTicks)] == [("n5", T0 + 15 * MINUTE)]
    assert world.state.dags["n5"].next_tick_at == T0 + 20 * MINUTE
    again = world.tick(back + 1)
    assert not of_type(again, c.SkipTicks) and created(again) == []
    assert sorted(created(world.tick(T0 + 20 * MINUTE))) == [iso(T0 + 20 * MINUTE)] * 2
    assert sorted(r.logical_date for r in world.state.iter_runs() if r.dag_id == "n5") == \
        [iso(T0), iso(T0 + 20 * MINUTE)]


def test_catchup_none_still_runs_a_tick_delayed_by_an_election(world):
    world.submit(every_5("none", T0), at=T0)
    assert created(world.tick(T0 + 1)) == [iso(T0)]
    # Nobody planned from 12:04:59 to 12:05:02 (an election): within the misfire grace.
    assert created(world.tick(T0 + 5 * MINUTE + 2)) == [iso(T0 + 5 * MINUTE)]
    # Past the grace (half the 5-minute interval here), a tick is skipped.
    decisions = world.tick(T0 + 10 * MINUTE + 31)
    assert created(decisions) == [] and of_type(decisions, c.SkipTicks)


def test_skipping_ticks_never_moves_the_cursor_back(world):
    world.submit(every_5("none", T0), at=T0)
    world.tick(T0 + 1)
    assert world.state.dags["s5"].next_tick_at == T0 + 5 * MINUTE
    world.apply(c.SkipTicks("s5", T0, T0 + 2), expect=Code.CONFLICT)   # a stale, re-proposed skip
    world.apply(c.SkipTicks("nope", T0, T0 + 2), expect=Code.NOT_FOUND)
    world.apply(c.SkipTicks("s5", T0 + 5 * MINUTE, T0 + 6 * MINUTE))
    assert world.state.dags["s5"].next_tick_at == T0 + 10 * MINUTE


def test_catchup_none_after_unpause_starts_from_the_unpause(world):
    world.submit(every_5("none", T0 - 3 * HOUR, is_paused_upon_creation=True), at=T0)
    assert world.tick(T0 + HOUR) == []
    world.set_paused("s5", False, at=T0 + HOUR + MINUTE)
    assert created(world.tick(T0 + HOUR + 2 * MINUTE)) == []
    assert created(world.tick(T0 + HOUR + 5 * MINUTE)) == [iso(T0 + HOUR + 5 * MINUTE)]
    assert len(world.state.run_index) == 1


def test_schedule_does_not_start_before_start_date(world):
    world.submit(every_5("all", T0 + HOUR), at=T0)
    assert world.tick(T0 + HOUR - 1) == []
    assert created(world.tick(T0 + HOUR)) == [iso(T0 + HOUR)]


def test_schedule_stops_at_end_date(world):
    world.submit(every_5("all", T0, end_date=iso(T0 + 10 * MINUTE)), at=T0)
    assert created(world.tick(T0 + HOUR)) == [iso(T0), iso(T0 + 5 * MINUTE), iso(T0 + 10 * MINUTE)]
    assert world.state.dags["s5"].next_tick_at is None
    assert created(world.tick(T0 + 2 * HOUR)) == []


def test_a_paused_dag_creates_no_scheduled_runs(world):
    world.submit(every_5("all", T0 - HOUR, is_paused_upon_creation=True), at=T0)
    for hours in (0, 1, 24):
        assert world.tick(T0 + hours * HOUR) == []
    assert world.state.run_index == {}


def test_pausing_later_stops_new_ticks_and_unpausing_catches_up(world):
    world.submit(every_5("all", T0), at=T0)
    assert created(world.tick(T0)) == [iso(T0)]
    world.set_paused("s5", True, at=T0 + MINUTE)
    assert created(world.tick(T0 + 20 * MINUTE)) == []
    world.set_paused("s5", False, at=T0 + 21 * MINUTE)
    assert created(world.tick(T0 + 21 * MINUTE)) == [iso(T0 + i * 5 * MINUTE) for i in range(1, 5)]


def test_scheduled_runs_then_run_their_tasks(world):
    world.submit(every_5("latest", T0), at=T0)
    world.tick(T0)                                  # creates the run
    cmds = world.tick(T0 + 1, TWO_BY_TWO)           # starts it, queues and assigns a
    run_id = scheduled_run_id(every_5("latest", T0)["dag_id"], iso(T0))
    assert of_type(cmds, c.StartRun) == [c.StartRun(run_id, T0 + 1)]
    world.run_task(run_id, "a", 0, T0 + 2)
    assert c.FinishRun(run_id, "success", T0 + 4) in world.tick(T0 + 4, TWO_BY_TWO)


def test_timezone_schedule_creates_utc_logical_dates(world):
    world.submit(dag_dict("berlin", [task("a")], schedule="0 3 * * *", timezone="Europe/Berlin",
                          start_date="2024-01-09", catchup="latest"), at=epoch("2024-01-09"))
    assert created(world.tick(epoch("2024-01-10T02:30:00"))) == ["2024-01-10T02:00:00+00:00"]


# --------------------------------------------------------- known bugs
def test_catchup_latest_never_creates_a_run_after_end_date(world):
    world.submit(dag_dict(schedule="@daily", start_date="2024-01-01", end_date="2024-01-03", catchup="latest"),
                 at=epoch("2023-12-31"))
    dates = created(world.tick(epoch("2024-01-10T05:00:00")))
    assert dates and all(epoch(d) <= epoch("2024-01-03") for d in dates), dates


def test_an_equivalent_cron_edit_does_not_wedge_catchup_all(world):
    spec = dag_dict("h", [task("a")], schedule="0 * * * *", start_date="2024-01-01", catchup="all",
                    max_active_runs=1000)
    world.submit(spec, at=epoch("2024-01-01"))
    now = epoch("2024-01-02T16:30:00")
    while created(world.tick(now)):
        pass
    assert len(world.state.run_index) == 41  # 2024-01-01T00:00 .. 2024-01-02T16:00
    world.submit({**spec, "schedule": "0 */1 * * *"}, at=now)
    later = epoch("2024-01-02T20:30:00")
    for _ in range(3):
        world.tick(later, all_ok=False)
    assert f"scheduled__h__{iso(epoch('2024-01-02T20:00:00'))}" in world.state.run_index


def test_attempts_on_a_node_whose_lease_expired_are_lost_and_reassigned(world):
    world.submit(dag_dict(tasks=[task("a"), task("b")]))
    world.trigger("m1")
    world.tick(T0, nodes("n1", "n2", slots=1))
    assert {world.ti("m1", t).node for t in "ab"} == {"n1", "n2"}
    lost_node = world.ti("m1", "a").node
    other = "n2" if lost_node == "n1" else "n1"
    # Silent but not yet past the lease: its attempt is kept, it gets no new work.
    view = [NodeInfo(lost_node, healthy=False, slots=1), NodeInfo(other, healthy=True, slots=1)]
    assert not of_type(plan(world.state, T0 + 2, view), c.LoseAttempt)
    # Past the lease: the attempt is lost and, with a free slot, reassigned.
    world.finish("m1", "b", 0, at=T0 + 3)
    view = [NodeInfo(lost_node, healthy=False, slots=1, lease_expired=True), NodeInfo(other, healthy=True, slots=1)]
    cmds = plan(world.state, T0 + 5, view)
    lost = of_type(cmds, c.LoseAttempt)
    assert [(x.task_id, x.node, x.attempt) for x in lost] == [("a", lost_node, 1)]
    world.apply(c.Batch(tuple(cmds)))
    world.tick(T0 + 5, view)
    ti = world.ti("m1", "a")
    assert ti.state is S.ASSIGNED and ti.node == other and ti.attempt == 2 and ti.tries_failed == 0


def test_the_leader_gets_new_work_after_the_followers(world):
    world.submit(dag_dict(tasks=[task(t) for t in "abc"]))
    world.trigger("m1")
    view = [NodeInfo("n1", True, 2, leader=True), NodeInfo("n2", True, 2), NodeInfo("n3", True, 2)]
    world.tick(T0, view)
    assert sorted(world.ti("m1", t).node for t in "abc") == ["n1", "n2", "n3"]
    # One task and equal loads: a follower gets it, even one with a later id.
    solo = World()
    solo.submit(dag_dict(tasks=[task("a")]))
    solo.trigger("m1")
    solo.tick(T0, [NodeInfo("n1", True, 2, leader=True), NodeInfo("n2", True, 2)])
    assert solo.ti("m1", "a").node == "n2"


def test_a_tick_missed_during_an_election_runs_exactly_once_afterwards(world):
    """No leader planned across the 12:05 tick; the new leader creates it once, and a
    deposed leader's identical, late proposal is a harmless conflict (invariant 5)."""
    world.submit(dag_dict(schedule="*/5 * * * *", catchup="latest", start_date=iso(T0)), at=T0)
    first = world.tick(T0 + 1, nodes("n1"))
    assert creations(first) == [("d", iso(T0), iso(T0 - 5 * MINUTE))]
    tick = T0 + 5 * MINUTE
    # ... election from tick - 1 s to tick + 2 s: nobody plans ...
    after = plan(world.state, tick + 2, nodes("n2"))
    assert creations(after) == [("d", iso(tick), iso(T0))]
    world.apply(c.Batch(tuple(after)))
    assert not creations(plan(world.state, tick + 2.1, nodes("n2")))
    create = next(x for x in after if isinstance(x, c.CreateScheduledRuns))
    late = world.state.apply(create)          # the old leader's copy of the same decision
    assert late.code is Code.CONFLICT
    assert sum(r.trigger == "schedule" for r in world.state.iter_runs()) == 2


def _finished_runs(world: World, count: int, spec: dict, start: float = T0) -> list[str]:
    world.submit(spec)
    ids = []
    for i in range(count):
        run_id = f"m{i}"
        world.trigger(run_id, at=start + i)
        world.tick(start + i, nodes("n1"))
        world.finish(run_id, "a", 0, at=start + i + 0.5)
        world.tick(start + i + 0.5, nodes("n1"))
        assert world.run(run_id).state is RunState.SUCCESS
        ids.append(run_id)
    return ids


def test_retention_keeps_the_newest_keep_runs_runs():
    world = World()
    ids = _finished_runs(world, 5, dag_dict(tasks=[task("a")], keep_runs=2))
    assert list(world.state.runs_by_dag["d"]) == ids[3:], "older runs are pruned as newer ones finish"
    world.trigger("live", at=T0 + 10)
    world.tick(T0 + 10, nodes("n1"))           # the newest two are now ids[4] and "live"
    assert list(world.state.runs_by_dag["d"]) == [ids[4], "live"]
    assert not of_type(plan(world.state, T0 + 12, nodes("n1")), c.PruneRuns)


def test_an_unfinished_old_run_is_kept_and_holds_back_newer_ones():
    world = World()
    world.submit(dag_dict(tasks=[task("a")], keep_runs=1))
    world.trigger("old", at=T0)
    world.tick(T0, nodes("n1"))                # "old" runs and does not finish
    ids = _finished_runs(world, 2, dag_dict(tasks=[task("a")], keep_runs=1), start=T0 + 5)
    assert "old" in world.state.run_index and world.run("old").state is RunState.RUNNING
    assert not of_type(plan(world.state, T0 + 20, nodes("n1", slots=4)), c.PruneRuns)
    world.finish("old", "a", 0, at=T0 + 21)
    world.tick(T0 + 21, nodes("n1", slots=4))
    world.tick(T0 + 22, nodes("n1", slots=4))
    assert list(world.state.runs_by_dag["d"]) == [ids[1]]


def test_the_memo_skips_a_look_for_expired_runs_that_found_none_until_a_run_finishes_or_ages():
    """With 10,000 DAGs that look was a sixth of every plan: the memo keeps one that found
    nothing while no run was created, finished or forgotten and none aged past keep_days."""
    world, memo = World(), PlanMemo()
    world.submit(dag_dict(tasks=[task("a")], keep_runs=1, keep_days=1))
    world.trigger("r1", at=T0)
    world.trigger("r2", at=T0 + 1)
    _apply_plan(world, T0 + 2, memo)            # r1 starts (r2 waits: max_active_runs)
    assert not of_type(_apply_plan(world, T0 + 3, memo), c.PruneRuns) and memo.prune_changes is not None
    world.finish("r1", "a", 0, at=T0 + 4)
    assert not of_type(_apply_plan(world, T0 + 4, memo), c.PruneRuns)   # (proposes FinishRun: r1 archived)
    [prune] = of_type(_apply_plan(world, T0 + 5, memo), c.PruneRuns)    # r1 finished: one run too many
    assert list(prune.run_ids) == ["r1"]
    assert world.run("r2").state is RunState.RUNNING
    world.finish("r2", "a", 0, at=T0 + 6)
    _apply_plan(world, T0 + 6, memo)
    assert not of_type(_apply_plan(world, T0 + 7, memo), c.PruneRuns)   # r2 is the one run kept
    assert memo.prune_quiet_until == world.run("r2").ended_at + 86400
    assert not of_type(_apply_plan(world, memo.prune_quiet_until, memo), c.PruneRuns)
    [prune] = of_type(plan(world.state, memo.prune_quiet_until + 1, nodes("n1"), memo), c.PruneRuns)
    assert list(prune.run_ids) == ["r2"]                                  # a day old: by age


def test_retention_by_age_and_never_without_a_setting():
    world = World()
    ids = _finished_runs(world, 3, dag_dict(tasks=[task("a")], keep_days=1))
    assert not of_type(plan(world.state, T0 + 3600, nodes("n1")), c.PruneRuns)
    [prune] = of_type(plan(world.state, T0 + 86400 + 2, nodes("n1")), c.PruneRuns)
    assert list(prune.run_ids) == ids[:2]      # m2 ended at T0 + 2.5: not yet a day old
    keep_all = World()
    _finished_runs(keep_all, 3, dag_dict(tasks=[task("a")]))
    assert not of_type(plan(keep_all.state, T0 + 400 * 86400, nodes("n1")), c.PruneRuns)


def test_pruning_an_unfinished_run_is_refused_whole():
    world = World()
    ids = _finished_runs(world, 2, dag_dict(tasks=[task("a")]))
    world.trigger("live", at=T0 + 10)
    before = world.state.digest()
    result = world.state.apply(c.PruneRuns((ids[0], "live"), T0 + 11))
    assert result.code is Code.CONFLICT and "live" in result.reason
    assert world.state.digest() == before
    assert world.apply(c.PruneRuns((ids[0], "gone-already"), T0 + 12)).effects == (DropRunLogs((ids[0],)),)


def test_two_dags_with_the_same_schedule_both_run(world):
    """Run ids name their DAG: two DAGs ticking at the same instant do not collide."""
    world.submit(dag_dict("etl_a", schedule="@hourly", start_date=iso(T0)), at=T0)
    world.submit(dag_dict("etl_b", schedule="@hourly", start_date=iso(T0)), at=T0)
    world.tick(T0 + 3 * HOUR + 1, nodes("n1"))
    assert sorted(r.dag_id for r in world.state.iter_runs()) == ["etl_a", "etl_b"]
    assert not creations(plan(world.state, T0 + 3 * HOUR + 2, nodes("n1")))


def test_catchup_none_skips_a_missed_last_tick_before_end_date(world):
    """The grace is half the interval BEFORE the tick: the last tick before end_date has
    no next one (10-second ticks: a 5 s grace, so 20 s late is missed)."""
    world.submit(dag_dict("s10", [task("a")], schedule="* * * * * */10", catchup="none", start_date=iso(T0),
                          end_date=iso(T0 + 30), max_active_runs=100), at=T0)
    assert created(world.tick(T0 + 1)) == [iso(T0)]
    decisions = world.tick(T0 + 50)          # down from T0+1 until 20 s after end_date
    assert created(decisions) == [] and [x.through for x in of_type(decisions, c.SkipTicks)] == [T0 + 30]
    assert world.state.dags["s10"].next_tick_at is None
    assert world.tick(T0 + 100) == []


# ------------------------------------------------------------ pool usage
def test_pool_usage_counts_slots_of_active_tasks_and_queued_task_instances():
    from raftflow.core.pools import pool_usage

    w = World()
    w.apply(c.SetPool("p", 5, T0))
    w.submit(dag_dict("d", [task("a", pool="p", pool_slots=3), task("b", pool="p", pool_slots=2), task("c")]))
    w.trigger("r1", dag_id="d")
    w.tick(T0 + 1, nodes("n1", slots=1))   # one slot: a goes (priority ties: spec order), b and c queue
    usage = pool_usage(w.state)
    assert (usage.used, usage.queued) == ({"p": 3}, {"p": 1, "default_pool": 1})


def test_a_run_cancelled_for_its_timeout_frees_its_pool_slots_in_the_same_plan():
    w = World()
    w.apply(c.SetPool("p", 1, T0))
    w.submit(dag_dict("slow", [task("a", pool="p")], dagrun_timeout=60))
    w.submit(dag_dict("next", [task("a", pool="p")]))
    w.trigger("r_slow", dag_id="slow")
    w.tick(T0 + 1, nodes("n1", slots=4))
    w.start("r_slow", "a", at=T0 + 2)
    w.trigger("r_next", dag_id="next", at=T0 + 3)
    cmds = w.tick(T0 + 4, nodes("n1", slots=4))
    assert [x.reason for x in of_type(cmds, c.NoteWaiting)] == \
        ["waiting: pool 'p' is full (1 of 1 slots in use; this task needs 1)"]
    cmds = w.tick(T0 + 62, nodes("n1", slots=4))
    assert [x.run_id for x in of_type(cmds, c.CancelRun)] == ["r_slow"]
    assert [(x.run_id, x.task_id) for x in of_type(cmds, c.AssignTask)] == [("r_next", "a")]


# ------------------------------------------------------- quiet (leader loop's sleep)
def test_with_no_run_active_a_plan_says_when_it_next_has_something_to_do(world):
    """PlanMemo.quiet_until: the leader loop sleeps on it when nothing is active."""
    memo = PlanMemo()
    plan(world.state, T0, [], memo)
    assert memo.quiet_until == math.inf, "nothing submitted: only a change can give work"

    world.submit(every_5("latest", T0 - HOUR), at=T0 - HOUR)       # ticks every 5 minutes
    world.submit(dag_dict("manual_only", [task("a")]))               # no schedule: no tick
    world.submit(dag_dict("hourly", [task("a")], schedule="@hourly", start_date=iso(T0 - HOUR)))
    world.tick(T0 + 1)                          # the due ticks become runs
    for run_id in list(world.state.active):
        world.apply(c.CancelRun(run_id, "not this test's concern", T0 + 1))
    world.tick(T0 + 1)
    assert not world.state.active
    plan(world.state, T0 + 2, [], memo)
    assert memo.quiet_until == T0 + 5 * MINUTE == world.state.dags["s5"].next_tick_at

    world.set_paused("s5", True)
    plan(world.state, T0 + 2, [], memo)
    assert memo.quiet_until == T0 + HOUR, "a paused DAG's ticks wake nobody"

    world.trigger("m1", "manual_only", at=T0 + 3)
    plan(world.state, T0 + 3, [], memo)
    assert memo.quiet_until is None, "an active run: its retries, timeouts and leases fall due with time"


def test_a_plan_turns_at_most_max_due_dags_into_runs_and_the_next_plan_the_rest(world, monkeypatch):
    """Issue 16: 10,000 DAGs due at one tick made one plan hold the replica lock for seconds."""
    from raftflow.core import planner

    monkeypatch.setattr(planner, "MAX_DUE_DAGS_PER_PLAN", 4)
    for i in range(10):
        world.submit(dag_dict(f"d{i}", [task("t")], schedule="*/5 * * * *", start_date=iso(T0)))
    first = world.tick(T0 + 1)
    assert len(created(first)) == 4
    second = world.tick(T0 + 2)
    assert len(created(second)) == 4 and set(created(second)) == set(created(first))   # (one tick, as logical date)
    assert len(created(world.tick(T0 + 3))) == 2
    assert not created(world.tick(T0 + 4))
    assert len(world.state.active) == 10


def _apply_plan(world: World, now: float, memo: PlanMemo) -> list[c.Command]:
    cmds = plan(world.state, now, nodes("n1"), memo)
    if cmds:
        world.apply(c.Batch(tuple(cmds)))
    return cmds


def test_while_many_dags_are_due_plans_only_create_runs_for_a_bounded_time(world, monkeypatch):
    """Issue 16: a plan that found CREATION_ALONE_FROM DAGs due asks only for their runs
    (a large tick's runs commit before the plan of everything else is made), for at most
    CREATION_FIRST_FOR in a row: then one whole plan."""
    from raftflow.core import planner

    monkeypatch.setattr(planner, "MAX_DUE_DAGS_PER_PLAN", 2)
    monkeypatch.setattr(planner, "CREATION_ALONE_FROM", 2)
    world.submit(dag_dict("manual", [task("t")]))
    world.trigger("m1", "manual", at=T0)
    for i in range(8):
        world.submit(dag_dict(f"d{i}", [task("t")], schedule="*/5 * * * *", start_date=iso(T0)))
    memo = PlanMemo()
    first = _apply_plan(world, T0 + 1, memo)
    assert len(created(first)) == 2 and all(isinstance(cmd, c.CreateScheduledRuns) for cmd in first), first
    assert memo.creating_since == T0 + 1
    second = _apply_plan(world, T0 + 1.5, memo)
    assert len(created(second)) == 2 and all(isinstance(cmd, c.CreateScheduledRuns) for cmd in second), second
    # CREATION_FIRST_FOR of plans that only created runs: the next one is whole (m1 starts), then creation resumes
    whole = _apply_plan(world, T0 + 1 + planner.CREATION_FIRST_FOR, memo)
    assert len(created(whole)) == 2 and c.StartRun("m1", T0 + 1 + planner.CREATION_FIRST_FOR) in whole, whole
    assert world.run("m1").state is RunState.RUNNING
    fourth = _apply_plan(world, T0 + 1.1 + planner.CREATION_FIRST_FOR, memo)
    assert all(isinstance(cmd, c.CreateScheduledRuns) for cmd in fourth) and len(created(fourth)) == 2
    # fewer due than a plan takes: whole plans again, and the memo says so
    last = _apply_plan(world, T0 + 1.2 + planner.CREATION_FIRST_FOR, memo)
    assert created(last) == [] and any(isinstance(cmd, c.StartRun) for cmd in last), last
    assert memo.creating_since is None
    assert len([r for r in world.state.active if r != "m1"]) == 8


def test_the_memo_spares_a_plan_the_look_at_every_dag_until_one_changes_or_is_due(world, monkeypatch):
    """With 10,000 DAGs that look was a fifth of every plan under a backlog; the memo
    keeps their earliest next tick while no DAG record changes (State.dag_changes)."""
    from raftflow.core import planner

    for i in range(5):
        world.submit(dag_dict(f"d{i}", [task("t")], schedule="*/5 * * * *", start_date=iso(T0)))
    looked = []
    real = planner._due_ticks
    monkeypatch.setattr(planner, "_due_ticks", lambda record, *a: looked.append(record.dag_id) or real(record, *a))
    memo = PlanMemo()
    assert len(created(_apply_plan(world, T0 + 1, memo))) == 5       # the tick at T0
    looked.clear()
    _apply_plan(world, T0 + 2, memo)   # (the runs created changed the DAGs' cursors: one more look)
    assert len(looked) == 5
    looked.clear()
    for at in (T0 + 3, T0 + 60, T0 + 299):
        _apply_plan(world, at, memo)
    assert looked == [] and memo.quiet_until is None
    world.set_paused("d3", True, at=T0 + 299)     # a change: looked at again
    _apply_plan(world, T0 + 299.5, memo)
    assert len(looked) == 5
    looked.clear()
    assert len(created(_apply_plan(world, T0 + 300, memo))) == 4     # the next tick comes: looked at, d3 paused
    assert len(looked) == 5


def test_cron_steps_from_the_cache_are_croniters() -> None:
    """The cron steps are memoised (DAGs sharing a schedule share them): the second
    answer, from the cache, is croniter's as the first."""
    from datetime import datetime, timezone

    from croniter import croniter

    from raftflow.core import schedule
    from raftflow.core.spec import DagSpec

    spec = DagSpec.from_dict(dag_dict("s", [task("t")], schedule="*/5 * * * *", start_date=iso(T0)))
    schedule.tick_after.cache_clear()
    schedule._prev_before.cache_clear()
    for t in (T0 + 1, T0 + 299.5, T0 + 7 * 86400 + 1):
        start = datetime.fromtimestamp(t, timezone.utc)
        direct_next, direct_prev = (croniter("*/5 * * * *", start).get_next(float),
                                    croniter("*/5 * * * *", start).get_prev(float))
        for _ in range(2):
            assert schedule.next_tick_after(spec, t) == direct_next
            assert schedule.previous_tick(spec, t) == direct_prev
    assert schedule.tick_after.cache_info().hits == 3 and schedule._prev_before.cache_info().hits == 3
