"""tools/bench curves (raftflow_dev/bench_curves.py): its size tables, its report maths,
and the in-process plan-time and memory measurements at tiny sizes. The figures are
not asserted beyond their sanity: speed is measured by the benchmark, not by tests."""

from __future__ import annotations

import math

import pytest

from raftflow.core.planner import PlanMemo, plan
from raftflow.core.spec import MAX_TASKS_PER_DAG, DagSpec
from raftflow.core.states import TaskState
from raftflow_dev.bench_curves import (
    SIZES,
    T0,
    active_state,
    chain_spec,
    fanout_spec,
    growth,
    mib_per_thousand,
    ms,
    nodes_view,
    plan_counters,
    plan_times,
    plans_between,
    repeats_for,
    rss_growth,
    sizes_for,
    split,
    state_curves,
    steps,
)


def test_the_full_sizes_are_the_issues():
    full = sizes_for(quick=False, smoke=False)
    assert full.fanout == (100, 1_000, 10_000)
    assert full.chain == (10, 100, 1_000)
    assert full.state == (100, 1_000, 10_000)


def test_quick_and_smoke_shrink_every_curve_and_smoke_is_the_smallest():
    full, quick, smoke = SIZES["full"], SIZES["quick"], SIZES["smoke"]
    assert sizes_for(quick=True, smoke=False) is quick
    assert sizes_for(quick=False, smoke=True) is smoke and sizes_for(quick=True, smoke=True) is smoke
    for curve in ("fanout", "chain", "state"):
        f, q, s = getattr(full, curve), getattr(quick, curve), getattr(smoke, curve)
        assert list(f) == sorted(f) and list(q) == sorted(q) and list(s) == sorted(s)
        assert max(q) <= max(f) and max(s) <= min(q), curve
        assert len(s) >= 2, "a curve needs two points even in a smoke run"
    assert max(quick.fanout) < max(full.fanout) and max(quick.chain) < max(full.chain)


def test_split_gives_equal_parts_under_the_cap():
    assert split(100, MAX_TASKS_PER_DAG - 2) == (1, 100)
    assert split(1_998, 1_998) == (1, 1_998)
    assert split(10_000, MAX_TASKS_PER_DAG - 2) == (8, 1_250)     # 5 x 2,000 would exceed the cap
    assert split(10_000, MAX_TASKS_PER_DAG) == (5, 2_000)
    for total, most in ((7, 3), (9_999, 1_998), (13, 2), (1, 1)):
        k, part = split(total, most)
        assert k * part == total and part <= most, (total, most)
    with pytest.raises(ValueError):
        split(0, 10)


def test_fanout_and_chain_specs_are_valid_dags_within_the_cap():
    k, width = split(10_000, MAX_TASKS_PER_DAG - 2)
    spec = DagSpec.from_dict(fanout_spec("f", width, k))
    assert len(spec.tasks) == width + 2 <= MAX_TASKS_PER_DAG and spec.max_active_runs >= k
    assert spec.task("end").upstream == tuple(f"w{i:04d}" for i in range(width))
    chain = DagSpec.from_dict(chain_spec("c", 1_000))
    assert [t.upstream for t in chain.tasks[:3]] == [(), ("t0000",), ("t0001",)]


def test_repeats_are_few_for_large_sizes_and_one_in_a_smoke_run():
    assert repeats_for(10, 100, smoke=False) == 3
    assert repeats_for(100, 100, smoke=False) == 1
    assert repeats_for(1_000, 100, smoke=False) == 1
    assert repeats_for(3, 100, smoke=True) == 1


def test_steps_are_each_start_minus_the_previous_end_in_start_order():
    assert steps([(3.0, 4.0), (0.0, 1.0), (1.5, 2.5)]) == [0.5, 0.5]
    assert steps([(0.0, 1.0)]) == []


def test_ms_growth_and_per_thousand():
    figure = ms([0.003, 0.001, 0.002])
    assert figure == {"n": 3, "median_ms": 2.0, "p90_ms": 3.0, "max_ms": 3.0}
    assert growth({1_000: 50.0, 100: 25.0, 10_000: 12.5}) == {"100": 1.0, "1000": 2.0, "10000": 0.5}
    assert math.isnan(growth({1: 0.0, 2: 1.0})["2"])
    assert mib_per_thousand(2**20, 1_000) == 1.0
    assert mib_per_thousand(3 * 2**20, 2_000) == 1.5


def test_active_state_holds_the_fanout_mid_flight():
    active = active_state(30)
    state = active.state
    assert active.task_instances == 30 and active.width == 28 and len(active.run_ids) == 1
    run = state.active[active.run_ids[0]]
    states = [ti.state for ti in run.tasks.values()]
    assert run.tasks["start"].state is TaskState.SUCCESS and run.tasks["end"].state is TaskState.PENDING
    assert states.count(TaskState.RUNNING) == active.running == 12
    assert states.count(TaskState.QUEUED) == active.queued == 16
    assert sum(state.node_load.values()) == 12
    state.validate()


def test_active_state_over_the_cap_is_several_runs_and_the_plan_assigns_nothing():
    active = active_state(2 * MAX_TASKS_PER_DAG)
    assert len(active.run_ids) == 2 and active.task_instances == sum(len(r.tasks) for r in active.state.active.values())
    # every slot is taken: the plan walks the backlog and proposes nothing
    assert plan(active.state, T0 + 20, nodes_view(), PlanMemo()) == []


def test_traced_memory_counts_the_runs():
    small, large = active_state(10, trace=True), active_state(200, trace=True)
    assert 0 < small.nbytes < large.nbytes
    assert active_state(10).nbytes == 0     # not traced


def test_plan_times_and_state_curves_report_every_size():
    times = plan_times(active_state(20), repeats=3)
    for key in ("no_memo", "memo_one_run_changed", "memo_nothing_changed"):
        assert times[key]["n"] == 3 and 0 < times[key]["median_ms"] <= times[key]["max_ms"], key
    assert times["memo_kept_runs"] == 1 and times["no_memo_us_per_task_instance"] > 0
    plans, memory = state_curves((10, 20), repeats=2)
    assert [p["active_task_instances"] for p in plans] == [m["active_task_instances"] for m in memory] == [10, 20]
    assert all(m["mib_per_1000_task_instances"] > 0 for m in memory)


def test_plan_counters_come_from_the_leaders_metrics_text():
    text = ("# TYPE raftflow_scheduler_plan_duration_seconds histogram\n"
            'raftflow_scheduler_plan_duration_seconds_bucket{le="0.005"} 10.0\n'
            "raftflow_scheduler_plan_duration_seconds_count 12.0\n"
            "raftflow_scheduler_plan_duration_seconds_sum 0.06\n"
            "raftflow_scheduler_plan_duration_seconds_created 1.7e9\n")
    assert plan_counters(text) == (12, 0.06)
    assert plan_counters("") == (0, 0.0)     # a node that never led
    assert plans_between((12, 0.06), (22, 0.16), wall=2.0) == {
        "plans": 10, "mean_plan_ms": 10.0, "planning_share_of_wall": 0.05}
    assert plans_between((5, 1.0), (5, 1.0), wall=0.0)["mean_plan_ms"] == 0.0


def test_rss_growth_reports_every_size():
    grown = rss_growth((10, 50))
    assert set(grown) == {10, 50} and all(v >= 0 for v in grown.values())
