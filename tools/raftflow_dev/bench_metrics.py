"""tools/bench metrics: what a Prometheus scrape of GET /metrics costs a node with many
active task instances (16 running runs of a 2,000-task DAG; --quick: 4) and 10,000
finished runs in the archive beside them (which a scrape must never read). The scrape
takes the replica lock once per active run, so apply waits at most one run's count.

The state is built through real commands on the in-process memory replica the unit
tests use; the node's metrics (node/metrics.py `NodeMetrics`, the same code a node
serves) render the text a scrape gets. Each scrape is timed REPEAT times after WARMUP;
the report gives median, p90 and max in milliseconds, the bytes of a scrape, and the
same for a state with no active runs (the floor).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from raftflow.core import commands as c
from raftflow.metrics import NodeMetrics, RaftNumbers, Sources
from raftflow.raft.memory import MemoryCluster, MemoryReplica

T0 = 1_767_225_600.0     # 2026-01-01T00:00:00Z
TASKS = 2_000
BATCH = 500
WARMUP = 3
REPEAT = 30


def _iso(at: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(at, timezone.utc).isoformat()


def _propose_all(replica: MemoryReplica, commands: list[c.Command]) -> None:
    for start in range(0, len(commands), BATCH):
        result = replica.propose(c.Batch(tuple(commands[start:start + BATCH])))
        assert result.ok, result.reason
        refused = [r for r in result.value if not r.ok]
        assert not refused, refused[0].reason


def _state(active_runs: int, finished_runs: int) -> MemoryReplica:
    cluster = MemoryCluster()
    replica = cluster.replica("n1")
    cluster.elect("n1")
    wide = {"dag_id": "wide", "schedule": None, "max_active_runs": 10_000, "max_queued_runs": 100_000,
            "tasks": [{"task_id": f"t{i}", "kind": "bash", "command": "true"} for i in range(TASKS)]}
    small = {"dag_id": "small", "schedule": None, "max_active_runs": 10_000, "max_queued_runs": 100_000,
             "tasks": [{"task_id": "a", "kind": "bash", "command": "true"}]}
    _propose_all(replica, [c.SubmitDag(spec, "# bench\n", f"{spec['dag_id']}.py", T0) for spec in (wide, small)])
    commands: list[c.Command] = []
    for i in range(finished_runs):
        at = T0 + i
        run_id = f"done_{i}"
        commands += [c.CreateRun(run_id, "small", _iso(at), _iso(at), _iso(at), "manual", {}, at),
                     c.StartRun(run_id, at), c.MarkTask(run_id, "a", "success", "bench", at),
                     c.FinishRun(run_id, "success", at)]
    for i in range(active_runs):
        at = T0 + 100_000 + i
        run_id = f"wide_{i}"
        commands += [c.CreateRun(run_id, "wide", _iso(at), _iso(at), _iso(at), "manual", {}, at),
                     c.StartRun(run_id, at)]
    _propose_all(replica, commands)
    return replica


def _measure(replica: MemoryReplica) -> dict[str, Any]:
    def raft() -> RaftNumbers:
        s = replica.status()
        return RaftNumbers(s.term, s.commit_index, s.last_applied, 0)

    metrics = NodeMetrics("n1", replica, Sources(raft=raft, own_slots=4))
    for _ in range(WARMUP):
        metrics.render()
    times = []
    size = 0
    for _ in range(REPEAT):
        started = time.perf_counter()
        size = len(metrics.render())
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"median_ms": round(statistics.median(times), 2), "p90_ms": round(times[int(len(times) * 0.9)], 2),
            "max_ms": round(times[-1], 2), "bytes": size,
            "active_task_instances": sum(len(r.tasks) for r in replica.state.active.values())}


def scenario_metrics(quick: bool, _nodes: int) -> dict[str, Any]:
    active = 4 if quick else 16
    finished = 1_000 if quick else 10_000
    return {"scenario": "metrics",
            "empty": _measure(_state(0, 0)),
            f"{active}_runs_x_{TASKS}_tasks_and_{finished}_finished": _measure(_state(active, finished))}
