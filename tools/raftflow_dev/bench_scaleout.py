"""tools/bench scale-out (issue 16 part 6): what worker nodes cost the voters.

For 3 voters and 0, 4 and 16 worker nodes (--quick: the same; --smoke: 0 and 2), each on a
fresh local cluster on this machine:

- commit: one write through the leader (SetPaused), median and p90 of N, back to back and
  paced (one every 20 ms), and the CPU each kind of node spent per commit; the target is
  within 1.2x of the figure with no workers (a commit waits for a majority of voters only;
  workers cost the leader an extra append per round, sent after the voters', not a round
  trip). Back to back, the workers' own share of every commit competes for the same two
  cores: that figure grows with the number of processes on the machine;
- idle: the leader's CPU while nothing runs (heartbeats of every node, log rounds to every
  worker), as a fraction of one core;
- fan-out: 1 -> N -> 1 `true` tasks: tasks/s, the share that ran on workers, and the leader's
  CPU per 1,000 tasks (how its work grows with nodes);
- cron: D DAGs with a schedule all due at one tick (every minute; --quick and --smoke every
  10 s), on 3 voters and 4 workers (--smoke: 2): tick to every run created, i.e. applied
  by a voter (target: within 2 s), and the rate the runs finish at.

Every node of a run shares this machine's 2 cores: a cluster of 19 processes measures the
leader's cost per node, not what 19 machines would do. Figures name their sizes.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import grpc

from raftflow.core.run_ids import scheduled_run_id
from raftflow_cli.client import ApiError

from .bench_idle import children_cpu_seconds, cpu_seconds, measure_windows
from .bench_scale import _epoch, _submit, _wait_run


@dataclass(frozen=True)
class Sizes:
    workers: tuple[int, ...]
    writes: int
    width: int
    dags: int
    cron: str
    period: int
    idle_windows: int
    idle_seconds: float
    cron_workers: int       # the workers of the cron phase's cluster
    cron_ticks: int         # the ticks the cron phase watches


# The cron phase runs on 3 voters + 4 workers: with 16, the 19 replicas (each applying
# every DAG of a 10,000-DAG submit) on this machine's 2 cores did not confirm a submit of
# 250 DAGs within 2 minutes in 2 of 3 tries (docs/benchmarks.md).
SIZES = {
    "full": Sizes((0, 4, 16), 300, 500, 10_000, "* * * * *", 60, 3, 5.0, 4, 3),
    "quick": Sizes((0, 4, 16), 100, 200, 2_000, "* * * * * */10", 10, 2, 2.0, 4, 3),
    "smoke": Sizes((0, 2), 20, 20, 50, "* * * * * */10", 10, 1, 1.0, 2, 2),
}


def sizes_for(quick: bool, smoke: bool) -> Sizes:
    return SIZES["smoke" if smoke else "quick" if quick else "full"]


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"n": len(ordered), "median_ms": round(statistics.median(ordered) * 1000, 2),
            "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1000, 2)}


# Paced commits: one write every PACE seconds (50/s), the rate a busy scheduler writes
# at, rather than back to back. Back to back, every node's share of every commit (each
# worker receives, decrypts and applies it too) saturates this machine's 2 cores, and
# the latency then measures how many processes share them, not the commit path.
PACE = 0.02


def _commits(client: Any, pids: dict[str, int], count: int, pace: float) -> tuple[list[float], dict[str, float]]:
    """`count` writes through the leader, each started `pace` seconds after the previous
    one started (0: back to back): their latencies, and the CPU seconds each node spent."""
    before = {node: cpu_seconds(pid) for node, pid in pids.items()}
    samples = []
    next_at = time.perf_counter()
    for i in range(count):
        time.sleep(max(0.0, next_at - time.perf_counter()))
        started = time.perf_counter()
        client.set_paused("probe", i % 2 == 0)
        samples.append(time.perf_counter() - started)
        next_at = started + pace
    return samples, {node: cpu_seconds(pid) - before[node] for node, pid in pids.items()}


def _per_commit(cpu: dict[str, float], leader: str, commits: int) -> dict[str, float]:
    """CPU milliseconds per commit: the leader's, the other voters' and the workers' (all)."""
    workers = sum(v for node, v in cpu.items() if node.startswith("w"))
    others = sum(v for node, v in cpu.items() if node != leader and not node.startswith("w"))
    return {"leader": round(1000 * cpu[leader] / commits, 2), "other_voters": round(1000 * others / commits, 2),
            "workers": round(1000 * workers / commits, 2)}


