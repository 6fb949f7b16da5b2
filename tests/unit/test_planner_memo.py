"""The planner's memo (planner.PlanMemo) changes what a plan costs, never what it says.

Hypothesis drives one replica through random histories (plans applied whole or in
part, attempts started, finished, failed and retried, nodes expiring and coming back,
clears, marks, cancels, new runs, pauses, time passing over a scheduled DAG's ticks)
and compares, at every step, the plan made with the memo to the plan made without it.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st

from core_support import T0, World, dag_dict, nodes, task
from raftflow.core import commands as c
from raftflow.core.planner import PlanMemo, plan
from raftflow.core.states import TaskState

NODES = ("n1", "n2", "n3")

ACTIONS = st.lists(st.tuples(
    st.sampled_from(["plan", "plan_part", "start", "finish", "fail", "wait", "wait_long", "expire", "revive",
                     "trigger", "clear", "mark", "cancel", "pause"]),
    st.integers(min_value=0, max_value=10_000)), min_size=10, max_size=80)


def _world() -> World:
    world = World()
    world.submit(dag_dict("chain", [task("a", retries=2, retry_delay=5.0), task("b", upstream=["a"]),
                                    task("c", upstream=["b"], trigger_rule="all_done")], max_active_runs=3,
                          keep_runs=2))
    world.submit(dag_dict("wide", [task(f"w{i}", retries=1, retry_delay=2.0) for i in range(6)]
                          + [task("z", upstream=[f"w{i}" for i in range(6)], trigger_rule="one_failed")]))
    # (its ticks fall due as time passes: the memo keeps the DAGs' earliest next tick)
    # (and retention by count and by age: the memo keeps a look for expired runs that found none)
    world.submit(dag_dict("ticking", [task("t")], schedule="* * * * *", catchup="none",
                          start_date="2024-01-10T12:00:00+00:00", keep_days=0.002))
    for i in range(3):
        world.trigger(f"c{i}", "chain", at=T0 + i)
        world.trigger(f"w{i}", "wide", at=T0 + i)
    return world


def _tasks_in(world: World, states: set[TaskState]) -> list[tuple[str, str]]:
    return [(run.run_id, ti.task_id) for run in world.state.active.values() for ti in run.tasks.values()
            if ti.state in states]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(ACTIONS)
def test_a_plan_with_the_memo_equals_a_plan_without_it(actions: list[tuple[str, int]]) -> None:
    world, memo = _world(), PlanMemo()
    now, expired, runs = T0 + 10, set(), 3
    for action, pick in actions:
        view = [n for n in nodes(*NODES)]
        view = [type(n)(n.node_id, n.node_id not in expired, n.slots, lease_expired=n.node_id in expired)
                for n in view]
        plain = plan(world.state, now, view)
        assert plan(world.state, now, view, memo) == plain
        if action in ("plan", "plan_part") and plain:
            chosen = plain if action == "plan" else plain[: 1 + pick % len(plain)]
            world.apply(c.Batch(tuple(chosen)), expect=None)
        elif action in ("start", "finish", "fail"):
            wanted = {TaskState.ASSIGNED} if action == "start" else {TaskState.ASSIGNED, TaskState.RUNNING}
            candidates = _tasks_in(world, wanted)
            if candidates:
                run_id, task_id = candidates[pick % len(candidates)]
                if action == "start":
                    world.start(run_id, task_id, at=now)
                else:
                    world.finish(run_id, task_id, exit_code=0 if action == "finish" else 1, at=now)
        elif action == "wait":
            now += pick % 7
        elif action == "wait_long":
            now += 30 + pick % 60
        elif action == "expire":
            expired.add(NODES[pick % 3])
        elif action == "revive":
            expired.discard(NODES[pick % 3])
        elif action == "trigger":
            dag_id = ("chain", "wide")[pick % 2]
            world.trigger(f"x{runs}", dag_id, at=now + runs)
            runs += 1
        elif action in ("clear", "mark", "cancel") and world.state.run_index:
            run_ids = list(world.state.run_index)
            run_id = run_ids[pick % len(run_ids)]
            run = world.state.run(run_id)
            task_id = list(run.tasks)[pick % len(run.tasks)]
            command: Any = {
                "clear": c.ClearTasks(run_id, (task_id,), bool(pick % 2), "", now),
                "mark": c.MarkTask(run_id, task_id, ("success", "failed")[pick % 2], "", now),
                "cancel": c.CancelRun(run_id, "", now),
            }[action]
            world.apply(command, expect=None)
        elif action == "pause":
            dag_id = ("chain", "wide", "ticking")[pick % 3]
            world.set_paused(dag_id, not world.state.dags[dag_id].paused, at=now)


def test_the_memo_starts_afresh_on_a_new_state() -> None:
    """A snapshot installed replaces the State object: what was learned of the old one
    (whose runs may have moved on in the entries the snapshot covers) is dropped."""
    world, memo = _world(), PlanMemo()
    view = nodes(*NODES)
    world.apply(c.Batch(tuple(plan(world.state, T0 + 10, view, memo))))
    plan(world.state, T0 + 11, view, memo)
    assert memo.runs and memo.state is world.state
    other = _world()
    assert plan(other.state, T0 + 10, view, memo) == plan(other.state, T0 + 10, view)
    assert memo.state is other.state and set(memo.runs) <= set(other.state.active)
