"""tools/bench curves: how the cost of scheduling grows with the size of the work.

Four curves; every figure names its size (--quick and --smoke shrink the sizes, see
SIZES; smoke figures only prove the scenario runs):

  fanout  1 -> N -> 1 BashTask `true` for N = 100, 1,000, 10,000 on the local
          cluster: wall time (trigger to the run's end) and tasks/s, which should
          stay flat. A DAG has at most MAX_TASKS_PER_DAG tasks, so a width over
          that runs as k runs of one DAG at once (1 -> N/k -> 1 each); the row says so.
  chain   chains of 10, 100, 1,000 `true` on the cluster: the median step (a task's
          start minus the end of the one before it) for each length.
  plan    the leader's `plan()` over a State holding N active task instances, in
          process (the pure planner, a State built through `State.apply`): the
          same shape as the fan-out mid-flight (k runs of 1 -> w -> 1, `start` done,
          3 x 4 slots running, the rest queued, `end` pending). Median of several
          plans: with no memo (every run re-planned), with a warm PlanMemo after one
          run changed (what the leader pays after a task moves), and with nothing
          changed.
  memory  tracemalloc of building that State: the bytes its N active task
          instances and their runs hold (the replicated state's share of a
          node's memory), per 1,000 task instances; and this process's RSS growth
          while it built one untraced (allocator overhead included, coarse).

The cluster curves poll a follower (never the leader being measured) with ListRuns,
and read each run's tasks once when it has ended. Beside each of their figures is
the leader's planning meanwhile, from its /metrics (plans, mean plan time including
the wait for the replica lock, and planning's share of the wall time): where the
time goes as the size grows. By name only (`tools/bench curves`):
the full sizes take minutes.
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
import statistics
import time
import tracemalloc
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from raftflow.core import commands as c
from raftflow.core.planner import NodeInfo, PlanMemo, plan
from raftflow.core.spec import MAX_TASKS_PER_DAG
from raftflow.core.state import State
from raftflow.core.states import RunState
from raftflow_cli.client import ClusterClient
from raftflow_cli.main import TERMINAL

from .bench_history import rss_mib
from .bench_scale import bash_spawn_rate

if TYPE_CHECKING:
    from .bench import Bench

NODES = 3                # the in-process state's nodes and slots: as the bench cluster's
SLOTS = 4
T0 = 1_767_225_600.0     # 2026-01-01T00:00:00Z: the in-process state's clock
PLAN_REPEATS = 15


@dataclass(frozen=True, slots=True)
class CurveSizes:
    fanout: tuple[int, ...]   # widths N of 1 -> N -> 1
    chain: tuple[int, ...]    # chain lengths
    state: tuple[int, ...]    # active task instances (plan time and memory)


SIZES: dict[str, CurveSizes] = {
    "full": CurveSizes(fanout=(100, 1_000, 10_000), chain=(10, 100, 1_000), state=(100, 1_000, 10_000)),
    "quick": CurveSizes(fanout=(100, 1_000), chain=(10, 100), state=(100, 1_000, 10_000)),
    "smoke": CurveSizes(fanout=(4, 8), chain=(3, 5), state=(10, 100)),
}


def sizes_for(quick: bool, smoke: bool) -> CurveSizes:
    return SIZES["smoke" if smoke else "quick" if quick else "full"]


# ------------------------------------------------------------------ report maths
def split(total: int, most: int) -> tuple[int, int]:
    """`total` as k equal parts of at most `most` each: (k, part), the fewest parts that
    divide `total` exactly (k * part == total), e.g. a width of 10,000 under a cap of
    1,998 is 8 runs of 1,250."""
    if total < 1 or most < 1:
        raise ValueError(f"cannot split {total} into parts of at most {most}")
    k = math.ceil(total / most)
    while total % k:
        k += 1
    return k, total // k


def repeats_for(size: int, budget: int, smoke: bool) -> int:
    """Runs of one size: up to 3 while size x runs stays within `budget` tasks (small
    sizes are cheap and noisy), 1 for large sizes and in a smoke run."""
    return 1 if smoke else max(1, min(3, budget // size))


def steps(spans: list[tuple[float, float]]) -> list[float]:
    """(start, end) of a chain's tasks, any order -> each start minus the previous end."""
    ordered = sorted(spans)
    return [start - prev_end for (_, prev_end), (start, _) in zip(ordered, ordered[1:])]


def ms(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"n": len(ordered), "median_ms": round(statistics.median(ordered) * 1000, 3),
            "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1000, 3),
            "max_ms": round(ordered[-1] * 1000, 3)}