def measure(workers: int, sizes: Sizes) -> dict[str, Any]:
    """One cluster of 3 voters and `workers` workers: commit, idle leader, fan-out."""
    from .bench import Bench

    bench = Bench(3, quick=True, workers=workers)
    try:
        leader = bench.leader()
        pid = bench.cluster.pid_of(leader)
        _submit(bench, [{"dag_id": "probe", "tasks": [{"task_id": "a", "command": "true"}]}])
        client = bench.node_client(leader)
        pids = {n.node_id: bench.cluster.pid_of(n.node_id) for n in bench.cluster.nodes}
        try:
            client.list_dags()
            samples, commit_cpu = _commits(client, pids, sizes.writes, pace=0.0)
            paced, _ = _commits(client, pids, sizes.writes, pace=PACE)
        finally:
            client.close()
        idle = measure_windows({leader: pid}, sizes.idle_windows, sizes.idle_seconds)["per_node_core"][leader]

        tasks: list[dict[str, Any]] = [{"task_id": "start", "command": "true"}]
        tasks += [{"task_id": f"p{i:04d}", "command": "true", "upstream": ["start"]} for i in range(sizes.width)]
        tasks.append({"task_id": "end", "command": "true", "upstream": [f"p{i:04d}" for i in range(sizes.width)]})
        _submit(bench, [{"dag_id": "fanout", "max_active_tasks": 10_000, "tasks": tasks}])
        cpu_before, triggered = cpu_seconds(pid), time.time()
        run = _wait_run(bench, bench.client.trigger("fanout")["run_id"], 900)
        wall = _epoch(run["ended_at"]) - triggered
        cpu = cpu_seconds(pid) - cpu_before
        on_workers = sum(1 for t in run["tasks"] if t["node"].startswith("w"))
        return {"workers": workers, "nodes": 3 + workers, "commit_via_leader": _ms(samples),
                "commit_paced": {**_ms(paced), "per_s": round(1 / PACE)},
                "cpu_ms_per_commit": _per_commit(commit_cpu, leader, sizes.writes),
                "leader_idle_core": idle,
                "fanout": {"width": sizes.width, "wall_s": round(wall, 2),
                           "tasks_per_s": round(len(tasks) / wall, 1),
                           "share_on_workers": round(on_workers / len(tasks), 2),
                           "leader_cpu_ms_per_1000_tasks": round(1000 * cpu / len(tasks) * 1000, 1)}}
    finally:
        bench.close()


def cron_spread(workers: int, sizes: Sizes) -> dict[str, Any]:
    """`sizes.dags` scheduled DAGs due at every tick on 3 voters and `workers` workers,
    watched for `sizes.cron_ticks` ticks (cron_ticks)."""
    from .bench import Bench

    bench = Bench(3, quick=True, workers=workers)
    try:
        # (the voters alone take the writes and reads, with the patience a busy leader of
        # 3 + N processes on this machine's 2 cores needs for a 10,000-DAG submit)
        bench.client.close()
        bench.client = bench.cluster.client([n.grpc_address for n in bench.cluster.voters], timeout=60.0)
        bench.client.retry_for = 120.0
        out = cron_ticks(bench, sizes.dags, sizes.cron, sizes.period, sizes.cron_ticks)
        out["workers"] = workers
        return out
    finally:
        bench.close()


