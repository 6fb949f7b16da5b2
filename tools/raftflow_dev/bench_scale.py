"""tools/bench scenarios that compare with Airflow's figures (issue #7's table).

    chain       a chain of BashTask `true`: next start minus previous end, trigger to
                first start, total (Airflow 3.3.2: 0.98 s per step, 2.2 s to start)
    fanout      1 -> N parallel BashTask `true` -> 1: wall time and tasks/s, also
                divided by the rate this machine starts `bash -c true` processes
    empty       N EmptyTask in one run: the scheduler alone, tasks/s
    cron_scale  D DAGs, each with one task, all due at the same tick: tick to every
                run created, tick to every run succeeded, the leader's CPU and RSS

Times come from the replicated state (a task's start is when its node took the
attempt, its end when the process exited), so they are the cluster's own clocks
on one machine. Sizes shrink with --quick; every figure names its size.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from raftflow.core.states import RunState
from raftflow_cli.main import TERMINAL

from .bench_history import rss_mib

if TYPE_CHECKING:
    from .bench import Bench


def _epoch(iso: str | None) -> float:
    return datetime.fromisoformat(iso).timestamp() if iso else float("nan")


def _submit(bench: "Bench", specs: list[dict[str, Any]], chunk: int = 250) -> None:
    for i in range(0, len(specs), chunk):
        bench.client.submit([{"spec_json": json.dumps(s), "source": "# tools/bench", "filename": "tools/bench"}
                             for s in specs[i:i + chunk]])


def _wait_run(bench: "Bench", run_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = bench.client.get_run(run_id)
        if run["state"] in TERMINAL:
            if run["state"] != RunState.SUCCESS.value:
                raise RuntimeError(f"run {run_id} failed: {[t['reason'] for t in run['tasks'] if t['reason']]}")
            return run
        time.sleep(0.05)
    raise RuntimeError(f"run {run_id} did not end within {timeout:.0f}s")


def _ms(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"n": len(ordered), "median_ms": round(statistics.median(ordered) * 1000, 1),
            "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1)}


def scenario_chain(bench: "Bench") -> dict[str, Any]:
    length = 20 if bench.quick else 50
    tasks = [{"task_id": f"t{i:03d}", "command": "true", "upstream": [f"t{i - 1:03d}"] if i else []}
             for i in range(length)]
    _submit(bench, [{"dag_id": "chain", "tasks": tasks}])
    gaps, to_first, totals = [], [], []
    for _ in range(1 if bench.quick else 3):
        triggered = time.time()
        run_id = bench.client.trigger("chain")["run_id"]
        run = _wait_run(bench, run_id, 300)
        spans = sorted((_epoch(t["started_at"]), _epoch(t["ended_at"])) for t in run["tasks"])
        gaps += [start - prev_end for (_, prev_end), (start, _) in zip(spans, spans[1:])]
        to_first.append(spans[0][0] - triggered)
        totals.append(spans[-1][1] - triggered)
    return {"scenario": "chain", "length": length, "task_to_task": _ms(gaps),
            "trigger_to_first_start": _ms(to_first), "trigger_to_last_end_s": round(statistics.median(totals), 2),
            "note": "targets: task-to-task median <= 25 ms, trigger to first start <= 100 ms "
                    "(Airflow 3.3.2: 980 ms, 2.2 s)"}


def bash_spawn_rate(seconds: float = 3.0) -> float:
    """`bash -c true` processes this machine starts per second, two at a time (2 cores)."""
    started, count = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        a = subprocess.Popen(["bash", "-c", "true"])
        b = subprocess.Popen(["bash", "-c", "true"])
        a.wait()
        b.wait()
        count += 2
    return count / (time.perf_counter() - started)


def scenario_fanout(bench: "Bench") -> dict[str, Any]:
    width = 100 if bench.quick else 500
    tasks: list[dict[str, Any]] = [{"task_id": "start", "command": "true"}]
    tasks += [{"task_id": f"w{i:03d}", "command": "true", "upstream": ["start"]} for i in range(width)]
    tasks.append({"task_id": "end", "command": "true", "upstream": [f"w{i:03d}" for i in range(width)]})
    _submit(bench, [{"dag_id": "fanout", "max_active_tasks": 10_000, "tasks": tasks}])
    spawn_rate = bash_spawn_rate()
    walls = []
    for _ in range(1 if bench.quick else 3):
        triggered = time.time()
        run = _wait_run(bench, bench.client.trigger("fanout")["run_id"], 600)
        walls.append(_epoch(run["ended_at"]) - triggered)
    wall = statistics.median(walls)
    rate = (width + 2) / wall
    return {"scenario": "fanout", "width": width, "wall_s": round(wall, 2), "tasks_per_s": round(rate, 1),
            "bash_true_spawns_per_s": round(spawn_rate, 1), "tasks_per_s_over_spawn_rate": round(rate / spawn_rate, 3),
            "note": "target >= 150 tasks/s (Airflow 3.3.2: 3.1 tasks/s); nodes: "
                    f"{len(bench.cluster.nodes)} x {bench.cluster.slots} slots"}


def scenario_empty(bench: "Bench") -> dict[str, Any]:
    size = 1000 if bench.quick else 2000   # (a DAG has at most MAX_TASKS_PER_DAG = 2,000 tasks)
    tasks = [{"task_id": f"e{i:04d}", "kind": "empty"} for i in range(size)]
    _submit(bench, [{"dag_id": "empties", "max_active_tasks": 10_000, "tasks": tasks}])
    walls = []
    for _ in range(1 if bench.quick else 3):
        triggered = time.time()
        run = _wait_run(bench, bench.client.trigger("empties")["run_id"], 300)
        walls.append(_epoch(run["ended_at"]) - triggered)   # the run's end: the plan that saw every task done
    wall = statistics.median(walls)
    return {"scenario": "empty", "tasks": size, "wall_s": round(wall, 3), "tasks_per_s": round(size / wall, 1),
            "note": "target >= 2000 tasks/s"}


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scenario_cron_scale(bench: "Bench") -> dict[str, Any]:
    """--quick: 500 DAGs on a 10-second schedule (6-field cron, seconds last); else 5000 on `* * * * *`;
    --smoke: 100 on a 5-second one."""
    count, cron, period = (100, "* * * * * */5", 5) if bench.smoke else (500, "* * * * * */10", 10) \
        if bench.quick else (5000, "* * * * *", 60)
    return cron_tick(bench, count, cron, period)


def cron_tick(bench: "Bench", count: int, cron: str, period: int, settle: float | None = None) -> dict[str, Any]:
    """`count` DAGs of one `true` task on schedule `cron` (every `period` seconds), all due
    at one tick: tick to every run created, to every run succeeded (within `settle`
    seconds of the tick, default 3 periods), the leader's CPU and RSS. The times come
    from the runs' own stamps; the polling (through a follower) only notices them."""
    specs = [{"dag_id": f"cron{i:04d}", "schedule": cron, "catchup": "none", "keep_runs": 3,
              "tasks": [{"task_id": "a", "command": "true"}]} for i in range(count)]
    _submit(bench, specs)
    now = time.time()
    tick = (int(now) // period + 1) * period
    if tick - now < min(5, period / 2):   # (the submit committed, the leader's plan to wake by then)
        tick += period
    leader = bench.leader()
    pid = bench.cluster.pid_of(leader)
    time.sleep(max(0.0, tick - time.time() - 1))
    cpu_before, rss = _cpu_seconds(pid), [rss_mib(pid)]
    follower = next(n.node_id for n in bench.cluster.nodes if n.node_id != leader)
    reader = bench.node_client(follower)     # keep the polling off the leader being measured
    created_at = succeeded_at = None
    settle = period * 3 if settle is None else settle
    deadline = tick + settle
    while time.time() < deadline and succeeded_at is None:
        runs = reader.list_runs(limit=count * 2)["runs"]
        of_tick = [r for r in runs if abs(_epoch(r["logical_date"]) - tick) < 0.5]
        if created_at is None and len(of_tick) >= count:
            created_at = max(_epoch(r["created_at"]) for r in of_tick)
        if created_at is not None and sum(r["state"] == RunState.SUCCESS.value for r in of_tick) >= count:
            succeeded_at = max(_epoch(r["ended_at"]) for r in of_tick)
        rss.append(rss_mib(pid))
        time.sleep(0.5 if count <= 1000 else 2.0)    # (a listing of 10,000 runs is work for the cluster too)
    reader.close()
    if succeeded_at is None:
        raise RuntimeError(f"not all {count} runs of the tick succeeded within {settle:.0f}s")
    assert created_at is not None   # every run of the tick succeeded, so each was created
    cpu = _cpu_seconds(pid) - cpu_before
    busy = time.time() - (tick - 1)
    return {"scenario": "cron_scale", "dags": count, "schedule": cron,
            "tick_to_all_runs_created_s": round(created_at - tick, 2),
            "tick_to_all_runs_succeeded_s": round(succeeded_at - tick, 2),
            "leader_cpu_share": round(cpu / busy, 2), "leader_rss_mib_max": round(max(rss), 1),
            "note": "target: every run created within 2 s of the tick"}