def growth(figures: dict[int, float]) -> dict[str, float]:
    """Each size's figure over the smallest size's, keyed by size: 1.0 everywhere is a
    flat curve; for a per-item cost that grows with n, the ratio grows with n."""
    first = figures[min(figures)]
    return {str(size): round(value / first, 2) if first else math.nan for size, value in sorted(figures.items())}


def mib_per_thousand(nbytes: int, task_instances: int) -> float:
    return round(nbytes / task_instances * 1000 / 2**20, 3)


# ------------------------------------------------------------------ specs
def fanout_spec(dag_id: str, width: int, runs: int = 1) -> dict[str, Any]:
    tasks: list[dict[str, Any]] = [{"task_id": "start", "command": "true"}]
    tasks += [{"task_id": f"w{i:04d}", "command": "true", "upstream": ["start"]} for i in range(width)]
    tasks.append({"task_id": "end", "command": "true", "upstream": [f"w{i:04d}" for i in range(width)]})
    return {"dag_id": dag_id, "max_active_runs": max(16, runs), "max_active_tasks": 10_000, "tasks": tasks}


def chain_spec(dag_id: str, length: int) -> dict[str, Any]:
    return {"dag_id": dag_id, "tasks": [
        {"task_id": f"t{i:04d}", "command": "true", "upstream": [f"t{i - 1:04d}"] if i else []}
        for i in range(length)]}


# ------------------------------------------------------------------ in process: plan and memory
def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat()


def _apply(state: State, commands: list[c.Command]) -> None:
    results = state.apply(c.Batch(tuple(commands))).value
    refused = [r for r in results if not r.ok]
    if refused:
        raise RuntimeError(f"building the state failed: {refused[0].reason}")


@dataclass(slots=True)
class ActiveState:
    state: State
    run_ids: list[str]
    task_instances: int
    width: int             # of each run's fan-out
    running: int
    queued: int
    nbytes: int            # traced bytes the runs added (0 unless traced)