def cron_ticks(bench: Any, count: int, cron: str, period: int, ticks: int) -> dict[str, Any]:
    """`count` one-task DAGs on schedule `cron` (every `period` s), all due at every tick:
    for each of `ticks` ticks, the time from the tick until a voter other than the leader
    had all of its runs (committed, and in that voter's state: the last DAG's run polled
    every 50 ms, then a listing that must hold them all; a voter's counter of created runs
    would miss runs it received in a snapshot), and to its last run decided (the runs'
    own created_at stamps: when the leader's plan decided them); and the runs a voter saw
    finish from the first tick to one period after the last (its
    raftflow_runs_finished_total): the sustained rate the cluster runs them at. The
    leader's election count over the window shows whether it stayed in office."""
    specs = [{"dag_id": f"cron{i:05d}", "schedule": cron, "catchup": "none", "keep_runs": 3,
              "max_active_runs": ticks + 1, "tasks": [{"task_id": "a", "command": "true"}]} for i in range(count)]
    _submit(bench, specs)
    now = time.time()
    first = (int(now) // period + 1) * period
    if first - now < min(5, period / 2):   # (the submit committed, the leader's plan to wake by then)
        first += period
    voters = [n.node_id for n in bench.cluster.voters]
    reader_node = next(v for v in voters if v != bench.leader())
    reader = bench.node_client(reader_node)   # polling off the leader
    terms_before = _raft_term(reader.cluster_status())
    time.sleep(max(0.0, first - 1 - time.time()))
    finished_before = _runs_finished(bench, reader_node)
    leader_at_start = bench.leader()
    gc_before = {node: _gc_pauses(bench, node) for node in (leader_at_start, reader_node)}
    pids = {n.node_id: bench.cluster.pid_of(n.node_id) for n in bench.cluster.nodes}
    decided: list[float] = []   # when the leader's plan decided the tick's last run (its created_at)
    applied: list[float] = []   # when the reader voter had them all (polled every 50 ms)
    cpu_by_tick: list[dict[str, float]] = []
    try:
        for k in range(ticks):
            tick = first + k * period
            deadline = tick + period - 2
            time.sleep(max(0.0, tick - 0.2 - time.time()))
            leader = bench.leader()
            cpu_before = _cpu_by_process(pids)
            last_run = scheduled_run_id(str(specs[-1]["dag_id"]), _iso(tick))   # (the last submitted)
            seen = None     # when the voter first had the last DAG's run of the tick
            while True:
                if time.time() > deadline:
                    raise RuntimeError(f"tick {k + 1}: {reader_node} did not have all {count} runs within "
                                       f"{period - 2} s")
                if seen is None:
                    if not _has_run(reader, last_run):
                        time.sleep(0.05)
                        continue
                    seen = at = time.time()
                else:
                    at = time.time()
                runs = reader.list_runs(limit=count + 10, since=_iso(tick - 1))["runs"]
                of_tick = [r for r in runs if abs(_epoch(r["logical_date"]) - tick) < 0.5]
                if len(of_tick) >= count:
                    break
                time.sleep(1.0)
            # (at: `seen` if the first listing held them all, else when the one that did began)
            applied.append(round(at - tick, 2))
            cpu_by_tick.append(_cpu_by_kind(cpu_before, _cpu_by_process(pids), leader, bench))
            decided.append(round(max(_epoch(r["created_at"]) for r in of_tick) - tick, 2))
            print(f"scale-out cron: tick {k + 1} of {ticks}: {count} runs applied by a voter {applied[-1]} s "
                  f"after it (decided by the leader's plan {decided[-1]} s after it)", file=sys.stderr, flush=True)
        time.sleep(max(0.0, first + ticks * period - time.time()))
        finished_after = _runs_finished(bench, reader_node)
        gc_after = {node: _gc_pauses(bench, node) for node in gc_before}
        status = reader.cluster_status()
    finally:
        reader.close()
    window = ticks * period
    return {"dags": count, "schedule": cron, "ticks": ticks, "tick_to_all_runs_applied_s": applied,
            "tick_to_all_runs_decided_s": decided,
            "runs_finished_in_window": {state: n - finished_before.get(state, 0)
                                        for state, n in finished_after.items()},
            "window_s": window,
            "runs_per_s": round((sum(finished_after.values()) - sum(finished_before.values())) / window, 1),
            "runs_due_per_s": round(count / period, 1),
            "elections_in_window": _raft_term(status) - terms_before,
            "cpu_s_tick_to_applied": cpu_by_tick,
            "gc_pauses_in_window": {
                role: {gen: {"count": gc_after[node][gen][0] - gc_before[node][gen][0],
                             "seconds": round(gc_after[node][gen][1] - gc_before[node][gen][1], 3)}
                       for gen in gc_after[node]}
                for role, node in (("leader", leader_at_start), ("other_voter", reader_node))},
            "note": "target: every run created (applied by a voter) within 2 s of its tick"}


def _has_run(client: Any, run_id: str) -> bool:
    try:
        client.get_run(run_id)
        return True
    except ApiError as e:
        if e.code == grpc.StatusCode.NOT_FOUND:
            return False
        raise


def _runs_finished(bench: Any, node_id: str) -> dict[str, int]:
    """The runs a node has seen finish (applied FinishRuns) since it started, by final
    state: raftflow_runs_finished_total from its GET /metrics."""
    text = bench.metrics_text(node_id)
    found = re.findall(r'^raftflow_runs_finished_total\{state="(\w+)"\} (\S+)$', text, re.MULTILINE)
    return {state: int(float(value)) for state, value in found}


def _gc_pauses(bench: Any, node_id: str) -> dict[str, tuple[int, float]]:
    """A node's garbage-collection pauses so far, by generation: (count, seconds)."""
    text = bench.metrics_text(node_id)
    counts = dict(re.findall(r'^raftflow_gc_pause_seconds_count\{generation="(\d)"\} (\S+)$', text, re.MULTILINE))
    sums = dict(re.findall(r'^raftflow_gc_pause_seconds_sum\{generation="(\d)"\} (\S+)$', text, re.MULTILINE))
    return {gen: (int(float(counts[gen])), float(sums[gen])) for gen in counts}


def _cpu_by_process(pids: dict[str, int]) -> dict[str, tuple[float, float]]:
    """Each node's own CPU seconds and its waited-for children's (its task attempts)."""
    return {node: (cpu_seconds(pid), children_cpu_seconds(pid)) for node, pid in pids.items()}


def _cpu_by_kind(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]],
                 leader: str, bench: Any) -> dict[str, float]:
    """CPU seconds spent between two samples: the leader, the other voters, the workers
    (node processes), and every node's task attempts."""
    voters = {n.node_id for n in bench.cluster.voters}
    out = {"leader": 0.0, "other_voters": 0.0, "workers": 0.0, "task_attempts": 0.0}
    for node, (own, children) in after.items():
        kind = "leader" if node == leader else "other_voters" if node in voters else "workers"
        out[kind] += own - before[node][0]
        out["task_attempts"] += children - before[node][1]
    return {k: round(v, 2) for k, v in out.items()}


def _raft_term(status: dict[str, Any]) -> int:
    return max(int(n["raft_term"] or 0) for n in status["nodes"] if not n.get("worker"))


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat()


def scenario_scale_out(quick: bool, nodes: int, smoke: bool = False) -> dict[str, Any]:
    """`nodes` is the bench's --nodes: scale-out always has 3 voters (the figure it compares).
    RAFTFLOW_BENCH_CRON_ONLY=1 runs the cron phase alone (it is the long one)."""
    sizes = sizes_for(quick, smoke)
    if os.environ.get("RAFTFLOW_BENCH_CRON_ONLY"):
        return {"scenario": "scale-out", "voters": 3, "cron": cron_spread(sizes.cron_workers, sizes)}
    rows = []
    for workers in sizes.workers:
        rows.append(measure(workers, sizes))
        print(f"scale-out: {json.dumps(rows[-1], sort_keys=True)}", file=sys.stderr, flush=True)   # (progress)
    base = rows[0]["commit_via_leader"]["median_ms"]
    paced_base = rows[0]["commit_paced"]["median_ms"]
    for row in rows:
        row["commit_vs_no_workers"] = round(row["commit_via_leader"]["median_ms"] / base, 2)
        row["paced_commit_vs_no_workers"] = round(row["commit_paced"]["median_ms"] / paced_base, 2)
    cron = cron_spread(sizes.cron_workers, sizes)
    return {"scenario": "scale-out", "voters": 3, "by_workers": rows, "cron": cron,
            "note": "targets: commit within 1.2x of no workers; every scheduled run created within 2 s of its tick"}