def active_state(task_instances: int, trace: bool = False) -> ActiveState:
    """A State holding `task_instances` active task instances: k runs of 1 -> w -> 1 (k the
    fewest runs under MAX_TASKS_PER_DAG), each with `start` succeeded, its workers
    queued and `end` pending; NODES x SLOTS workers of the first runs running. Built
    with real commands through `State.apply`. With `trace`, `nbytes` is what tracemalloc
    saw the runs add (after the DAG was submitted), garbage collected."""
    runs, per_run = split(task_instances, MAX_TASKS_PER_DAG)
    width = per_run - 2
    if width < 1:
        raise ValueError(f"{task_instances} task instances make no 1 -> w -> 1 fan-out")
    state = State()
    _apply(state, [c.SubmitDag(fanout_spec("fan", width, runs), "# tools/bench curves", "curves.py", T0)])
    if trace:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    run_ids = []
    try:
        for r in range(runs):
            at = T0 + r
            run_id = f"manual__fan__{_iso(at)}"
            run_ids.append(run_id)
            commands: list[c.Command] = [
                c.CreateRun(run_id, "fan", _iso(at), _iso(at), _iso(at), "manual", {}, at), c.StartRun(run_id, at),
                c.QueueTask(run_id, "start", at), c.AssignTask(run_id, "start", "n1", 1, at),
                c.TaskStarted(run_id, "start", 1, "n1", at),
                c.TaskFinished(run_id, "start", 1, "n1", 0, at, at + 0.01, "", "", at + 0.01)]
            commands += [c.QueueTask(run_id, f"w{i:04d}", at + 0.02) for i in range(width)]
            _apply(state, commands)
        running = min(NODES * SLOTS, runs * width)
        commands = []
        for j in range(running):
            run_id, task_id, node = run_ids[j // width], f"w{j % width:04d}", f"n{j % NODES + 1}"
            commands += [c.AssignTask(run_id, task_id, node, 1, T0 + 10), c.TaskStarted(run_id, task_id, 1, node,
                                                                                          T0 + 10)]
        _apply(state, commands)
        nbytes = 0
        if trace:
            gc.collect()
            nbytes = tracemalloc.get_traced_memory()[0] - before
    finally:
        if trace:
            tracemalloc.stop()
    return ActiveState(state, run_ids, runs * per_run, width, running, runs * width - running, nbytes)


def nodes_view() -> list[NodeInfo]:
    return [NodeInfo(f"n{i}", True, SLOTS, leader=i == 1) for i in range(1, NODES + 1)]


def plan_times(active: ActiveState, repeats: int = PLAN_REPEATS) -> dict[str, Any]:
    """Median plan() times over `active` (its state is not changed by planning: plan
    only proposes). Every slot is taken, so the plans assign nothing and walk the
    whole ready list, as a leader does while a backlog waits."""
    state, nodes, now = active.state, nodes_view(), T0 + 20
    cold = []
    for _ in range(repeats):
        started = time.perf_counter()
        plan(state, now, nodes)
        cold.append(time.perf_counter() - started)
    memo = PlanMemo()
    plan(state, now, nodes, memo)
    warm, one_changed = [], []
    for i in range(repeats):
        started = time.perf_counter()
        plan(state, now, nodes, memo)
        warm.append(time.perf_counter() - started)
        # A change in the first run (a no-move note on its pending `end`), as a task's
        # start or end is: the memo re-plans that run and keeps the others.
        _apply(state, [c.NoteWaiting(active.run_ids[0], "end", f"note {i}", now)])
        started = time.perf_counter()
        plan(state, now, nodes, memo)
        one_changed.append(time.perf_counter() - started)
    no_memo = statistics.median(cold)
    return {"no_memo": ms(cold), "memo_one_run_changed": ms(one_changed), "memo_nothing_changed": ms(warm),
            "no_memo_us_per_task_instance": round(no_memo / active.task_instances * 1e6, 2),
            "memo_kept_runs": len(memo.runs)}


def rss_growth(sizes: tuple[int, ...]) -> dict[int, float]:
    """size -> MiB this process's RSS grew while it built a State of that size, untraced.
    Every State is kept until the last is measured, so none is built in memory another
    freed: each figure is fresh heap, with the allocator's overhead that tracemalloc does
    not see. Coarse (pages, arenas): meaningful from a few thousand task instances."""
    kept, grown = [], {}
    for size in sizes:
        gc.collect()
        before = rss_mib(os.getpid())
        kept.append(active_state(size))
        gc.collect()
        grown[size] = rss_mib(os.getpid()) - before
    del kept
    gc.collect()
    return grown


def state_curves(sizes: tuple[int, ...], repeats: int = PLAN_REPEATS) -> tuple[list[dict[str, Any]],
                                                                             list[dict[str, Any]]]:
    """(plan rows, memory rows), one of each per size of active task instances."""
    plans, memory = [], []
    rss = rss_growth(sizes)
    for size in sizes:
        active = active_state(size, trace=True)
        shape = {"active_task_instances": active.task_instances, "runs": len(active.run_ids),
                 "fanout_width_per_run": active.width}
        memory.append({**shape, "traced_mib": round(active.nbytes / 2**20, 3),
                       "mib_per_1000_task_instances": mib_per_thousand(active.nbytes, active.task_instances),
                       "rss_growth_mib": round(rss[size], 2),
                       "rss_mib_per_1000_task_instances": round(rss[size] / active.task_instances * 1000, 3)})
        plans.append({**shape, "running": active.running, "queued": active.queued,
                      **plan_times(active, repeats)})
        del active
        gc.collect()
    return plans, memory


# ------------------------------------------------------------------ on the cluster
def _submit(bench: Bench, spec: dict[str, Any]) -> None:
    bench.client.submit([{"spec_json": json.dumps(spec), "source": "# tools/bench curves",
                          "filename": "tools/bench"}])


def _epoch(iso: str | None) -> float:
    return datetime.fromisoformat(iso).timestamp() if iso else math.nan


def _wait_runs(reader: ClusterClient, dag_id: str, run_ids: list[str], timeout: float) -> dict[str, float]:
    """run_id -> its end (epoch seconds), once every run in `run_ids` succeeded. Polls
    ListRuns (a summary per run, not its tasks) every 0.1 s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = {r["run_id"]: r for r in reader.list_runs(dag_id, limit=len(run_ids) + 8)["runs"]}
        mine = [runs.get(run_id) for run_id in run_ids]
        if all(r is not None and r["state"] in TERMINAL for r in mine):
            failed = [r["run_id"] for r in mine if r is not None and r["state"] != RunState.SUCCESS.value]
            if failed:
                raise RuntimeError(f"runs {failed} did not succeed")
            return {r["run_id"]: _epoch(r["ended_at"]) for r in mine if r is not None}
        time.sleep(0.1)
    raise RuntimeError(f"runs of {dag_id} did not end within {timeout:.0f}s")


PLAN_METRIC = "raftflow_scheduler_plan_duration_seconds"


def plan_counters(metrics_text: str) -> tuple[int, float]:
    """(plans, seconds) from a /metrics scrape: the leader's count and sum of plan durations
    (each is the wait for the replica lock plus plan())."""
    found = {}
    for suffix in ("count", "sum"):
        match = re.search(rf"^{PLAN_METRIC}_{suffix} (\S+)$", metrics_text, re.MULTILINE)
        found[suffix] = float(match.group(1)) if match else 0.0
    return int(found["count"]), found["sum"]


def plans_between(before: tuple[int, float], after: tuple[int, float], wall: float) -> dict[str, float]:
    """What the leader's planning cost between two scrapes over `wall` seconds."""
    plans, seconds = after[0] - before[0], after[1] - before[1]
    return {"plans": plans, "mean_plan_ms": round(seconds / plans * 1000, 3) if plans else 0.0,
            "planning_share_of_wall": round(seconds / wall, 3) if wall > 0 else 0.0}


def _leader_plans(bench: Bench, leader: str) -> tuple[int, float]:
    return plan_counters(bench.metrics_text(leader))


def _follower_reader(bench: Bench) -> ClusterClient:
    leader = bench.leader()
    follower = next((n.node_id for n in bench.cluster.nodes if n.node_id != leader), leader)
    return bench.node_client(follower)


def fanout_curve(bench: Bench, reader: ClusterClient, widths: tuple[int, ...]) -> list[dict[str, Any]]:
    rows = []
    for width in widths:
        runs, per_run = split(width, MAX_TASKS_PER_DAG - 2)
        dag_id = f"curve_fanout_{width}"
        _submit(bench, fanout_spec(dag_id, per_run, runs))
        tasks = runs * (per_run + 2)
        walls = []
        leader = bench.leader()
        before = _leader_plans(bench, leader)
        for _ in range(repeats_for(width, 1_000, bench.smoke)):
            triggered = time.time()
            run_ids = [bench.client.trigger(dag_id)["run_id"] for _ in range(runs)]
            ended = _wait_runs(reader, dag_id, run_ids, 120 + tasks * 0.2)
            walls.append(max(ended.values()) - triggered)
        wall = statistics.median(walls)
        row: dict[str, Any] = {"width": width, "runs": runs, "width_per_run": per_run, "tasks": tasks,
                               "samples": len(walls), "wall_s": round(wall, 3), "tasks_per_s": round(tasks / wall, 1),
                               "leader": plans_between(before, _leader_plans(bench, leader), sum(walls))}
        if runs > 1:
            row["note"] = (f"{runs} runs of 1 -> {per_run} -> 1 at once: a DAG has at most "
                           f"{MAX_TASKS_PER_DAG} tasks")
        rows.append(row)
    return rows


def chain_curve(bench: Bench, reader: ClusterClient, lengths: tuple[int, ...]) -> list[dict[str, Any]]:
    rows = []
    for length in lengths:
        dag_id = f"curve_chain_{length}"
        _submit(bench, chain_spec(dag_id, length))
        gaps: list[float] = []
        runs = repeats_for(length, 100, bench.smoke)
        leader = bench.leader()
        before, started = _leader_plans(bench, leader), time.monotonic()
        for _ in range(runs):
            run_id = bench.client.trigger(dag_id)["run_id"]
            _wait_runs(reader, dag_id, [run_id], 120 + length * 0.5)
            tasks = reader.get_run(run_id)["tasks"]
            gaps += steps([(_epoch(t["started_at"]), _epoch(t["ended_at"])) for t in tasks])
        leader_plans = plans_between(before, _leader_plans(bench, leader), time.monotonic() - started)
        rows.append({"length": length, "runs": runs, "step": ms(gaps), "leader": leader_plans})
    return rows


def scenario_curves(bench: Bench) -> dict[str, Any]:
    sizes = sizes_for(bench.quick, bench.smoke)
    plans, memory = state_curves(sizes.state, 5 if bench.smoke else PLAN_REPEATS)
    spawn_rate = bash_spawn_rate(0.5 if bench.smoke else 3.0)
    reader = _follower_reader(bench)
    try:
        fanout = fanout_curve(bench, reader, sizes.fanout)
        chain = chain_curve(bench, reader, sizes.chain)
    finally:
        reader.close()
    return {
        "scenario": "curves",
        "sizes": {"fanout_widths": list(sizes.fanout), "chain_lengths": list(sizes.chain),
                  "active_task_instances": list(sizes.state)},
        "fanout": fanout,
        "fanout_tasks_per_s_vs_smallest": growth({r["width"]: r["tasks_per_s"] for r in fanout}),
        # what this machine allows now (shared machines vary): the fan-out's ceiling
        "bash_true_spawns_per_s": round(spawn_rate, 1),
        "chain": chain,
        "chain_step_vs_shortest": growth({r["length"]: r["step"]["median_ms"] for r in chain}),
        "plan": plans,
        "plan_no_memo_per_task_instance_vs_smallest": growth(
            {r["active_task_instances"]: r["no_memo_us_per_task_instance"] for r in plans}),
        "memory": memory,
        "note": f"cluster: {len(bench.cluster.nodes)} nodes x {bench.cluster.slots} slots; plan and memory in "
                f"process ({NODES} nodes x {SLOTS} slots, every slot taken); flat: every ratio near 1.0",
    }
